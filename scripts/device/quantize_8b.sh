#!/usr/bin/env bash
# `trdeploy quantize` on an 8B-shaped Llama-3 on the lent GPU machine: wall time and peak GPU memory.
#
# Run ON THE GPU MACHINE from the tree root, with .whl/ carried (made here by
# scripts/device/fetch_wheels.sh; .whl/ is git-ignored, so name it in the device call's carry):
#   bash scripts/device/quantize_8b.sh            # installs into /tmp/lc, quantizes /tmp/m -> /tmp/m-awq
#   bash scripts/device/quantize_8b.sh start      # the same in the background (for a 10-minute call limit)
#   bash scripts/device/quantize_8b.sh wait [S]   # a later call: wait up to S s (default 540), print, copy to $OUT
#   DRY_RUN=1 bash scripts/device/quantize_8b.sh  # everything but the quantize call itself
#   REHEARSAL=1 PYTHON=.venv/bin/python MODEL=tiny-llama ARGS="--num-samples 8 --max-seq-len 128" \
#     bash scripts/device/quantize_8b.sh           # on a CPU build machine: no GPU, no install
# Env: MODEL (default /tmp/m), M_DIMS (shapes of a generated model: "H,I,L,heads,kv_heads,vocab"), OUTPUT (default /tmp/m-awq), ARGS (extra quantize options, e.g.
#      "--compare rtn" or "--num-samples 64"), PYTHON (default python3), LC (default /tmp/lc),
#      LOGDIR (logs and results; default /tmp/q8b), OUT (the device call's folder whose files come
#      back: results are copied there at the end of a foreground run and by `wait`).
#
# The image has torch 2.11.0+cu130 and transformers 5.17.0; llm-compressor 0.14.0.1 and
# compressed-tensors 0.19.0 go into their own target ($LC) because the vLLM install in /tmp/site
# pins compressed-tensors 0.17.0: this script never puts /tmp/site on the path. trdeploy itself is
# not installed: PYTHONPATH points at this tree.
#
# MODEL must be a 16-bit Llama checkpoint folder; if it is missing, a random-weight Llama-3-8B
# (the real shapes, bf16, about 30 s on the GPU) is written there. If it has no tokenizer.json or no
# chat template, scripts/make_llama3_hf_tokenizer.py writes the Llama-3 Instruct tokenizer into it
# (checked token for token against llama-models first).
#
# Afterwards the output can be served with the shared vLLM recipe:
#   MODEL=/tmp/m-awq bash .device-vllm/device.sh serve awq --max-model-len 8192
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
LC=${LC:-/tmp/lc}
M=${MODEL:-/tmp/m}
Q=${OUTPUT:-/tmp/m-awq}
OUTDIR=${LOGDIR:-/tmp/q8b}
mkdir -p "$OUTDIR"
copy_back() { [ -n "${OUT:-}" ] && [ "$OUT" != "$OUTDIR" ] && mkdir -p "$OUT" && cp -r "$OUTDIR"/. "$OUT"/ 2>/dev/null; true; }
case "${1:-run}" in
  start)
    rm -f "$OUTDIR/done"
    # setsid: the device tool ends a call's processes when the call returns, except a new session's
    OUT= setsid nohup bash "$0" run > "$OUTDIR/quantize_8b.txt" 2>&1 < /dev/null &
    echo "started (pid $!); logs in $OUTDIR/quantize_8b.txt; next: bash $0 wait"
    exit 0 ;;
  wait)
    limit=${2:-540}; t=0
    while [ ! -f "$OUTDIR/done" ] && [ "$t" -lt "$limit" ]; do sleep 10; t=$((t + 10)); done
    cat "$OUTDIR/quantize_8b.txt"; copy_back
    [ -f "$OUTDIR/done" ] || { echo "(still running after ${limit} s: call wait again)"; exit 3; }
    exit "$(cat "$OUTDIR/done")" ;;
  run) ;;
  *) echo "usage: $0 [run|start|wait [SECONDS]]"; exit 2 ;;
