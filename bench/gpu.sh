#!/bin/sh
# The GPU check as one device call from the repo root, carrying .whl (bench/gpu_wheels.sh).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 exec python3 -m bench.gpu "$@"
