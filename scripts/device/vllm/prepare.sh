#!/usr/bin/env bash
# Run HERE (not on the GPU machine), from the project root:  bash scripts/device/vllm/prepare.sh
# Downloads vLLM 0.25.0 (its CUDA 13 build matches the GPU image's torch 2.11.0+cu130) and the
# packages that image lacks, then cuts them into parts under .device-vllm/ (git-ignored) that fit
# one device call each (the working tree that travels is limited to 64 MiB per call).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
D=.device-vllm
mkdir -p "$D/stage/whl"
grep -qx "/$D/" .git/info/exclude 2>/dev/null || echo "/$D/" >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
  -d "$D/stage/whl" -r "$here/requirements-device.txt"
cp "$here/device.sh" "$here/make_llama3_8b.py" "$here/make_llama3_8b_awq.py" "$D/"
rm -f "$D"/part.*
tar cf - -C "$D/stage" whl | split -b 58M -d - "$D/part."
ls -la "$D"
echo "Next: move each part to the GPU machine and copy it into /tmp/parts there (see README.md)."