esac
trap 'rc=$?; echo $rc > "$OUTDIR/done"; copy_back' EXIT
export PYTHONPATH="$LC:$ROOT" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step() { echo "== $* ($(date +%H:%M:%S))"; }

REHEARSAL=${REHEARSAL:-0}
step "machine"
if [ "$REHEARSAL" = 1 ]; then echo "  rehearsal: CPU, packages from $PY's environment"; else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no GPU visible"; exit 1; }
fi
"$PY" --version

step "install the carried wheels into $LC"
if [ "$REHEARSAL" = 1 ]; then echo "  skipped (rehearsal)"; else
ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run scripts/device/fetch_wheels.sh on the build machine and carry .whl"; exit 1; }
fi
if [ "$REHEARSAL" != 1 ] && [ ! -f "$LC/.installed" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$LC" .whl/*.whl 2>&1 | grep -v "already exists" | tail -3
  touch "$LC/.installed"
fi
REHEARSAL=$REHEARSAL "$PY" - <<'PY' || { echo "the quantize stack does not import: see above"; exit 1; }
import importlib.metadata as md, os, sys
os.environ["LLM_COMPRESSOR_LOG_DISABLED"] = "true"
import torch, transformers, compressed_tensors, datasets, llmcompressor, trdeploy.quant.quantization
want = {"compressed-tensors": "0.19.0", "llmcompressor": "0.14.0.1"}
for name in ("torch", "transformers", "accelerate", "llmcompressor", "compressed-tensors", "datasets", "huggingface-hub", "pyarrow", "pydantic"):
    print(f"  {name} {md.version(name)}")
bad = {k: md.version(k) for k, v in want.items() if md.version(k) != v}
if bad or not (torch.cuda.is_available() or os.environ.get("REHEARSAL") == "1"):
    sys.exit(f"wrong versions {bad} or no CUDA ({torch.cuda.is_available()})")
print("  compressed_tensors from", os.path.dirname(compressed_tensors.__file__))
PY

if [ ! -f "$M/config.json" ]; then
  step "writing a random-weight Llama-3-8B (bf16) to $M"
  M_DIMS=${M_DIMS:-} "$PY" - "$M" <<'PY' || exit 1
import json, os, sys, torch
from safetensors.torch import save_file
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
H, I, L, NH, KV, V = (int(x) for x in (os.environ.get("M_DIMS") or "4096,14336,32,32,8,128256").split(","))
D = H // NH
dev = "cuda" if torch.cuda.is_available() else "cpu"
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": I,
       "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": KV, "vocab_size": V,
       "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
       "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": 128009, "hidden_act": "silu",
       "attention_bias": False, "mlp_bias": False, "head_dim": D,
       "transformers_version": "4.40.0"}  # without it transformers 5 warns about a Mistral regex
json.dump(cfg, open(f"{out}/config.json", "w"), indent=1)
g = torch.Generator(device=dev).manual_seed(0)
def r(*s): return (torch.randn(*s, device=dev, generator=g) * 0.02).to(torch.bfloat16).cpu()
ones = lambda n: torch.ones(n, dtype=torch.bfloat16)
shard, index, n, total_bytes = {}, {}, 0, 0
def flush():
    global shard, n
    if shard:
        n += 1; fn = f"model-{n:05d}.safetensors"; save_file(shard, f"{out}/{fn}", metadata={"format": "pt"})
        index.update(dict.fromkeys(shard, fn)); shard = {}
def put(k, t):
    global total_bytes
    shard[k] = t; total_bytes += t.numel() * t.element_size()
    if sum(x.numel() for x in shard.values()) > 1_200_000_000: flush()
put("model.embed_tokens.weight", r(V, H))
for i in range(L):
    p = f"model.layers.{i}."
    for k, s in (("self_attn.q_proj", (NH * D, H)), ("self_attn.k_proj", (KV * D, H)), ("self_attn.v_proj", (KV * D, H)),
                 ("self_attn.o_proj", (H, NH * D)), ("mlp.gate_proj", (I, H)), ("mlp.up_proj", (I, H)), ("mlp.down_proj", (H, I))):
        put(p + k + ".weight", r(*s))
    put(p + "input_layernorm.weight", ones(H)); put(p + "post_attention_layernorm.weight", ones(H))
