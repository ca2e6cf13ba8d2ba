#!/bin/sh
# Rendered by trdeploy from a DeploymentProfile (sha256 6cabb3958fdd, /opt/trdeploy/trdeploy.yaml); do not edit.
# Runs `vllm serve` with exactly the profile's engine arguments. Arguments given after the image name
# (docker run, a pod's args) are appended, and vLLM takes the last value of a repeated flag, so they override.
# The API key is read from VLLM_API_KEY (or the file VLLM_API_KEY_FILE names) at run time; it is never
# baked into the image and never put on the command line (where `ps` would show it).
set -eu
PROFILE_SHA256=6cabb3958fdd27bd48e9e00176c8fc805db9b5bcab6f14d6c213ccaee992d3ce
if [ -n "${TRDEPLOY_EXPECT_PROFILE_SHA256:-}" ] && [ "${TRDEPLOY_EXPECT_PROFILE_SHA256}" != "$PROFILE_SHA256" ]; then
  echo "trdeploy: this image was built from profile sha256 $PROFILE_SHA256, but TRDEPLOY_EXPECT_PROFILE_SHA256 asks for ${TRDEPLOY_EXPECT_PROFILE_SHA256}: build the image from the same profile the manifests were rendered from." >&2
  exit 64
fi
# Group-writable files too: another UID in the group (a later pod, an arbitrary UID) can write what this one made.
umask 0002
# A fresh volume at /cache hides the image's cache folders: make them (as this user) before vLLM starts.
mkdir -p "${HOME:-/cache/home}" "${XDG_CACHE_HOME:-/cache/xdg}" "${VLLM_CACHE_ROOT:-/cache/vllm}" "${FLASHINFER_WORKSPACE_BASE:-/cache/flashinfer}" "${TRITON_CACHE_DIR:-/cache/triton}" "${TORCHINDUCTOR_CACHE_DIR:-/cache/inductor}" "${HF_HOME:-/cache/huggingface}" 2>/dev/null || true
if [ -z "${VLLM_API_KEY:-}" ] && [ -n "${VLLM_API_KEY_FILE:-}" ]; then
  if [ ! -r "${VLLM_API_KEY_FILE}" ]; then echo "trdeploy: VLLM_API_KEY_FILE names ${VLLM_API_KEY_FILE}, which cannot be read." >&2; exit 65; fi
  VLLM_API_KEY="$(cat "${VLLM_API_KEY_FILE}")"
fi
# A key of nothing but white space (an empty key file) is no key.
if [ -z "$(printf %s "${VLLM_API_KEY:-}" | tr -d "[:space:]")" ]; then
  unset VLLM_API_KEY
else
  export VLLM_API_KEY
fi
HAS_KEY_ARG=0
for arg in "$@"; do case "$arg" in --api-key|--api-key=?*) HAS_KEY_ARG=1 ;; esac; done
if [ -z "${VLLM_API_KEY:-}" ] && [ "$HAS_KEY_ARG" = 0 ]; then
  echo "trdeploy: no API key: set VLLM_API_KEY (or VLLM_API_KEY_FILE); this image was built to refuse serving without one (trdeploy build --no-api-key builds one that serves openly)." >&2
  exit 65
fi
exec vllm serve /models/Meta-Llama-3-8B-Instruct-awq \
  --served-model-name meta-llama/Meta-Llama-3-8B-Instruct \
  --tensor-parallel-size 1 \
  --pipeline-parallel-size 1 \
  --dtype auto \
  --max-model-len 8192 \
  --max-num-seqs 16 \
  --max-num-batched-tokens 2048 \
  --gpu-memory-utilization 0.9 \
  --kv-cache-dtype auto \
  --shutdown-timeout 30 \
  --port 8000 \
  "$@"
