#!/usr/bin/env bash
# Compare `trdeploy bench` with `vllm bench serve` on the same vLLM server at the same load.
#
# Run ON THE GPU MACHINE from the repository root, where vLLM is installed (scripts/device/vllm:
# PYTHONPATH=/tmp/site) and a vLLM server serves the model under the name `m` on localhost:8000:
#
#   MODEL=/tmp/m bash scripts/device/bench_compare.sh
#
# With START_SERVER=1 the script starts that server itself when none answers (and stops it after):
#   python3 -m vllm.entrypoints.openai.api_server --model $MODEL --served-model-name m --port 8000 $SERVER_ARGS
# (SERVER_ARGS defaults to "--max-model-len 8192 --gpu-memory-utilization 0.90 --no-enable-prefix-caching").
#
# Serve with prefix caching OFF for this comparison. Seen on an H100 (2026-11-25) with it on:
# `vllm bench serve --dataset-name random` sends the same prompts on every run (seed 0); the two
# runs after a warm-up with those prompts had p50 TTFT 414 and 533 ms and ~10% more throughput,
# most likely prefix-cache hits, while its other runs spread 782-963 ms.
#
# The load (both tools): /v1/completions, NUM_PROMPTS prompts, OUTPUT_LEN output tokens with ignore_eos,
# CONCURRENCY requests in flight (closed loop). Prompts (PROMPTS):
#   text (default): scripts/device/make_bench_prompts.py writes NUM_PROMPTS Turkish text prompts of
#     INPUT_LEN Llama-3 tokens; vLLM reads them as `--dataset-name custom --skip-chat-template`,
#     trdeploy as `--prompts`: the same text, tokenized by the server for both.
#   random: vLLM's `--dataset-name random` (text the server re-tokenizes) against trdeploy's
#     `--synthetic` (token ids, no tokenization): what each tool does by default for random prompts.
# Order: an optional warm-up run (WARMUP prompts, vLLM), then ROUNDS x [trdeploy, vLLM].
# Results go to $OUT (default /tmp/out): bench_compare.json / .txt with every run and the medians
# (the per-run result files stay in /tmp/bench_compare), and the server's own mean TTFT for every
# run (trdeploy reads /metrics before and after its runs itself; for vLLM's runs this script does).
# Exit code 0 when the medians of p50 TTFT and p50 TPOT of trdeploy are within 5% of vLLM's, 1
# otherwise, 2 on a failure. COMPARE_ONLY=1 only redoes the comparison from the files in
# /tmp/bench_compare.
set -u
OUTDIR=${OUT:-/tmp/out}
RUNS=${RUNS_DIR:-/tmp/bench_compare}
mkdir -p "$OUTDIR" "$RUNS"
REPO=$(cd "$(dirname "$0")/../.." && pwd)
URL=${URL:-http://localhost:8000}
NUM_PROMPTS=${NUM_PROMPTS:-300}
CONCURRENCY=${CONCURRENCY:-100}
INPUT_LEN=${INPUT_LEN:-512}
OUTPUT_LEN=${OUTPUT_LEN:-300}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-100}
PROMPTS=${PROMPTS:-text}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
SERVER_PID=""

cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null; }
trap cleanup EXIT

scrape() {  # $1: file for the server's vllm:* samples now (the same parser trdeploy bench uses)
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" python3 -c "
import json, sys, httpx
from trdeploy.bench.prometheus import parse_prometheus
json.dump(parse_prometheus(httpx.get(sys.argv[1] + '/metrics', timeout=10).text, 'm'), open(sys.argv[2], 'w'))" "$URL" "$1" 2>/dev/null || echo '{}' > "$1"
}

