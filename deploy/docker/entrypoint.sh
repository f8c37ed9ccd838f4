#!/bin/sh
# Container entrypoint: start a Ray head whose dashboard and metrics export listen on
# every interface (`loraq serve` would start one bound to localhost), then run
# `loraq serve` on it with the container's arguments. With RAY_ADDRESS set, join that
# cluster instead. On SIGTERM `loraq serve` lets in-flight jobs finish
# (LORAQ_GRACEFUL_SHUTDOWN_TIMEOUT_S) and removes the app.
set -eu
if [ -z "${RAY_ADDRESS:-}" ]; then
    port="${RAY_HEAD_PORT:-6379}"
    # RAY_START_ARGS: more `ray start` options, e.g. --num-cpus=4 (word-split on purpose).
    # shellcheck disable=SC2086
    ray start --head --disable-usage-stats --port="$port" \
        --dashboard-host=0.0.0.0 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
        --metrics-export-port="${LORAQ_METRICS_EXPORT_PORT:-8080}" ${RAY_START_ARGS:-}
    RAY_ADDRESS="127.0.0.1:$port"
    export RAY_ADDRESS
fi
exec loraq serve "$@"
