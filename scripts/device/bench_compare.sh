#!/usr/bin/env bash
# Compare `trdeploy bench` with `vllm bench serve` on the same vLLM server at the same load.
#
# Run ON THE GPU MACHINE from the repository root, where vLLM is installed (shared/tools/vllm-device:
# PYTHONPATH=/tmp/site) and a vLLM server serves the model under the name `m` on localhost:8000:
#
#   MODEL=/tmp/m bash scripts/device/bench_compare.sh
#
# With START_SERVER=1 the script starts that server itself when none answers (and stops it after):
#   python3 -m vllm.entrypoints.openai.api_server --model $MODEL --served-model-name m --port 8000 $SERVER_ARGS
# (SERVER_ARGS defaults to "--max-model-len 8192 --gpu-memory-utilization 0.90"; about 4 minutes to start.)
#
# The load (both tools): /v1/completions, 300 prompts of 512 random tokens, 300 output tokens with
# ignore_eos, 100 requests in flight. Order: vLLM, trdeploy, vLLM again (to see order effects and vLLM's
# own run-to-run spread). Results go to $OUT (default /tmp/out): vllm_1.json, trdeploy.json, vllm_2.json,
# their logs, and bench_compare.json / bench_compare.txt with the comparison. Exit code 0 when p50 TTFT
# and p50 TPOT of trdeploy are within 5% of vLLM's (mean of its two runs), 1 otherwise, 2 on a failure.
# COMPARE_ONLY=1 only redoes the comparison from the files already in $OUT.
set -u
OUTDIR=${OUT:-/tmp/out}
mkdir -p "$OUTDIR"
REPO=$(cd "$(dirname "$0")/../.." && pwd)
URL=${URL:-http://localhost:8000}
NUM_PROMPTS=${NUM_PROMPTS:-300}
CONCURRENCY=${CONCURRENCY:-100}
INPUT_LEN=${INPUT_LEN:-512}
OUTPUT_LEN=${OUTPUT_LEN:-300}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
SERVER_PID=""

cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null; }
trap cleanup EXIT

vllm_bench() {  # $1: result name
  python3 -m vllm.entrypoints.cli.main bench serve --backend openai --base-url "$URL" --model m --tokenizer "$MODEL" \
    --dataset-name random --random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN" --num-prompts "$NUM_PROMPTS" \
    --max-concurrency "$CONCURRENCY" --ignore-eos --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,95,99 \
    --save-result --result-dir "$OUTDIR" --result-filename "$1.json" > "$OUTDIR/$1.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ] || [ ! -s "$OUTDIR/$1.json" ]; then
    echo "vllm bench serve ($1) failed with exit code $rc:"; tail -30 "$OUTDIR/$1.log"; exit 2
  fi
  grep -E "Successful|Failed|Median TTFT|Median TPOT|Output token throughput" "$OUTDIR/$1.log" | sed "s/^/[$1] /"
}

trdeploy_bench() {
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" python3 -m trdeploy bench --url "$URL" --model m --api completions \
    --synthetic "$INPUT_LEN" --output-tokens "$OUTPUT_LEN" --ignore-eos --concurrency "$CONCURRENCY" \
    --num-prompts "$NUM_PROMPTS" --percentiles 50,95,99 --max-error-rate 1.0 \
    --json -o "$OUTDIR/trdeploy.json" --force > "$OUTDIR/trdeploy.stdout.json" 2> "$OUTDIR/trdeploy.log"
  local rc=$?
  if [ $rc -ne 0 ] || [ ! -s "$OUTDIR/trdeploy.json" ]; then
    echo "trdeploy bench failed with exit code $rc:"; tail -30 "$OUTDIR/trdeploy.log"; exit 2
  fi
}