vllm_bench() {  # $1: result name, $2: number of prompts
  local data
  scrape "$RUNS/metrics_$1_before.json"
  if [ "$PROMPTS" = text ]; then
    data=(--dataset-name custom --dataset-path "$RUNS/prompts.jsonl" --custom-output-len "$OUTPUT_LEN" --skip-chat-template --disable-shuffle)
  else
    data=(--dataset-name random --random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN")
  fi
  python3 -m vllm.entrypoints.cli.main bench serve --backend openai --base-url "$URL" --model m --tokenizer "$MODEL" \
    "${data[@]}" --num-prompts "$2" --max-concurrency "$CONCURRENCY" --ignore-eos \
    --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,95,99 \
    --save-result --result-dir "$RUNS" --result-filename "$1.json" > "$RUNS/$1.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ] || [ ! -s "$RUNS/$1.json" ]; then
    echo "vllm bench serve ($1) failed with exit code $rc:"; tail -30 "$RUNS/$1.log"; exit 2
  fi
  sleep 0.25; scrape "$RUNS/metrics_$1_after.json"
  grep -E "Successful|Median TTFT|Median TPOT" "$RUNS/$1.log" | sed "s/^/[$1] /"
}

trdeploy_bench() {  # $1: result name
  local data
  if [ "$PROMPTS" = text ]; then data=(--prompts "$RUNS/prompts.jsonl"); else data=(--synthetic "$INPUT_LEN"); fi
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" python3 -m trdeploy bench --url "$URL" --model m --api completions \
    "${data[@]}" --output-tokens "$OUTPUT_LEN" --ignore-eos --concurrency "$CONCURRENCY" \
    --num-prompts "$NUM_PROMPTS" --percentiles 50,95,99 --max-error-rate 1.0 \
    --json -o "$RUNS/$1.json" --force > /dev/null 2> "$RUNS/$1.log"
  local rc=$?
  if [ $rc -ne 0 ] || [ ! -s "$RUNS/$1.json" ]; then
    echo "trdeploy bench ($1) failed with exit code $rc:"; tail -30 "$RUNS/$1.log"; exit 2
  fi
  python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['runs'][0]; print(f'[$1] completed {r[\"completed\"]}, p50 TTFT {r[\"median_ttft_ms\"]:.2f} ms, p50 TPOT {r[\"median_tpot_ms\"]:.2f} ms')" "$RUNS/$1.json"
}

if [ "${COMPARE_ONLY:-0}" != 1 ]; then
  : "${MODEL:?set MODEL to the served checkpoint folder (vllm bench serve reads its tokenizer)}"
  rm -f "$RUNS"/trd_*.json "$RUNS"/vllm_*.json "$RUNS"/metrics_*.json
  if [ "$PROMPTS" = text ]; then
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" python3 "$REPO/scripts/device/make_bench_prompts.py" "$RUNS/prompts.jsonl" \
      --num "$NUM_PROMPTS" --tokens "$INPUT_LEN" --tokenizer "$MODEL" || exit 2
  fi
  if ! curl -sf "$URL/health" >/dev/null 2>&1; then
    if [ "${START_SERVER:-0}" = 1 ]; then
      t0=$(date +%s)
      # shellcheck disable=SC2086
      python3 -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name m --port 8000 \
        ${SERVER_ARGS:---max-model-len 8192 --gpu-memory-utilization 0.90 --no-enable-prefix-caching} > "$OUTDIR/vllm_server.log" 2>&1 &
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
  [ "$WARMUP" -gt 0 ] && vllm_bench warmup "$WARMUP"
  for k in $(seq 1 "$ROUNDS"); do trdeploy_bench "trd_$k"; vllm_bench "vllm_$k" "$NUM_PROMPTS"; done
fi

PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" python3 - "$RUNS" "$OUTDIR" "$PROMPTS" <<'PY'
import glob, json, statistics, sys
from pathlib import Path

from trdeploy.bench.prometheus import server_metrics_delta

runs, out, prompts = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
trd = [json.loads(Path(f).read_text())["runs"][0] for f in sorted(glob.glob(f"{runs}/trd_*.json"))]
vllm_files = sorted(glob.glob(f"{runs}/vllm_*.json"))
vll = [json.loads(Path(f).read_text()) for f in vllm_files]
if not trd or not vll:
    sys.exit("no results to compare")
rows = [("p50 TTFT (ms)", "median_ttft_ms", True), ("p50 TPOT (ms)", "median_tpot_ms", True), ("p50 ITL (ms)", "median_itl_ms", False),
        ("p50 E2E (ms)", "median_e2el_ms", False), ("mean TTFT (ms)", "mean_ttft_ms", False), ("p95 TTFT (ms)", "p95_ttft_ms", False),
        ("p99 TTFT (ms)", "p99_ttft_ms", False), ("p95 TPOT (ms)", "p95_tpot_ms", False), ("p99 ITL (ms)", "p99_itl_ms", False),
        ("output throughput (tok/s)", "output_throughput", False), ("total input tokens", "total_input_tokens", False),
        ("total output tokens", "total_output_tokens", False), ("failed", "failed", False)]
fmt = lambda xs: " ".join(f"{x:,.1f}" for x in xs)
lines = [f"prompts: {prompts}; {len(trd)} trdeploy and {len(vll)} vLLM runs (medians compared)", ""]
table, ok = [], True
for label, key, goal in rows:
    a = [r.get(key) for r in trd]
    b = [r.get(key) for r in vll]
    if any(x is None for x in a + b):
        continue
    ma, mb = statistics.median(a), statistics.median(b)
    d = (ma - mb) / mb * 100 if mb else None
    if goal:
        ok = ok and d is not None and abs(d) <= 5.0
    table.append({"metric": key, "trdeploy": a, "vllm": b, "trdeploy_median": ma, "vllm_median": mb, "diff_pct": d, "goal": goal})
    lines.append(f"{label:28} trdeploy [{fmt(a)}] median {ma:,.2f} | vLLM [{fmt(b)}] median {mb:,.2f} | "
                 + ("-" if d is None else f"{d:+.1f}%") + ("  <- goal: within 5%" if goal else ""))
for f, r in zip(vllm_files, vll):
    name = Path(f).stem
    before, after = (runs / f"metrics_{name}_{w}.json" for w in ("before", "after"))
    if before.is_file() and after.is_file():
        s = server_metrics_delta(json.loads(before.read_text()), json.loads(after.read_text()), {})
        if s["mean_ms"].get("ttft") is not None:
            lines.append(f"vLLM run {name}: server counted {s['counters'].get('generation_tokens')} generated tokens; "
                         f"server mean TTFT {s['mean_ms']['ttft']:.1f} ms (client mean {r.get('mean_ttft_ms', float('nan')):.1f} ms)")
server = [r.get("server_metrics", {}) for r in trd]
for i, s in enumerate(server, 1):
    if s.get("available"):
        lines.append(f"trdeploy run {i}: server counted {s['counters'].get('generation_tokens')} generated tokens "
                     f"(client {s['client']['generation_tokens']}); server mean TTFT {s['mean_ms'].get('ttft', float('nan')):.1f} ms")
lines.append(f"Goal (median p50 TTFT and median p50 TPOT of trdeploy within 5% of vLLM's): {'PASS' if ok else 'FAIL'}")
text = "\n".join(lines)
print(text)
(out / "bench_compare.txt").write_text(text + "\n")
(out / "bench_compare.json").write_text(json.dumps({"prompts": prompts, "rows": table, "goal_passed": ok}, indent=2) + "\n")
sys.exit(0 if ok else 1)
PY
