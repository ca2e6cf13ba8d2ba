#!/usr/bin/env bash
# Start the real vLLM on a GPU machine, print its own memory lines, optionally compare benches, stop it.
#
# Run ON THE GPU MACHINE from the repository root, after scripts/device/vllm's `device.sh setup`
# installed vLLM 0.25.0 into /tmp/site:
#
#   MODEL=/tmp/m bash scripts/device/vllm_measure.sh NAME --max-model-len 8192 --gpu-memory-utilization 0.90 [vllm args]
#
# Prints vLLM's "Model loading took", "Available KV cache memory", "GPU KV cache size: N tokens" lines,
# which tests/data/vllm_measurements.json records and `trdeploy tune` predicts. BENCH=1 also runs
# scripts/device/bench_compare.sh (vllm bench serve vs trdeploy bench at the same load) against it.
# The full server log is written to $OUT/NAME.log (VLLM_LOGGING_LEVEL=DEBUG for the memory profile).
set -u
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-DEBUG}
name=$1; shift
M=${MODEL:-/tmp/m}; OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"; LOG=$OUTDIR/$name.log; t0=$(date +%s)
python3 -m vllm.entrypoints.openai.api_server --model "$M" --served-model-name m --port 8000 "$@" > "$LOG" 2>&1 &
PID=$!
ready=0
for _ in $(seq 1 240); do
  if curl -sf localhost:8000/health >/dev/null 2>&1; then ready=1; break; fi
  kill -0 $PID 2>/dev/null || break
  sleep 2
done
if [ $ready != 1 ]; then echo "[$name] server not ready"; grep -E "Error|error|Traceback" "$LOG" | tail -20; kill $PID 2>/dev/null; exit 1; fi
echo "[$name] ready after $(( $(date +%s)-t0 )) s"
grep -E "non-default args|Model loading took|Available KV cache memory|GPU KV cache size|Maximum concurrency|Graph capturing finished|init engine|max_num_batched_tokens|Memory profiling|non-torch|torch peak|CUDA graph|cudagraph memory|LinearKernel|kv_cache_dtype|Using .* backend" "$LOG" \
  | grep -vE "^DEBUG.*(Waiting|Got)" | sed 's/^.*\] //' | cut -c1-260 | head -40
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader
if [ "${BENCH:-0}" = 1 ]; then MODEL=$M bash "$(dirname "$0")/bench_compare.sh"; fi
kill $PID; wait $PID 2>/dev/null; echo "[$name] done in $(( $(date +%s)-t0 )) s"
