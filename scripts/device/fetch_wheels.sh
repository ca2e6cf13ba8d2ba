#!/usr/bin/env bash
# Run HERE (the build machine, with network to PyPI), from the project root:
#   bash scripts/device/fetch_wheels.sh
# Downloads into .whl/ exactly the wheels the offline GPU image lacks for `trdeploy quantize`
# (it already has Python 3.12, torch 2.11.0+cu130, transformers 5.17.0, accelerate 1.15, numpy,
# tiktoken, tokenizers, huggingface-hub, typer, rich, pyyaml, httpx, safetensors, pyarrow, xxhash,
# psutil, tqdm, requests). scripts/device/quantize_8b.sh installs them into /tmp/lc, a target of
# its own, because the vLLM install in /tmp/site pins compressed-tensors 0.17.0 and
# llm-compressor 0.14.0.1 needs 0.19.0. Versions are the ones the CPU test suite runs with.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=.whl
mkdir -p "$D"  # .whl/ is git-ignored (.gitignore): pass it to the device call with carry=[".whl"]
PKGS=(
  # llm-compressor and what it imports
  llmcompressor==0.14.0.1 compressed-tensors==0.19.0 auto-round==0.15.1 py-cpuinfo==9.0.0
  loguru==0.7.3 nvidia-ml-py==13.615.71 pillow==13.0.0
  # datasets (llm-compressor imports it; trdeploy builds the calibration Dataset with it)
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 huggingface-hub==1.33.0
  pandas==3.1.1 python-dateutil==4.0.0 tzdata==2026.6 filelock==4.3.1 packaging==26.4
  # trdeploy's own core (pydantic for the DeploymentProfile) and transformers' chat templates
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 jinja2==3.1.6 markupsafe==3.0.4
  # llama-models: the Llama-3 tokenizer for scripts/make_llama3_hf_tokenizer.py
  llama-models==0.3.0 termcolor==3.3.0
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$D" "${PKGS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
ls -la "$D"
du -sh "$D"
total=$(du -sm "$D" | cut -f1)
if [ "$total" -ge 60 ]; then echo "error: $D is ${total} MB, over the 60 MB one device call carries" >&2; exit 1; fi
echo "Next: run scripts/device/quantize_8b.sh on the GPU machine, carrying .whl (see the script's header)."
