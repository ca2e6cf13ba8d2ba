#!/bin/sh
# Rendered by trdeploy from DeploymentProfile llama-3-8b-awq-rtx4090 (sha256 9294d25be3b9); do not edit.
# Runs `vllm serve` with exactly the profile's engine arguments. Arguments given to `docker run`
# are appended, and vLLM takes the last value of a repeated flag, so they override.
# The API key is read from VLLM_API_KEY (or the file VLLM_API_KEY_FILE names) at run time; it is
# never baked into the image and never put on the command line (where `ps` would show it).
set -eu
if [ -z "${VLLM_API_KEY:-}" ] && [ -n "${VLLM_API_KEY_FILE:-}" ]; then
  VLLM_API_KEY="$(cat "$VLLM_API_KEY_FILE")"
  export VLLM_API_KEY
fi
if [ -z "${VLLM_API_KEY:-}" ]; then
  echo "trdeploy: VLLM_API_KEY is not set; the API answers without a key." >&2
fi
exec vllm serve /models/Meta-Llama-3-8B-Instruct-awq \
  --served-model-name meta-llama/Meta-Llama-3-8B-Instruct \
  --tensor-parallel-size 1 \
  --dtype auto \
  --max-model-len 8192 \
  --max-num-seqs 16 \
  --max-num-batched-tokens 2048 \
  --gpu-memory-utilization 0.9 \
  --kv-cache-dtype auto \
  --port 8000 \
  "$@"