if [ "${COMPARE_ONLY:-0}" != 1 ]; then
  : "${MODEL:?set MODEL to the served checkpoint folder (vllm bench serve reads its tokenizer)}"
  if ! curl -sf "$URL/health" >/dev/null 2>&1; then
    if [ "${START_SERVER:-0}" = 1 ]; then
      t0=$(date +%s)
      # shellcheck disable=SC2086
      python3 -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name m --port 8000 \
        ${SERVER_ARGS:---max-model-len 8192 --gpu-memory-utilization 0.90} > "$OUTDIR/vllm_server.log" 2>&1 &
      SERVER_PID=$!
      for _ in $(seq 1 330); do
        curl -sf "$URL/health" >/dev/null 2>&1 && break
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "vLLM server died:"; tail -20 "$OUTDIR/vllm_server.log"; exit 2; }
        sleep 2
      done
      curl -sf "$URL/health" >/dev/null 2>&1 || { echo "vLLM server not ready"; exit 2; }
      echo "vLLM server ready after $(( $(date +%s) - t0 )) s"
    else
      echo "No server answers at $URL/health. Start vLLM serving 'm', or set START_SERVER=1."; exit 2
    fi
  fi
  vllm_bench vllm_1
  trdeploy_bench
  vllm_bench vllm_2
fi

python3 - "$OUTDIR" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
v1 = json.loads((out / "vllm_1.json").read_text())
v2 = json.loads((out / "vllm_2.json").read_text())
report = json.loads((out / "trdeploy.json").read_text())
t = report["runs"][0]

rows = [
    ("p50 TTFT (ms)", "median_ttft_ms", True),
    ("p50 TPOT (ms)", "median_tpot_ms", True),
    ("p50 ITL (ms)", "median_itl_ms", False),
    ("p50 E2E (ms)", "median_e2el_ms", False),
    ("mean TTFT (ms)", "mean_ttft_ms", False),
    ("mean TPOT (ms)", "mean_tpot_ms", False),
    ("p95 TTFT (ms)", "p95_ttft_ms", False),
    ("p99 TTFT (ms)", "p99_ttft_ms", False),
    ("p95 TPOT (ms)", "p95_tpot_ms", False),
    ("p99 ITL (ms)", "p99_itl_ms", False),
    ("p95 E2E (ms)", "p95_e2el_ms", False),
    ("request throughput (req/s)", "request_throughput", False),
    ("output throughput (tok/s)", "output_throughput", False),
    ("total token throughput (tok/s)", "total_token_throughput", False),
    ("completed", "completed", False),
    ("failed", "failed", False),
    ("total input tokens", "total_input_tokens", False),
    ("total output tokens", "total_output_tokens", False),
    ("duration (s)", "duration", False),
]

def rel(a, b):
    return None if a is None or b in (None, 0) else (a - b) / b * 100

lines = []
header = f"{'metric':32} {'vllm #1':>10} {'trdeploy':>10} {'vllm #2':>10} {'trd vs vllm':>12} {'vllm #2 vs #1':>14}"
lines += [header, "-" * len(header)]
table, goal_ok = [], True
for label, key, goal in rows:
    a, b, c = v1.get(key), t.get(key), v2.get(key)
    mean = None if a is None or c is None else (a + c) / 2
    d, spread = rel(b, mean), rel(c, a)
    table.append({"metric": key, "vllm_1": a, "trdeploy": b, "vllm_2": c, "trdeploy_vs_vllm_pct": d, "vllm_2_vs_1_pct": spread, "goal": goal})
    if goal:
        goal_ok = goal_ok and d is not None and abs(d) <= 5.0
    fmt = lambda x: "-" if x is None else f"{x:,.2f}"
    pct = lambda x: "-" if x is None else f"{x:+.1f}%"
    lines.append(f"{label:32} {fmt(a):>10} {fmt(b):>10} {fmt(c):>10} {pct(d):>12} {pct(spread):>14}" + ("  <- goal: within 5%" if goal else ""))
server = t.get("server_metrics", {})
if server.get("available"):
    lines.append(f"trdeploy server-side cross-check: generated tokens {server['counters'].get('generation_tokens')}, "
                 f"client counted {server['client']['generation_tokens']}; server mean TTFT {server['mean_ms'].get('ttft')} ms")
verdict = "PASS" if goal_ok else "FAIL"
lines.append(f"Goal (p50 TTFT and p50 TPOT of trdeploy within 5% of vLLM's, mean of its two runs): {verdict}")
text = "\n".join(lines)
print(text)
(out / "bench_compare.txt").write_text(text + "\n")
(out / "bench_compare.json").write_text(json.dumps({"rows": table, "goal_passed": goal_ok}, indent=2) + "\n")
sys.exit(0 if goal_ok else 1)
PY
