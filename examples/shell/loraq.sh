#!/usr/bin/env bash
# A loraq client with nothing but redis-cli: submit a job, wait for it, print the record.
#
#   examples/shell/loraq.sh <adapter|""> "<prompt>" [max_new_tokens]
#
# Environment: LORAQ_REDIS_URL (default redis://127.0.0.1:6379/0), LORAQ_PREFIX (default
# loraq). Prints the job id, then `status <status>` and `result <JSON>` (or `error <JSON>`).
# Exit 0 when the job succeeded, 1 when it ended otherwise, 2 on a timeout.
set -euo pipefail

adapter=${1-}
prompt=${2:-hello world}
max_new_tokens=${3:-32}
url=${LORAQ_REDIS_URL:-redis://127.0.0.1:6379/0}
prefix=${LORAQ_PREFIX:-loraq}
timeout_s=${LORAQ_WAIT_S:-120}

rcli() { redis-cli -u "$url" --raw "$@"; }

# JSON string escaping for backslash, double quote and control characters.
json_string() {
  local s=$1 out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      '\') out+='\\' ;;
      '"') out+='\"' ;;
      $'\n') out+='\n' ;;
      $'\t') out+='\t' ;;
      $'\r') out+='\r' ;;
      *) out+=$c ;;
    esac
  done
  printf '"%s"' "$out"
}

if [[ -n $adapter ]]; then adapter_json=$(json_string "$adapter"); else adapter_json=null; fi
job="{\"adapter\":$adapter_json,\"prompt\":$(json_string "$prompt"),\"params\":{\"max_new_tokens\":$max_new_tokens}}"

# With no "id" in the job, the stream entry ID that XADD returns is the job id.
id=$(rcli XADD "$prefix:jobs" '*' job "$job")
echo "$id"

events="$prefix:job:$id:events"
deadline=$((SECONDS + timeout_s))
while :; do
  # Take the last event's ID before reading the status: a final event written after the
  # status check is then newer than it, and the XREAD below returns at once.
  last=$(rcli XREVRANGE "$events" + - COUNT 1 | head -n 1)
  status=$(rcli HGET "$prefix:job:$id" status)
  case $status in succeeded | failed | cancelled | expired) break ;; esac
  if ((SECONDS >= deadline)); then
    echo "timeout: job $id is ${status:-not started} after ${timeout_s}s" >&2
    exit 2
  fi
  rcli XREAD COUNT 100 BLOCK 1000 STREAMS "$events" "${last:-0-0}" >/dev/null
done

echo "status $status"
if [[ $status == succeeded ]]; then
  echo "result $(rcli HGET "$prefix:job:$id" result)"
  exit 0
fi
echo "error $(rcli HGET "$prefix:job:$id" error)"
exit 1
