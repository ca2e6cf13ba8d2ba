#!/usr/bin/env bash
# Start vLLM once, record its start-up, run a concurrency sweep of `vllm bench serve`, stop it.
# Run ON THE GPU MACHINE from the repository root after scripts/device/vllm's `device.sh setup`:
#   MODEL=/tmp/m RUNS="1:10 16:48" bash scripts/device/latency_sweep.sh NAME [vllm serve args]
# Writes $OUT/NAME.log (server log), $OUT/NAME.sweep.jsonl (one line per bench run, scripts/device/latency_sweep.py)
# and $OUT/NAME.startup.txt (process start -> /health seconds and vLLM's start-up lines).
set -u
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
name=$1; shift
M=${MODEL:-/tmp/m}; OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"; LOG=$OUTDIR/$name.log; S=$OUTDIR/$name.startup.txt
t0=$(date +%s%N)
python3 -m vllm.entrypoints.openai.api_server --model "$M" --served-model-name m --port 8000 "$@" > "$LOG" 2>&1 &
PID=$!
ready=0
for _ in $(seq 1 1500); do
  if curl -sf localhost:8000/health >/dev/null 2>&1; then ready=1; break; fi
  kill -0 $PID 2>/dev/null || break
  sleep 0.2
done
t1=$(date +%s%N)
{ echo "name=$name model=$M args=$*"; echo "process_start_to_health_ms=$(( (t1 - t0) / 1000000 ))"; nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
  grep -E "non-default args|Loading weights took|Model loading took|Available KV cache memory|GPU KV cache size|Maximum concurrency|Graph capturing finished|init engine|compil|max_num_batched_tokens|LinearKernel|Starting vLLM|Dynamo bytecode|Memory profiling|backend" "$LOG" | sed 's/^.*\] //' | cut -c1-300 | head -60; } > "$S"
cat "$S"
if [ $ready != 1 ]; then echo "[$name] server not ready"; grep -E "Error|error|Traceback" "$LOG" | tail -20; kill $PID 2>/dev/null; exit 1; fi
# Warm-up (not recorded): a few short requests so the first measured request pays no first-call cost.
wp=""; for i in 1 2 3 4; do curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' -d '{"model":"m","prompt":"merhaba dünya","max_tokens":16,"ignore_eos":true}' >/dev/null & wp="$wp $!"; done; wait $wp
# BUDGET_S: seconds from process start after which no new bench run starts.
export DEADLINE_EPOCH=$(( t0 / 1000000000 + ${BUDGET_S:-480} ))
python3 "$(dirname "$0")/latency_sweep.py" "$name" "$M" ${RUNS:-1:10} 2>&1 | grep -E "^\[sweep\]|Error|error" 
kill $PID; wait $PID 2>/dev/null; echo "[$name] done in $(( ($(date +%s%N) - t0) / 1000000000 )) s"
