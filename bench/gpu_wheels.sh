#!/bin/sh
# Download, here, the wheels bench/gpu.py needs on the GPU machine beyond what it has
# (docs/GPU.md): into .whl/ at the repo root, ignored by git, carried by the device call.
# The versions are this repo's venv's; bitsandbytes is the 4-bit variant's (43 MB of the
# 64 MiB a call may carry), the rest is what workers.settings and schemas import.
set -eu
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0 pydantic-settings==2.16.3 python-dotenv==1.2.4 orjson==3.13.0 \
  redis==8.1.0 bitsandbytes==0.50.2
du -sh .whl
