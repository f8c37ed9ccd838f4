#!/usr/bin/env bash
# The Batch API with nothing but curl and jq: upload, create, poll, download.
# Usage: batch_curl.sh GATEWAY_URL INPUT.jsonl OUTPUT.jsonl ERRORS.jsonl
set -euo pipefail
url=$1 input=$2 output=$3 errors=$4

file_id=$(curl -sf "$url/v1/files" -F purpose=batch -F "file=@$input" | jq -r .id)
batch_id=$(curl -sf "$url/v1/batches" -H 'Content-Type: application/json' \
  -d "{\"input_file_id\": \"$file_id\", \"endpoint\": \"/v1/completions\", \"completion_window\": \"24h\"}" \
  | jq -r .id)
for _ in $(seq 600); do
  batch=$(curl -sf "$url/v1/batches/$batch_id")
  status=$(jq -r .status <<<"$batch")
  case $status in completed|failed|cancelled|expired) break ;; esac
  sleep 0.5
done
echo "$batch" | jq -c '{status, request_counts}'
curl -sf "$url/v1/files/$(jq -r .output_file_id <<<"$batch")/content" -o "$output"
error_file=$(jq -r .error_file_id <<<"$batch")
if [ "$error_file" != null ]; then curl -sf "$url/v1/files/$error_file/content" -o "$errors"; fi