put("model.norm.weight", ones(H)); put("lm_head.weight", r(V, H)); flush()
json.dump({"metadata": {"total_size": total_bytes}, "weight_map": index}, open(f"{out}/model.safetensors.index.json", "w"))
print("  wrote", n, "shards")
PY
fi

if [ ! -f "$M/tokenizer.json" ] || ! { [ -f "$M/chat_template.jinja" ] || grep -q '"chat_template"' "$M/tokenizer_config.json" 2>/dev/null; }; then
  step "writing the Llama-3 Instruct tokenizer into $M"
  "$PY" scripts/make_llama3_hf_tokenizer.py "$M" --force || exit 1
fi
du -sh "$M"

if [ "${DRY_RUN:-0}" = 1 ]; then
  step "dry run: would run: $PY -m trdeploy quantize $M -o $Q --force --json ${ARGS:-}"
  exit 0
fi

step "trdeploy quantize $M -o $Q ${ARGS:-}"
# nvidia-smi's view of the peak (CUDA context and allocator cache included), beside torch's own
# max_memory_allocated that the report carries.
( while [ "$REHEARSAL" != 1 ]; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 1; done ) > "$OUTDIR/gpu_mem_mib.txt" 2>/dev/null &
SAMPLER=$!
TIME=(); [ -x /usr/bin/time ] && TIME=(/usr/bin/time -v)
t0=$(date +%s)
"${TIME[@]}" "$PY" -m trdeploy quantize "$M" -o "$Q" --force --json ${ARGS:-} > "$OUTDIR/quantize_8b.json" 2> "$OUTDIR/quantize_8b.log"
rc=$?
wall=$(( $(date +%s) - t0 ))
kill $SAMPLER 2>/dev/null; wait $SAMPLER 2>/dev/null
echo "  exit $rc after ${wall} s"
grep -E "Maximum resident set size" "$OUTDIR/quantize_8b.log" | sed 's/^\s*/  /'
echo "  nvidia-smi peak memory.used: $(sort -n "$OUTDIR/gpu_mem_mib.txt" | tail -1) MiB"
if [ $rc -ne 0 ]; then tail -30 "$OUTDIR/quantize_8b.log"; exit $rc; fi
"$PY" - "$OUTDIR/quantize_8b.json" "$wall" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); G = 1024**3
print(f"  wall {sys.argv[2]} s; report total {r['time_s']['total']} s; steps {r['time_s']}")
gib = lambda b: "n/a" if b is None else f"{b / G:.2f} GiB"
print(f"  peak GPU (torch max_memory_allocated) {gib(r['peak_memory']['gpu_bytes'])}; peak RSS {gib(r['peak_memory']['cpu_rss_bytes'])}")
print(f"  estimate: GPU {gib(r['memory_estimate']['gpu_bytes'])}, CPU {gib(r['memory_estimate']['cpu_bytes'])}")
print(f"  size {r['size_bytes']['original'] / G:.2f} GiB -> {r['size_bytes']['quantized'] / G:.2f} GiB; device {r['device']}")
print(f"  perplexity {r['perplexity']} (random weights: only finiteness means anything)")
print(f"  calibration {r['calibration']['num_samples']} x <= {r['calibration']['max_seq_len']} tokens ({r['calibration']['tokens']} tokens); verification {r['verification']}")
PY
ls -la "$Q"
"$PY" -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['quantization_config'])[:400])" "$Q/config.json"
cp "$Q/quantization_report.json" "$Q/README.md" "$OUTDIR/" 2>/dev/null
cp "$Q/config.json" "$OUTDIR/awq_config.json" 2>/dev/null
echo "done: serve with MODEL=$Q bash .device-vllm/device.sh serve awq --max-model-len 8192"
