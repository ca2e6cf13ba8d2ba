#!/usr/bin/env bash
# `trdeploy calibrate` on a lent GPU with the real vLLM 0.25.0, one step per device call (calls back to back:
# an idle machine is given back after ~30 s with its /tmp). Run ON THE GPU MACHINE from the repository root,
# with this script's folder D (default .device-vllm/calib) carried: D/part.NN (one part of the vLLM wheels that
# scripts/device/vllm/prepare.sh downloads, re-cut in 60.5 MiB parts), D/code (trdeploy, the profiles,
# a gzipped Llama-3 tokenizer.json, make_llama3_8b*.py from scripts/device/vllm).
#
#   bash D/calibrate_gpu.sh part          # copy D/part.* to /tmp/parts; the first call also starts writing the checkpoints
#   bash D/calibrate_gpu.sh install       # install vLLM into /tmp/site, start it with the bf16 profile's arguments, wait for /health
#   bash D/calibrate_gpu.sh calibrate M   # trdeploy calibrate (M minutes, datasheet prior) -> $OUT
#   bash D/calibrate_gpu.sh held          # held-out bench runs (and per-request traces) -> $OUT
#   bash D/calibrate_gpu.sh awq M         # the AWQ checkpoint: restart, KV check, calibrate (M minutes) + held-out -> $OUT
# An AWQ-only session (the fourth): how many waves a sweep point sends, and the held-out error that follows.
#   bash D/calibrate_gpu.sh install-awq   # install vLLM, start it on the AWQ checkpoint with the AWQ profile's arguments
#   bash D/calibrate_gpu.sh awq-cal M W TAG   # calibrate (M minutes, --max-waves W) -> $OUT  (in the fourth session the device copy of
#                                             trdeploy read W from TRDEPLOY_SWEEP_MAX_WAVES, before --max-waves existed; the same plan)
#   bash D/calibrate_gpu.sh awq-held      # held-out bench runs with every request's timings -> $OUT
# What the fifth session's note asks next (vLLM 0.25 schedules one step ahead by default; the model does not):
#   bash D/calibrate_gpu.sh lead [TAG]    # prompt length at fixed concurrency, with vLLM's timers and every request's -> $OUT
#   bash D/calibrate_gpu.sh sync-server   # restart the AWQ server with --no-async-scheduling; awq-held's loads again -> $OUT
#
# The card is treated as unknown: --prior datasheet (the fit starts from, and "before" is, datasheet figures
# with generic efficiencies, not the shipped H100/H200 calibrations).
set -u
D=${D:-.device-vllm/calib}
C=$D/code
export PYTHONPATH=/tmp/site:$C PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR" /tmp/parts /tmp/res
gpu_tier() { nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H200 && echo h200 || echo h100; }
serve_args() { python3 -P -c "import sys; from trdeploy.deployment import DeploymentProfile as P; print(' '.join(P.load(sys.argv[1]).engine_args.to_cli_args()))" "$1"; }
start_server() {  # $1 model dir, $2 profile, $3 name, $4 more vLLM arguments: start vLLM in its own session (it outlives this call)
  local args; args="$(serve_args "$2") ${4:-}"
  echo "serve $1 $args"
  setsid nohup python3 -m vllm.entrypoints.openai.api_server --model "$1" --port 8000 $args > /tmp/res/$3.server.log 2>&1 < /dev/null &
  echo $! > /tmp/vllm.pid; date +%s > /tmp/vllm.t0
}
wait_health() {  # $1 name, $2 seconds
  local t0; t0=$(cat /tmp/vllm.t0)
  for _ in $(seq 1 $(( $2 * 2 ))); do
    curl -sf localhost:8000/health >/dev/null 2>&1 && break
    kill -0 "$(cat /tmp/vllm.pid)" 2>/dev/null || { echo "server died"; tail -30 /tmp/res/$1.server.log; return 1; }
    sleep 0.5
  done
  curl -sf localhost:8000/health >/dev/null || { echo "not healthy after $2 s"; return 1; }
  echo "[$1] /health after $(( $(date +%s) - t0 )) s"
  grep -E "Model loading took|Available KV cache memory|GPU KV cache size|Maximum concurrency|Graph capturing finished|init engine|LinearKernel" /tmp/res/$1.server.log | sed 's/^.*\] //' | cut -c1-200
}
pack() { tar czf "$OUTDIR/$1.tgz" -C /tmp/res . && ls -la "$OUTDIR"; }
install_and_serve() {  # $1 checkpoint dir, $2 bf16|awq, $3 seconds to wait for the checkpoint: install vLLM, start it on $1
  local t; t=$(date +%s)
  mkdir -p /tmp/stage && cat /tmp/parts/part.* | tar xf - -C /tmp/stage || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/stage/whl/*.whl 2>&1 | grep -v "already exists" | tail -3
  python3 -c "import vllm, torch, pydantic; print('vllm', vllm.__version__, 'torch', torch.__version__, 'pydantic', pydantic.VERSION)" | tee -a /tmp/res/card.txt
  echo "install $(( $(date +%s) - t )) s"
  for _ in $(seq 1 "$3"); do [ -f "$1.done" ] && break; sleep 1; done
  [ -f "$1.done" ] || { echo "$2 checkpoint not written"; tail /tmp/res/models.log; exit 1; }
  gunzip -c $C/tokenizer.json.gz > "$1/tokenizer.json" && cp $C/tokenizer_config.json $C/special_tokens_map.json "$1/"
  tier=$(gpu_tier); echo "$tier" > /tmp/tier
  start_server "$1" "$C/profile-$tier-$2.yaml" "$2"
  wait_health "$2" 420
}

case "$1" in
part)
  cp "$D"/part.* /tmp/parts/ && ls -la /tmp/parts
  if [ ! -f /tmp/models.started ]; then
    touch /tmp/models.started
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee /tmp/res/card.txt
    # Random-weight checkpoints of the real shapes (speed and memory are real, text is noise), in the background.
    setsid nohup bash -c "python3 $D/make_llama3_8b.py /tmp/m && touch /tmp/m.done; python3 $D/make_llama3_8b_awq.py /tmp/q && touch /tmp/q.done" > /tmp/res/models.log 2>&1 < /dev/null &
  fi
  ;;
install) install_and_serve /tmp/m bf16 240 ;;
install-awq) install_and_serve /tmp/q awq 300 ;;
awq-cal)
  tier=$(cat /tmp/tier); P=$C/profile-$tier-awq.yaml; M=${2:-2}; W=${3:-3}; T=${4:-w$W}
  t=$(date +%s)
  python3 -P -m trdeploy calibrate --url http://localhost:8000 --profile "$P" -o /tmp/res/calibration-$tier-awq-$T.yaml --budget-minutes "$M" --max-waves "$W" --prior datasheet --no-leave-one-out 2>&1 | tail -25
  echo "awq-cal $T $(( $(date +%s) - t )) s"
  pack awq-$T
  ;;
awq-held|sync-server)
  tier=$(cat /tmp/tier); P=$C/profile-$tier-awq.yaml; R=/tmp/res
  if [ "$1" = sync-server ]; then  # the same server scheduling each step when the one before it ends
    kill "$(cat /tmp/vllm.pid)"; sleep 5
    start_server /tmp/q "$P" awq-sync --no-async-scheduling
    wait_health awq-sync 420 || exit 1
    grep -i "asynchronous scheduling" /tmp/res/awq-sync.server.log | tail -1
    R=/tmp/res/sync; mkdir -p $R
  fi
  tr() { python3 -P -m trdeploy "$@"; }
  B="tr bench --url http://localhost:8000 --api completions --ignore-eos --json"
  $B --synthetic 1024 --output-tokens 256 -c 32 -n 128 -o $R/held-awq-typical.json --requests $R/held-awq-typical.csv > /dev/null
  $B --synthetic 3000 --output-tokens 100 -c 8 -n 32 -o $R/held-awq-3000-100.json --requests $R/held-awq-3000-100.csv > /dev/null
  $B --synthetic 512 --output-tokens 128 -c 16 -n 64 -o $R/held-awq-512-128.json --requests $R/held-awq-512-128.csv > /dev/null
  $B --synthetic 128 --output-tokens 512 -c 32 -n 64 -o $R/held-awq-128-512.json --requests $R/held-awq-128-512.csv > /dev/null
  $B --synthetic 1536 --output-tokens 128 -c 24 -n 72 -o $R/held-awq-1536-128.json --requests $R/held-awq-1536-128.csv > /dev/null
  $B --synthetic 768 --output-tokens 384 -c 48 -n 96 -o $R/held-awq-768-384.json --requests $R/held-awq-768-384.csv > /dev/null
  $B --synthetic 1024 --output-tokens 256 --request-rate 5 -n 160 -o $R/held-awq-poisson.json --requests $R/held-awq-poisson.csv > /dev/null
  for f in /tmp/res/calibration-$tier-awq-*.yaml; do
    echo "== $f"; tr calibrate --check "$f" --from-bench $R/held-awq-*.json --profile "$P" --json > "$R/$(basename "${f%.yaml}").check.json"
    python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['summary']; print({m: (round(v['median_abs']*100,1), round(v['p90_abs']*100,1), v['points']) for m, v in s.items()})" "$R/$(basename "${f%.yaml}").check.json"
  done
  pack "$1"
  ;;
lead)
  # Prompt length at fixed concurrency (64 output tokens): what the API server and the engine each add to TTFT as
  # prompts grow, from vLLM's timers (bench's server_metrics) and every request's timings. TAG names the server.
  T=${2:-async}; R=/tmp/res/lead-$T; mkdir -p $R
  tr() { python3 -P -m trdeploy "$@"; }
  B="tr bench --url http://localhost:8000 --api completions --ignore-eos --json"
  for c in 16 4; do
    for p in 256 512 1024 2048 4096; do
      case "$c-$p" in 4-512|4-2048) continue ;; esac
      $B --synthetic "$p" --output-tokens 64 -c "$c" -n $(( 4 * c )) -o $R/lead-$p-c$c.json --requests $R/lead-$p-c$c.csv > /dev/null
      python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['runs'][0]; m=(r.get('server_metrics') or {}).get('mean_ms') or {}; print(sys.argv[1].split('/')[-1], 'ttft', round(r['mean_ttft_ms'],1), {k: round(v,1) for k, v in m.items() if v is not None})" $R/lead-$p-c$c.json
    done
  done
  pack lead-$T
  ;;
calibrate)
  tier=$(cat /tmp/tier); P=$C/profile-$tier-bf16.yaml; M=${2:-6}
  tr() { python3 -P -m trdeploy "$@"; }
  tr calibrate --url http://localhost:8000 --profile "$P" -o /tmp/res/calibration-$tier-bf16.yaml --budget-minutes "$M" --prior datasheet --no-leave-one-out 2>&1 | tail -60
  pack bf16
  ;;
held)
  # Held out: loads the sweep did not run (other concurrencies, 3000 in / 100 out, 128 in / 512 out, another rate),
  # every request's timings kept (--requests) next to bench's report.
  tier=$(cat /tmp/tier); P=$C/profile-$tier-bf16.yaml
  tr() { python3 -P -m trdeploy "$@"; }
  B="tr bench --url http://localhost:8000 --api completions --ignore-eos --json"
  $B --synthetic 1024 --output-tokens 256 --sweep concurrency=8,32,48 -n 96 -o /tmp/res/held-typical.json --requests /tmp/res/held-typical.csv > /dev/null
  $B --synthetic 3000 --output-tokens 100 -c 8 -n 24 -o /tmp/res/held-3000-100.json --requests /tmp/res/held-3000-100.csv > /dev/null
  # The same prompts again (--prompt-salt), right away: vLLM's prefix cache serves them and bench flags it. (In the
  # third session this ran after ~588,000 other prompt tokens, which had evicted them: 0 hits.)
  salt=$(python3 -c "import json; print(json.load(open('/tmp/res/held-3000-100.json'))['prompts']['salt'])")
  $B --synthetic 3000 --output-tokens 100 -c 8 -n 24 --prompt-salt "$salt" -o /tmp/res/repeat-3000-100.json > /dev/null
  $B --synthetic 128 --output-tokens 512 -c 32 -n 64 -o /tmp/res/held-128-512.json --requests /tmp/res/held-128-512.csv > /dev/null
  $B --synthetic 512 --output-tokens 128 -c 16 -n 48 -o /tmp/res/held-512-128.json --requests /tmp/res/held-512-128.csv > /dev/null
  rate=$(python3 -c "import yaml,sys; c=yaml.safe_load(open(sys.argv[1])); p=[p for r in c['runs'] for p in r['points'] if p['load']['arrivals']=='poisson']; print(round(0.55*p[0]['load']['request_rate'],3) if p else 2.0)" /tmp/res/calibration-$tier-bf16.yaml)
  $B --synthetic 1024 --output-tokens 256 --request-rate "$rate" -n $(python3 -c "print(max(40, round($rate*40)))") -o /tmp/res/held-poisson.json --requests /tmp/res/held-poisson.csv > /dev/null
  # Shapes and rates no earlier session ran: 1536 in / 128 out at c=24, 768 in / 384 out at c=64, a busier rate.
  $B --synthetic 1536 --output-tokens 128 -c 24 -n 72 -o /tmp/res/held-1536-128.json --requests /tmp/res/held-1536-128.csv > /dev/null
  $B --synthetic 768 --output-tokens 384 -c 64 -n 128 -o /tmp/res/held-768-384.json --requests /tmp/res/held-768-384.csv > /dev/null
  rate2=$(python3 -c "print(round($rate / 0.55 * 0.8, 3))")
  $B --synthetic 1024 --output-tokens 256 --request-rate "$rate2" -n $(python3 -c "print(max(60, round($rate2*20)))") -o /tmp/res/held-poisson-busy.json --requests /tmp/res/held-poisson-busy.csv > /dev/null
  tr calibrate --check /tmp/res/calibration-$tier-bf16.yaml --from-bench /tmp/res/held-*.json --profile "$P" --json > /tmp/res/check-$tier-bf16.json
  tr calibrate --check /tmp/res/calibration-$tier-bf16.yaml --from-bench /tmp/res/held-*.json --profile "$P" 2>&1 | tail -20
  python3 -c "import json; r=json.load(open('/tmp/res/repeat-3000-100.json'))['runs'][0]['server_metrics']['prefix_cache']; f=json.load(open('/tmp/res/held-3000-100.json'))['runs'][0]['server_metrics']['prefix_cache']; print('prefix cache: first', f, 'repeat', r)"
  # Per-request traces of two loads the sweep also ran (for the record, not held out): a closed loop at the
  # profile's concurrency and 4 clients of short prompts.
  c=$(python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['engine_args']['max_num_seqs'])" "$P")
  $B --synthetic 1024 --output-tokens 256 -c "$c" -n $(( 3 * c )) -o /tmp/res/diag-typical-c$c.json --requests /tmp/res/diag-typical-c$c.csv > /dev/null
  $B --synthetic 256 --output-tokens 384 -c 4 -n 16 -o /tmp/res/diag-256-384-c4.json --requests /tmp/res/diag-256-384-c4.csv > /dev/null
  pack bf16
  ;;
awq)
  tier=$(cat /tmp/tier); P=$C/profile-$tier-awq.yaml; M=${2:-2}
  kill "$(cat /tmp/vllm.pid)"; sleep 5
  for _ in $(seq 1 120); do [ -f /tmp/q.done ] && break; sleep 1; done
  gunzip -c $C/tokenizer.json.gz > /tmp/q/tokenizer.json && cp $C/tokenizer_config.json $C/special_tokens_map.json /tmp/q/
  start_server /tmp/q "$P" awq
  wait_health awq 300 || exit 1
  tr() { python3 -P -m trdeploy "$@"; }
  tr calibrate --url http://localhost:8000 --profile "$P" -o /tmp/res/calibration-$tier-awq.yaml --budget-minutes "$M" --prior datasheet --no-leave-one-out 2>&1 | tail -30
  B="tr bench --url http://localhost:8000 --api completions --ignore-eos --json"
  $B --synthetic 1024 --output-tokens 256 -c 32 -n 64 -o /tmp/res/held-awq-typical.json --requests /tmp/res/held-awq-typical.csv > /dev/null
  $B --synthetic 3000 --output-tokens 100 -c 8 -n 16 -o /tmp/res/held-awq-3000-100.json > /dev/null
  $B --synthetic 512 --output-tokens 128 -c 16 -n 48 -o /tmp/res/held-awq-512-128.json > /dev/null
  tr calibrate --check /tmp/res/calibration-$tier-awq.yaml --from-bench /tmp/res/held-awq-*.json --profile "$P" --json > /tmp/res/check-$tier-awq.json
  tr calibrate --check /tmp/res/calibration-$tier-bf16.yaml --from-bench /tmp/res/held-awq-*.json --profile "$P" --json > /tmp/res/check-$tier-awq-with-bf16-memory.json 2>&1
  tail -c 600 /tmp/res/check-$tier-awq.json
  pack awq
  ;;
esac
