"""`tune`: from a model, a GPU tier and a workload to a DeploymentProfile with vLLM engine arguments.

Steps (each a pure function of typed values except `context_tokens_per_word`, which reads a corpus);
`tune` runs them in this order, every check that needs no corpus first (`check_load_and_overrides`):
1. `resolve_target`: the GPU tier, the model (preset, folder, hub id) and its quantization;
2. `plan_shape`: max_model_len, given or Turkish context words x tokens per word (p95 on the model's
   tokenizer) + output, and the typical request; `plan_sla`: the latency targets (given, else the default
   interactive SLA of trdeploy.sizing.request, named in the assumptions);
3. `choose_tensor_parallel`: given, or the fewest GPUs on which vLLM starts (one max_model_len request fits);
4. engine arguments: `initial_plan` takes vLLM's own defaults for the GPU where the user gives none;
   `settle_max_num_seqs` makes max_num_seqs admit the SLA capacity (`sla_capacity`: the highest per-replica
   concurrency at which the SLA holds, bounded only by the KV cache) and the planned load;
5. predictions: `plan_traffic` sets the per-replica concurrency and the replicas for the traffic target;
   `assess` runs the memory accounting (trdeploy.sizing.memory) and the latency model
   (trdeploy.sizing.latency) at that concurrency: the SLA, the highest concurrency at which it holds and
   the capacity plan (replicas min/max); start-up time comes from trdeploy.sizing.startup;
6. `build_profile`: the DeploymentProfile.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from trdeploy.deployment import SLA, CalibrationRef, CapacityPlan, DeploymentProfile, EngineArgs, GpuInfo, ModelInfo, Prediction, Workload
from trdeploy.errors import TrdeployError
from trdeploy.sizing.architectures import ResolvedModel, resolve_model
from trdeploy.sizing.batching import Engine, Load, Mix
from trdeploy.sizing.calibration import Calibration, resolve
from trdeploy.sizing.gpus import CUDA_MIN_DRIVER, GiB, GpuSpec, cuda_for_driver, driver_tuple, get_gpu
from trdeploy.sizing.latency import LatencyParams, LatencyPrediction, predict_latency, step_model
from trdeploy.sizing.memory import (
    CUDA_GRAPH_GIB,
    KV_BLOCK_SIZE,
    NON_TORCH_TP_EXTRA_GIB,
    KvCachePrediction,
    _quant_for,
    cdiv,
    check_tp,
    cuda_context_gib,
    embedding_bytes,
    kv_bytes_per_token,
    max_gpu_memory_utilization,
    predict_kv_cache,
    valid_tp_sizes,
    weights_breakdown,
)
from trdeploy.sizing.request import (
    DEFAULT_CONCURRENCY,
    DEFAULT_CONTEXT_WORDS,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_OUTPUT_TOKENS,
    DEFAULT_PROMPT_TOKENS,
    DEFAULT_SLA_TPOT_MS,
    DEFAULT_SLA_TTFT_P95_MS,
    TuneRequest,
)
from trdeploy.sizing.startup import DRAIN_FLOOR_S, StartupInputs, predict_startup, shutdown_timeout_s

MAX_TP = 8
MAX_MODEL_LEN_ROUNDING = 256
# The closed-loop load tune predicts at a concurrency C: C clients sending 3 x C requests (at least 100), the
# run `trdeploy calibrate` and `bench --sweep` measure; its first wave arrives at once, as in a bench run.
CLOSED_LOOP_WAVES = 3
MIN_REQUESTS = 100
# Arrivals at a request rate: about two minutes of them (400 to 2,000 requests), seed 0.
POISSON_SECONDS = 120.0
POISSON_REQUESTS = (400, 2000)


def closed_loop_requests(concurrency: int) -> int:
    return max(CLOSED_LOOP_WAVES * concurrency, MIN_REQUESTS)


def poisson_requests(rate: float) -> int:
    return int(min(POISSON_REQUESTS[1], max(POISSON_REQUESTS[0], round(rate * POISSON_SECONDS))))


@dataclass
class TuneResult:
    profile: DeploymentProfile
    kv: KvCachePrediction
    latency: LatencyPrediction
    model: ResolvedModel
    gpu: GpuSpec
    warnings: list[str] = field(default_factory=list)

    @property
    def serve_command(self) -> list[str]:
        return self.profile.engine_args.serve_command()

    def as_json(self) -> dict[str, Any]:
        data = self.profile.model_dump(mode="json")
        data["serve_command"] = " ".join(self.serve_command)
        data["warnings"] = list(self.warnings)
        return data


# ---------------------------------------------------------------------------------------------
# Context words -> tokens


def context_tokens_per_word(tokenizer_spec: str, corpus: str | None, percentile: float) -> tuple[float, str]:
    """Tokens per Turkish word at `percentile` (per document) on the model's tokenizer: the embedded
    parallel corpus's Turkish side, or the user's corpus. Returns (value, where it came from)."""
    from trdeploy.text.inflation import tokens_per_word
    from trdeploy.text.tokenizers import load_tokenizer

    tok = load_tokenizer(tokenizer_spec)
    if corpus:
        from trdeploy.text.corpora import iter_documents, open_corpus

        texts = list(iter_documents(open_corpus(corpus, limit=50_000)))
        source = f"{corpus} ({len(texts)} documents)"
    else:
        from trdeploy.text.embedded import embedded_pairs

        texts = [p.tr for p in embedded_pairs()]
        source = f"the embedded Turkish corpus ({len(texts)} documents)"
    value = tokens_per_word(tok, texts, percentile)
    return float(value), f"p{percentile:g} tokens per word of {source} on the {tokenizer_spec} tokenizer"


def round_up(x: int, to: int) -> int:
    return cdiv(x, to) * to


# ---------------------------------------------------------------------------------------------
# Planning helpers


@dataclass(frozen=True)
class _Plan:
    tp: int  # GPUs per replica (the memory model splits weights and KV heads over all of them)
    quantization: str
    kv_cache_dtype: str
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    pp: int = 1  # pipeline stages: tensor_parallel_size is tp // pp (see parallel_layout)


def _predict(model: ResolvedModel, gpu: GpuSpec, plan: _Plan, compile_cache: str) -> KvCachePrediction:
    return predict_kv_cache(
        model,
        gpu,
        tp=plan.tp,
        max_model_len=plan.max_model_len,
        max_num_seqs=plan.max_num_seqs,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        gpu_memory_utilization=plan.gpu_memory_utilization,
        kv_cache_dtype=plan.kv_cache_dtype,
        quantization=plan.quantization,  # type: ignore[arg-type]
        compile_cache=compile_cache,  # type: ignore[arg-type]
    )


def _fit_line(kv: KvCachePrediction) -> str:
    return f"{kv.kv_cache_tokens:,} KV tokens/GPU, weights {kv.weights_gib:.1f} GiB/GPU"


def _what_would_fit(model: ResolvedModel, gpu: GpuSpec, plan: _Plan, compile_cache: str, gpus_fixed: bool) -> list[str]:
    """Concrete alternatives that make vLLM start, cheapest first within each kind of change, with numbers."""
    from trdeploy.sizing.gpus import GPUS

    can_awq = plan.quantization == "none" and model.quant is None
    quants = [plan.quantization] + (["awq"] if can_awq else [])
    kvs = [plan.kv_cache_dtype] + (["fp8"] if plan.kv_cache_dtype == "auto" else [])
    tps = [t for t in valid_tp_sizes(model.arch, MAX_TP) if t >= plan.tp]
    fitting: list[tuple[GpuSpec, _Plan, KvCachePrediction]] = []
    for tier in GPUS:
        g = gpu if tier == gpu.tier else resolve(tier).gpu  # each tier with its calibrated memory
        if g.cuda_total_bytes < gpu.cuda_total_bytes and g is not gpu:
            continue
        for q in quants:
            for kvd in kvs:
                for tp in tps:
                    p = replace(plan, tp=tp, quantization=q, kv_cache_dtype=kvd)
                    try:
                        kv = _predict(model, g, p, compile_cache)
                    except TrdeployError:
                        continue
                    if kv.fits:
                        fitting.append((g, p, kv))
                        break  # the fewest GPUs for this tier/quant/kv

    def flags(g: GpuSpec, p: _Plan) -> str:
        parts = []
        if g is not gpu:
            parts.append(f"--gpu {g.tier}")
        if p.quantization != plan.quantization:
            parts.append(f"--quantization {p.quantization}")
        if p.kv_cache_dtype != plan.kv_cache_dtype:
            parts.append(f"--kv-cache-dtype {p.kv_cache_dtype}")
        if p.tp != plan.tp:
            parts.append(f"--gpus {p.tp}")
        return " ".join(parts)

    def cost(item) -> tuple:
        g, p, kv = item
        return (p.tp * g.hourly_usd, p.quantization != plan.quantization, p.kv_cache_dtype != plan.kv_cache_dtype, -kv.kv_cache_tokens)

    def changes(item) -> int:
        g, p, _ = item
        return (g is not gpu) + (p.quantization != plan.quantization) + (p.kv_cache_dtype != plan.kv_cache_dtype) + (p.tp != plan.tp)

    same = sorted((it for it in fitting if it[0] is gpu and it[1].tp == plan.tp), key=lambda it: (changes(it), cost(it)))
    chosen = [it for it in same if changes(it) == 1] or same[:1]
    for keep in (lambda g, p: g is gpu and p.tp > plan.tp, lambda g, p: g is not gpu):
        chosen += sorted((it for it in fitting if keep(it[0], it[1])), key=lambda it: (cost(it), changes(it)))[:1]
    options: list[str] = [f"{flags(g, p)} ({_fit_line(kv)}, ${p.tp * g.hourly_usd:.2f}/h)" for g, p, kv in chosen]
    kv = _predict(model, gpu, plan, compile_cache)
    if kv.num_blocks >= 1 and kv.available_bytes > 0:
        longest = (kv.num_blocks * KV_BLOCK_SIZE) // MAX_MODEL_LEN_ROUNDING * MAX_MODEL_LEN_ROUNDING
        if longest >= MAX_MODEL_LEN_ROUNDING:
            options.append(f"--max-model-len {longest} (a shorter context)")
    return options


def _check_utilization(util: float, gpu: GpuSpec, tp: int) -> None:
    """vLLM refuses to start when the memory it is asked for is not free once the context is up."""
    top = max_gpu_memory_utilization(gpu, tp)
    if util > top:
        where = f"each of {tp} {gpu.tier} GPUs" if tp > 1 else f"a {gpu.tier}"
        raise TrdeployError(
            f"--gpu-memory-utilization {util} asks for more than is free on {where} after the CUDA context "
            f"(at most {top:.3f}); vLLM would refuse to start.",
            hint="Use 0.9 (vLLM's default) or a little more.",
        )


def _not_fit_error(model: ResolvedModel, gpu: GpuSpec, plan: _Plan, kv: KvCachePrediction, compile_cache: str, gpus_fixed: bool) -> TrdeployError:
    what = f"{model.arch.name} ({plan.quantization if plan.quantization != 'none' else model.arch.torch_dtype})"
    where = f"{plan.tp}x {gpu.tier}" if plan.tp > 1 else f"one {gpu.tier}"
    budget = kv.requested_bytes / GiB
    if kv.available_bytes <= 0:
        why = (
            f"weights {kv.weights_gib:.1f} GiB + activations {kv.activation_gib:.1f} GiB + other {kv.non_torch_gib:.2f} GiB "
            f"per GPU exceed vLLM's budget of {budget:.1f} GiB (gpu_memory_utilization {plan.gpu_memory_utilization:.2f})"
        )
    else:
        need = cdiv(plan.max_model_len, KV_BLOCK_SIZE) * kv.page_size_bytes * kv.num_layers / GiB
        why = (
            f"one {plan.max_model_len}-token request needs {need:.2f} GiB of KV cache but only "
            f"{kv.available_gib:.2f} GiB is left ({kv.kv_cache_tokens:,} tokens)"
        )
    options = _what_would_fit(model, gpu, plan, compile_cache, gpus_fixed)
    nothing = f"Nothing in the catalog fits it, even as AWQ with fp8 KV cache on {MAX_TP} GPUs of the largest tier; use a smaller model."
    hint = ("What would make it fit: " + "; ".join(options) + ".") if options else nothing
    return TrdeployError(f"{what} does not fit {where}: {why}.", hint=hint)


def _sla_checker(sla: SLA) -> Callable[[LatencyPrediction], bool] | None:
    if sla.ttft_p95_ms is None and sla.e2e_p95_ms is None and sla.tpot_ms is None:
        return None

    def ok(lat: LatencyPrediction) -> bool:
        return (
            (sla.ttft_p95_ms is None or lat.ttft_p95_ms <= sla.ttft_p95_ms)
            and (sla.e2e_p95_ms is None or lat.e2e_p95_ms <= sla.e2e_p95_ms)
            and (sla.tpot_ms is None or lat.tpot_p50_ms <= sla.tpot_ms)
        )

    return ok


def _highest(pred: Callable[[int], bool], upper: int) -> int:
    """Largest c in [1, upper] with pred(c) true, assuming pred holds below some threshold; 0 if none."""
    if upper < 1 or not pred(1):
        return 0
    lo, hi = 1, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if pred(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------------------------------------
# The steps (pure functions; `tune` at the end runs them in order)

TokensPerWordFn = Callable[[str, "str | None", float], tuple[float, str]]


@dataclass(frozen=True)
class Target:
    """Step 1: what runs where."""

    gpu: GpuSpec  # with the CUDA-visible memory of its calibration
    model: ResolvedModel
    quantization: str  # none | awq | fp8
    params: LatencyParams = field(default_factory=lambda: resolve("h100").params)
    calibration: CalibrationRef | None = None


@dataclass(frozen=True)
class Shape:
    """Step 2: the request sizes and the context they need."""

    max_model_len: int
    prompt_tokens: int
    output_tokens: int
    context_words: int | None  # None when --max-model-len was given
    tokens_per_word: float | None
    assumptions: tuple[str, ...]

    @property
    def typical(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(frozen=True)
class Traffic:
    """The planned load per replica and the number of replicas."""

    per_replica: int
    replicas: int
    peak_rps: float | None
    assumptions: tuple[str, ...]
    total_concurrency: int | None = None  # with --concurrency (or its default): requests in flight at peak
    peak_factor: float = 3.0
    per_replica_rate: float | None = None  # with an arrival rate: each replica's share (requests/s), Poisson


@dataclass(frozen=True)
class Outcome:
    """Step 5: the latency at the planned load and what it means for the SLA."""

    latency: LatencyPrediction
    kv_capacity: int  # typical requests the KV cache holds at once
    sla_met: bool | None
    sla_max: int | None  # highest per-replica concurrency meeting the SLA that max_num_seqs admits
    warnings: tuple[str, ...]
    sla_capacity: int | None = None  # the same, bounded only by the KV cache
    capacity: CapacityPlan | None = None


def _resolve_quant(model: ResolvedModel, requested: str | None, gpu: GpuSpec, warnings: list[str]) -> str:
    detected = model.quant.kind if model.quant else None
    if requested is None:
        return detected or "none"
    if detected and requested != detected:
        raise TrdeployError(
            f"{model.id} is already a {model.quant.method} ({detected}) checkpoint; --quantization {requested} contradicts it.",  # type: ignore[union-attr]
            hint=f"Leave --quantization out (or pass {detected}).",
        )
    if requested == "fp8" and not gpu.fp8_compute:
        warnings.append(
            f"{gpu.tier} has no fp8 tensor cores: vLLM runs --quantization fp8 there weight-only (FP8 Marlin), "
            "which halves weight memory but computes in 16 bit."
        )
    return requested


def resolve_target(req: TuneRequest, warnings: list[str]) -> Target:
    """Step 1: the GPU tier (with its calibration: --calibration, else the shipped one, else the H100's
    parameters on its datasheet figures), the model (preset, folder, hub id) and its quantization."""
    gpu = get_gpu(req.gpu)
    cal = Calibration.load(req.calibration) if req.calibration is not None else None
    if cal is not None and cal.gpu.tier != gpu.tier:
        raise TrdeployError(
            f"{req.calibration} was measured on {cal.gpu.tier}, not {gpu.tier}.",
            hint=f"Use --gpu {cal.gpu.tier} with it, or calibrate {gpu.tier} (`trdeploy calibrate`).",
        )
    tier = resolve(gpu.tier, cal, source=str(req.calibration) if req.calibration is not None else None)
    model = resolve_model(req.model)
    quant = _resolve_quant(model, req.quantization, gpu, warnings)
    if cal is not None:
        kinds = {"awq" if r.quantization == "awq" else "16-bit" for r in cal.runs if r.points}
        kind = "awq" if quant == "awq" else "16-bit"
        if kinds and kind not in kinds:
            warnings.append(
                f"{req.calibration} measured {', '.join(sorted(kinds))} weights only: the {kind} efficiencies are its starting values ({cal.prior}), not measured."
            )
    return Target(gpu=tier.gpu, model=model, quantization=quant, params=tier.params, calibration=tier.ref)


def check_load_and_overrides(req: TuneRequest, gpu: GpuSpec) -> float:
    """The cheap checks across options (TuneRequest checks each alone), before any corpus is read.
    Returns gpu_memory_utilization."""
    loads = [flag for flag, v in (("--concurrency", req.concurrency), ("--requests-per-day", req.requests_per_day), ("--request-rate", req.request_rate)) if v is not None]
    if len(loads) > 1:
        raise TrdeployError(
            f"Pass one of --concurrency, --requests-per-day and --request-rate, not {' and '.join(loads)}.",
            hint="--concurrency is requests in flight (a closed loop); the other two are arrival rates (Poisson).",
        )
    util = req.gpu_memory_utilization if req.gpu_memory_utilization is not None else DEFAULT_GPU_MEMORY_UTILIZATION
    _check_utilization(util, gpu, req.gpus or 1)
    node_facts(req, gpu, req.gpus or 1)  # --driver/--cuda: refused before any work
    mbt_user = req.max_num_batched_tokens
    seqs_user = req.max_num_seqs
    if mbt_user is not None and seqs_user is not None and mbt_user < seqs_user:
        raise TrdeployError(
            f"--max-num-batched-tokens {mbt_user} is below --max-num-seqs {seqs_user}; vLLM rejects that.",
            hint="Raise --max-num-batched-tokens or lower --max-num-seqs.",
        )
    return util


def plan_shape(req: TuneRequest, model: ResolvedModel, tokens_per_word_fn: TokensPerWordFn) -> Shape:
    """Step 2: max_model_len (given, or Turkish context words x tokens per word + output) and the typical request."""
    arch = model.arch
    assumptions: list[str] = []
    output_tokens = req.output_tokens if req.output_tokens is not None else DEFAULT_OUTPUT_TOKENS
    tpw: float | None = None
    context_words = req.context_words
    if req.max_model_len is not None:
        if context_words is not None:
            raise TrdeployError("Pass either --context-words or --max-model-len, not both.", hint="--max-model-len is in tokens; --context-words is converted.")
        max_model_len = int(req.max_model_len)
    else:
        context_words = context_words if context_words is not None else DEFAULT_CONTEXT_WORDS
        if req.tokens_per_word is not None:
            tpw = float(req.tokens_per_word)
            assumptions.append(f"Turkish tokens per word {tpw:g} (given).")
        else:
            tpw, tpw_source = tokens_per_word_fn(model.tokenizer, req.corpus, req.percentile)
            assumptions.append(f"Turkish tokens per word {tpw:.3f}: {tpw_source}.")
        context_tokens = math.ceil(context_words * tpw)
        max_model_len = round_up(context_tokens + output_tokens, MAX_MODEL_LEN_ROUNDING)
        assumptions.append(
            f"max_model_len {max_model_len} = {context_words} words x {tpw:.3f} tokens/word ({context_tokens} tokens) "
            f"+ {output_tokens} output tokens, rounded up to {MAX_MODEL_LEN_ROUNDING}."
        )
    if max_model_len > arch.max_position_embeddings:
        raise TrdeployError(
            f"max_model_len {max_model_len} exceeds {arch.name}'s {arch.max_position_embeddings} positions.",
            hint="Ask for less context, or use a Llama-3.1+ model (131,072 positions).",
        )
    prompt_tokens = req.prompt_tokens if req.prompt_tokens is not None else min(DEFAULT_PROMPT_TOKENS, max(1, max_model_len - output_tokens))
    if prompt_tokens + output_tokens > max_model_len:
        raise TrdeployError(
            f"A typical request ({prompt_tokens} prompt + {output_tokens} output tokens) does not fit max_model_len {max_model_len}.",
            hint="Raise --max-model-len / --context-words or lower --prompt-tokens / --output-tokens.",
        )
    return Shape(
        max_model_len=max_model_len,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        context_words=context_words,
        tokens_per_word=tpw,
        assumptions=tuple(assumptions),
    )


def sla_is_default(req: TuneRequest) -> bool:
    return req.ttft_p95_ms is None and req.e2e_p95_ms is None and req.tpot_ms is None


def plan_sla(req: TuneRequest) -> SLA:
    """The latency targets given, or (none given) the default interactive SLA."""
    if sla_is_default(req):
        return SLA(ttft_p95_ms=DEFAULT_SLA_TTFT_P95_MS, tpot_ms=DEFAULT_SLA_TPOT_MS)
    return SLA(ttft_p95_ms=req.ttft_p95_ms, e2e_p95_ms=req.e2e_p95_ms, tpot_ms=req.tpot_ms)


def _sla_note(req: TuneRequest, sla: SLA) -> tuple[str, ...]:
    if not sla_is_default(req):
        return ()
    return (
        f"SLA: none given, so the default interactive SLA is checked: p95 TTFT {sla.ttft_p95_ms:g} ms and median TPOT "
        f"{sla.tpot_ms:g} ms (set --sla-ttft-p95-ms, --sla-e2e-p95-ms or --sla-tpot-ms).",
    )


def sla_capacity(latency_at: Callable[[int], LatencyPrediction], sla: SLA, kv_capacity: int) -> int | None:
    """The highest per-replica concurrency at which the SLA holds, whatever max_num_seqs is: bounded only by
    the typical requests the KV cache holds (beyond it vLLM preempts, which the latency model does not
    predict). 0: not even one request; None: no SLA."""
    ok = _sla_checker(sla)
    if ok is None:
        return None
    return _highest(lambda c: ok(latency_at(c)), kv_capacity)


def initial_plan(req: TuneRequest, target: Target, max_model_len: int, util: float) -> _Plan:
    """Step 4a: vLLM's own defaults for the GPU where the user gives none (tensor parallelism still 1 or given)."""
    gpu = target.gpu
    mbt_user = req.max_num_batched_tokens
    mbt = mbt_user or gpu.vllm_default_max_num_batched_tokens
    seqs0 = req.max_num_seqs or min(gpu.vllm_default_max_num_seqs, mbt)
    mbt = max(mbt, seqs0) if mbt_user is None else mbt
    return _Plan(
        tp=req.gpus or 1,
        quantization=target.quantization,
        kv_cache_dtype=req.kv_cache_dtype,
        max_model_len=max_model_len,
        max_num_seqs=seqs0,
        max_num_batched_tokens=mbt,
        gpu_memory_utilization=util,
    )


def choose_tensor_parallel(target: Target, base_plan: _Plan, gpus: int | None, compile_cache: str) -> tuple[_Plan, KvCachePrediction]:
    """Step 3: the given tensor parallelism, or the fewest GPUs on which vLLM starts."""
    model, gpu = target.model, target.gpu
    if gpus is not None:
        check_tp(model.arch, gpus)
        kv = _predict(model, gpu, base_plan, compile_cache)
        if not kv.fits:
            raise _not_fit_error(model, gpu, base_plan, kv, compile_cache, gpus_fixed=True)
        return base_plan, kv
    for tp in valid_tp_sizes(model.arch, MAX_TP):
        candidate = replace(base_plan, tp=tp)
        pred = _predict(model, gpu, candidate, compile_cache)
        if pred.fits:
            _check_utilization(base_plan.gpu_memory_utilization, gpu, tp)
            return candidate, pred
    raise _not_fit_error(model, gpu, base_plan, _predict(model, gpu, base_plan, compile_cache), compile_cache, gpus_fixed=False)


def parallel_layout(gpus: int, gpus_per_node: int) -> tuple[int, int]:
    """(tensor_parallel_size, pipeline_parallel_size) of a replica: tensor parallelism within one node; a replica
    larger than a node takes vLLM's multi-node layout (its LeaderWorkerSet guide): TP = GPUs per node, PP = nodes,
    so the all-reduce of every layer stays on the node's interconnect and only activations cross the network."""
    if gpus <= gpus_per_node:
        return gpus, 1
    if gpus % gpus_per_node:
        raise TrdeployError(
            f"{gpus} GPUs per replica do not fill whole nodes of {gpus_per_node} GPUs (tensor parallelism per node x pipeline stages across nodes).",
            hint=f"Pass --gpus as a multiple of {gpus_per_node}, or --gpus-per-node to match your nodes.",
        )
    return gpus_per_node, gpus // gpus_per_node


def _step(target: Target, plan: _Plan, kv: KvCachePrediction):
    tp, parts, kv_token = plan.tp, kv.weights_parts, kv.kv_bytes_per_token
    if plan.pp > 1:
        # A token passes the pipeline's stages one after another: each decode step reads every layer once, spread over
        # the tp GPUs of a stage, as one tp-way engine running the whole model would.
        arch = target.model.arch
        tp = plan.tp // plan.pp
        parts = weights_breakdown(arch, target.gpu, tp=tp, quant=_quant_for(target.model, plan.quantization), kv_cache_dtype=plan.kv_cache_dtype)
        kv_token = kv_bytes_per_token(arch, plan.kv_cache_dtype, tp)
    return step_model(
        target.model.arch, target.gpu, tp=tp, weights_parts=parts, kv_bytes_per_token=kv_token,
        quantization=plan.quantization, params=target.params,
    )  # fmt: skip


def _latency_fn(target: Target, plan: _Plan, kv: KvCachePrediction, shape: Shape, *, admit_all: bool = True) -> Callable[[int], LatencyPrediction]:
    """Predicted latency per replica of a closed loop at a concurrency, for this plan. `admit_all`: as if
    max_num_seqs admitted every client (the SLA capacity, which tune then sizes max_num_seqs for)."""
    step = _step(target, plan, kv)
    mix = Mix(shape.prompt_tokens, shape.output_tokens)
    capacity = kv.num_blocks * KV_BLOCK_SIZE

    @cache
    def latency_at(c: int) -> LatencyPrediction:
        seqs = max(plan.max_num_seqs, c) if admit_all else plan.max_num_seqs
        engine = Engine(max_num_seqs=seqs, max_num_batched_tokens=max(plan.max_num_batched_tokens, seqs), kv_capacity_tokens=capacity)
        return predict_latency(step, engine, mix, Load.closed(c, closed_loop_requests(c)))

    return latency_at


def _rate_latency_fn(target: Target, plan: _Plan, kv: KvCachePrediction, shape: Shape) -> Callable[[float], LatencyPrediction]:
    """Predicted latency per replica of Poisson arrivals at a rate (requests/s), for this plan."""
    step = _step(target, plan, kv)
    mix = Mix(shape.prompt_tokens, shape.output_tokens)
    engine = Engine(max_num_seqs=plan.max_num_seqs, max_num_batched_tokens=plan.max_num_batched_tokens, kv_capacity_tokens=kv.num_blocks * KV_BLOCK_SIZE)

    @cache
    def latency_at(rate: float) -> LatencyPrediction:
        return predict_latency(step, engine, mix, Load.poisson(rate, poisson_requests(rate)))

    return latency_at


def _kv_capacity(kv: KvCachePrediction, shape: Shape) -> int:
    return max(1, int(kv.concurrency_for(shape.typical)))


def plan_traffic(
    req: TuneRequest,
    latency_at: Callable[[int], LatencyPrediction],
    kv_capacity: int,
    sla: SLA,
    rate_latency_at: Callable[[float], LatencyPrediction] | None = None,
) -> Traffic:
    """Step 5a: the per-replica concurrency we plan up to (the KV cache, max_num_seqs, the SLA) and the replicas
    for the traffic target: --concurrency (closed loop), or an arrival rate (--requests-per-day, --request-rate):
    replicas for the rate at the closed loop's SLA capacity, then more while Poisson arrivals at each replica's
    share of the rate (burstier than a closed loop) break the SLA."""
    ok = _sla_checker(sla)
    seqs_user = req.max_num_seqs
    cap = min(kv_capacity, seqs_user) if seqs_user else kv_capacity
    sla_max = _highest(lambda c: ok(latency_at(c)), cap) if ok else None
    limit = sla_max if sla_max else cap
    if req.requests_per_day is not None or req.request_rate is not None:
        peak_rps = req.request_rate if req.request_rate is not None else req.requests_per_day / 86400.0 * req.peak_factor  # type: ignore[operator]
        per_replica_max = latency_at(limit).requests_per_s
        replicas = max(1, math.ceil(peak_rps / per_replica_max - 1e-9))
        if ok and rate_latency_at is not None:
            for _ in range(4 * replicas + 8):
                if ok(rate_latency_at(peak_rps / replicas)):
                    break
                replicas += 1
        need = peak_rps / replicas
        per_replica = _highest(lambda c: latency_at(c).requests_per_s < need, limit) + 1
        per_replica = min(max(1, per_replica), limit)
        given = (
            f"{req.request_rate:g} requests/s at peak (--request-rate)"
            if req.request_rate is not None
            else f"{req.requests_per_day:g} requests/day x peak factor {req.peak_factor:g} = {peak_rps:.3f} requests/s at peak"
        )
        note = (
            f"Traffic: {given}, served by {replicas} replica(s): Poisson arrivals at {need:.3f} requests/s each, about {per_replica} "
            "in flight (Little's law on the predicted end-to-end latency)."
        )
        return Traffic(per_replica=per_replica, replicas=replicas, peak_rps=peak_rps, assumptions=(note,), peak_factor=req.peak_factor, per_replica_rate=need)
    total = req.concurrency if req.concurrency is not None else DEFAULT_CONCURRENCY
    notes: tuple[str, ...] = ()
    if req.concurrency is None:
        notes = (f"Planned concurrency {DEFAULT_CONCURRENCY} requests in flight (default; set --concurrency or --requests-per-day).",)
    replicas = max(1, math.ceil(total / limit))
    return Traffic(
        per_replica=cdiv(total, replicas), replicas=replicas, peak_rps=None, assumptions=notes, total_concurrency=total, peak_factor=req.peak_factor
    )


def settle_max_num_seqs(
    req: TuneRequest,
    target: Target,
    plan: _Plan,
    kv: KvCachePrediction,
    per_replica: int,
    kv_capacity: int,
    sla_capacity: int | None = None,
) -> tuple[_Plan, KvCachePrediction]:
    """Step 4b (unless --max-num-seqs is given): max_num_seqs admits the larger of the planned per-replica load
    and the SLA capacity (so a replica can take the load the autoscaler sends it), rounded up to 8 within what
    the KV cache holds at the typical request."""
    if req.max_num_seqs is not None:
        return plan, kv
    seqs0 = plan.max_num_seqs
    admit = max(per_replica, sla_capacity or 0)
    seqs = min(max(8, round_up(admit, 8)), max(8, kv_capacity // 8 * 8), max(1024, admit))
    seqs = max(seqs, admit) if admit <= kv_capacity else seqs
    mbt_user = req.max_num_batched_tokens
    if mbt_user is not None and mbt_user < seqs:
        raise TrdeployError(
            f"--max-num-batched-tokens {mbt_user} is below the max_num_seqs {seqs} tune derives for {per_replica} concurrent "
            "requests per replica; vLLM rejects that.",
            hint=f"Raise --max-num-batched-tokens to at least {seqs}, or pass --max-num-seqs.",
        )
    final_mbt = plan.max_num_batched_tokens if mbt_user is not None else max(plan.max_num_batched_tokens, seqs)
    plan = replace(plan, max_num_seqs=seqs, max_num_batched_tokens=final_mbt)
    kv = _predict(target.model, target.gpu, plan, req.compile_cache)
    if not kv.fits:  # the sampler term grew past the margin; keep the first plan's seqs
        plan = replace(plan, max_num_seqs=seqs0)
        kv = _predict(target.model, target.gpu, plan, req.compile_cache)
    return plan, kv


def assess(target: Target, plan: _Plan, kv: KvCachePrediction, shape: Shape, traffic: Traffic, sla: SLA) -> Outcome:
    """Step 5b: the latency at the planned per-replica concurrency, the SLA verdict and the highest concurrency at
    which it holds, and warnings for what vLLM will queue, preempt or run out of memory on."""
    latency_at = _latency_fn(target, plan, kv, shape)
    kv_capacity = _kv_capacity(kv, shape)
    per_replica = traffic.per_replica
    ok = _sla_checker(sla)
    warnings: list[str] = []
    if traffic.per_replica_rate is not None:
        lat = _rate_latency_fn(target, plan, kv, shape)(traffic.per_replica_rate)
    else:
        lat = _latency_fn(target, plan, kv, shape, admit_all=False)(per_replica)
    sla_met = ok(lat) if ok else None
    sla_max: int | None = None
    capacity_sla = sla_capacity(latency_at, sla, kv_capacity)
    if ok:
        sla_max = _highest(lambda c: ok(latency_at(c)), min(kv_capacity, plan.max_num_seqs))
        if capacity_sla and capacity_sla > plan.max_num_seqs:
            warnings.append(
                f"max_num_seqs {plan.max_num_seqs} admits fewer requests than the {capacity_sla} per replica at which the SLA still holds; "
                "the rest wait in vLLM's queue (leave --max-num-seqs out to let tune size it)."
            )
        if not sla_met:
            at = f"{traffic.per_replica_rate:.3f} requests/s (Poisson)" if traffic.per_replica_rate is not None else f"{per_replica} concurrent requests"
            warnings.append(
                f"The SLA does not hold at {at} per replica (predicted p95 TTFT {lat.ttft_p95_ms:.0f} ms, "
                f"median TPOT {lat.tpot_p50_ms:.1f} ms, p95 end-to-end {lat.e2e_p95_ms:.0f} ms); "
                + (f"it holds up to {sla_max} per replica." if sla_max else "it does not hold even for a single request on this configuration.")
            )
    if per_replica > plan.max_num_seqs:
        warnings.append(f"{per_replica} requests per replica exceed max_num_seqs {plan.max_num_seqs}: the rest wait in vLLM's queue.")
    if per_replica > kv_capacity:
        warnings.append(
            f"{per_replica} typical requests ({shape.typical} tokens each) need more KV cache than the {kv.kv_cache_tokens:,} tokens per GPU: "
            "vLLM will preempt and recompute requests."
        )
    if kv.headroom_bytes < 0:
        warnings.append(
            f"gpu_memory_utilization {plan.gpu_memory_utilization} leaves {(kv.cuda_total_bytes - kv.requested_bytes) / GiB:.2f} GiB outside vLLM's budget, "
            f"less than the CUDA context (~{cuda_context_gib(plan.tp)} GiB) and CUDA graphs (~{CUDA_GRAPH_GIB} GiB, not counted by vLLM 0.25): "
            "start-up may run out of memory while capturing graphs. Lower it."
        )
    capacity = plan_capacity(traffic, latency_at, sla_max or min(kv_capacity, plan.max_num_seqs))
    return Outcome(
        latency=lat, kv_capacity=kv_capacity, sla_met=sla_met, sla_max=sla_max, warnings=tuple(warnings), sla_capacity=capacity_sla, capacity=capacity
    )


def plan_capacity(traffic: Traffic, latency_at: Callable[[int], LatencyPrediction], per_replica_max: int) -> CapacityPlan:
    """Step 5c: replicas for the traffic with each replica loaded up to `per_replica_max` (the SLA capacity this
    configuration admits): the peak needs `traffic.replicas`; the average load (peak / peak_factor) the minimum."""
    per = max(1, per_replica_max)
    rps = latency_at(per).requests_per_s
    high = max(1, traffic.replicas)
    if traffic.peak_rps is not None:
        low = max(1, math.ceil(traffic.peak_rps / traffic.peak_factor / rps - 1e-9))
        basis = (
            f"peak {traffic.peak_rps:.3f} requests/s over {rps:.3f} requests/s per replica at {per} in flight (Little's law on the "
            f"predicted end-to-end latency); minimum for the average rate (peak / {traffic.peak_factor:g})"
        )
    else:
        total = traffic.total_concurrency or traffic.per_replica * high
        low = max(1, math.ceil(total / traffic.peak_factor / per - 1e-9))
        basis = f"{total} requests in flight at peak over {per} per replica; minimum for the average load (peak / peak factor {traffic.peak_factor:g})"
    return CapacityPlan(
        per_replica_concurrency=per,
        requests_per_s_per_replica=round(rps, 4),
        replicas_min=min(low, high),
        replicas_max=high,
        peak_concurrency=float(traffic.total_concurrency) if traffic.total_concurrency is not None else round(traffic.peak_rps * latency_at(per).e2e_p95_ms / 1e3, 2),  # type: ignore[operator]
        peak_requests_per_s=round(traffic.peak_rps, 4) if traffic.peak_rps is not None else None,
        basis=basis,
    )


def _served_model(model: ResolvedModel, quantization: str) -> tuple[str, str | None]:
    """The `vllm serve` model argument, and a note when it is a checkpoint still to be made."""
    if quantization == "awq" and model.quant is None:
        base = Path(model.id).name if model.source == "local" else model.id.split("/")[-1].split("@")[0]
        path = f"./{base}-awq"
        return path, f"engine_args.model {path} is the AWQ checkpoint `trdeploy quantize {model.id} -o {path}` writes; point it at yours."
    return model.id, None


def build_profile(
    req: TuneRequest, target: Target, plan: _Plan, kv: KvCachePrediction, shape: Shape, sla: SLA, traffic: Traffic, outcome: Outcome
) -> DeploymentProfile:
    """Step 6: the DeploymentProfile (engine arguments, workload, SLA, predictions, assumptions)."""
    model, gpu, arch = target.model, target.gpu, target.model.arch
    lat, replicas, per_replica = outcome.latency, traffic.replicas, traffic.per_replica
    served, model_note = _served_model(model, plan.quantization)
    engine = EngineArgs(
        model=served,
        served_model_name=req.served_model_name or model.id,
        tensor_parallel_size=plan.tp // plan.pp,
        pipeline_parallel_size=plan.pp,
        max_model_len=plan.max_model_len,
        max_num_seqs=plan.max_num_seqs,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        gpu_memory_utilization=plan.gpu_memory_utilization,
        kv_cache_dtype=plan.kv_cache_dtype,  # type: ignore[arg-type]
        quantization="fp8" if plan.quantization == "fp8" and (model.quant is None) else None,
        shutdown_timeout=shutdown_timeout_s(lat.e2e_p95_ms),
    )
    full_kv_per_token = kv_bytes_per_token(arch, plan.kv_cache_dtype, 1)
    hourly = replicas * plan.tp * gpu.hourly_usd
    prediction = Prediction(
        weights_gib=round(kv.weights_gib, 3),
        kv_cache_gib=round(kv.kv_cache_gib, 3),
        kv_cache_tokens=kv.kv_cache_tokens,
        kv_bytes_per_token=full_kv_per_token,
        max_concurrency={
            "at_max_model_len": round(kv.max_concurrency, 2),
            "at_typical_request": round(kv.concurrency_for(shape.typical), 2),
        },
        tpot_ms=round(lat.tpot_p50_ms, 2),
        ttft_ms=round(lat.ttft_p95_ms, 1),
        e2e_ms=round(lat.e2e_p95_ms, 1),
        output_tokens_per_s=round(lat.output_tokens_per_s * replicas, 1),
        replicas=replicas,
        hourly_cost_usd=round(hourly, 2),
        sla_met=outcome.sla_met,
        sla_max_concurrency=outcome.sla_max,
        sla_capacity_per_replica=outcome.sla_capacity,
        capacity=outcome.capacity,
        calibration=target.calibration,
        startup=predict_startup(
            StartupInputs(
                weights_bytes=kv.weights_gib * GiB * plan.tp, num_layers=arch.num_hidden_layers, gpu_tier=gpu.tier, tp=plan.tp, read_gb_per_s=req.weights_read_gbps
            )
        ),
        details={
            "per_gpu": {
                "cuda_total_gib": round(kv.cuda_total_bytes / GiB, 3),
                "requested_gib": round(kv.requested_bytes / GiB, 3),
                "weights_gib": round(kv.weights_gib, 3),
                "activation_peak_gib": round(kv.activation_gib, 3),
                "non_torch_gib": round(kv.non_torch_gib, 3),
                "available_kv_cache_gib": round(kv.available_gib, 3),
                "kv_cache_gib": round(kv.kv_cache_gib, 3),
                "kv_cache_tokens": kv.kv_cache_tokens,
                "num_gpu_blocks": kv.num_blocks,
                "kv_heads": kv.kv_heads_per_rank,
                "kv_bytes_per_token": kv.kv_bytes_per_token,
                "headroom_after_cuda_graphs_gib": round(kv.headroom_bytes / GiB, 2),
            },
            "weights_parts_gib": {k: round(v / GiB, 4) for k, v in kv.weights_parts.items()},
            "activation_parts_gib": {k: round(v / GiB, 4) for k, v in kv.activation_parts.items()},
            "latency_per_replica": lat.as_dict(),
            "concurrency_per_replica": per_replica,
            "kv_capacity_typical_requests": outcome.kv_capacity,
            "sla_source": "default" if sla_is_default(req) else "given",
            "peak_requests_per_s": round(traffic.peak_rps, 4) if traffic.peak_rps is not None else None,
            "compile_cache": req.compile_cache,
            "hourly_usd_per_gpu": gpu.hourly_usd,
            "checkpoint_bytes": model.checkpoint_bytes,
        },
    )
    assumptions = [
        *shape.assumptions, *_sla_note(req, sla), *traffic.assumptions, *_standard_assumptions(gpu, plan, req.compile_cache, target.calibration, lat),
        *_pipeline_note(arch, plan),
        f"Drain: vLLM --shutdown-timeout {engine.shutdown_timeout} s (2 x the predicted p95 end-to-end {lat.e2e_p95_ms / 1000:.1f} s, "
        f"at least {DRAIN_FLOOR_S} s): on SIGTERM vLLM refuses new requests and finishes those in flight for up to that long.",
    ]
    if model_note:
        assumptions.append(model_note)
    name = req.name or default_name(arch.name, plan.quantization, gpu.tier, plan.tp)
    return DeploymentProfile(
        name=name,
        model=ModelInfo(
            id=model.id,
            architecture=arch.architecture,
            num_hidden_layers=arch.num_hidden_layers,
            hidden_size=arch.hidden_size,
            intermediate_size=arch.intermediate_size,
            num_attention_heads=arch.num_attention_heads,
            num_key_value_heads=arch.num_key_value_heads,
            head_dim=arch.head_dim,
            vocab_size=arch.vocab_size,
            max_position_embeddings=arch.max_position_embeddings,
            num_parameters=model.num_parameters,
            tokenizer=model.tokenizer,
            tie_word_embeddings=arch.tie_word_embeddings,
        ),
        quantization=plan.quantization,  # type: ignore[arg-type]
        gpu=node_facts(req, gpu, plan.tp),
        engine_args=engine,
        workload=Workload(
            prompt_tokens=shape.prompt_tokens,
            output_tokens=shape.output_tokens,
            # What was asked (or the stated default), never rounded: rounding to whole replicas is the capacity plan's.
            concurrency=traffic.total_concurrency,
            requests_per_day=req.requests_per_day,
            peak_factor=req.peak_factor,
            context_words=shape.context_words,
            tokens_per_word=round(shape.tokens_per_word, 4) if shape.tokens_per_word is not None else None,
        ),
        sla=sla,
        prediction=prediction,
        assumptions=assumptions,
    )


def default_name(model_name: str, quantization: str, tier: str, tp: int) -> str:
    """model-quant-tier[-xN], made a valid profile name (a hub id's or a path's other characters become '-')."""
    suffix = f"-{quantization if quantization != 'none' else 'bf16'}-{tier}" + (f"-x{tp}" if tp > 1 else "")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name.rsplit("/", 1)[-1] if "/" in model_name else model_name).strip("-._")
    return (stem[: 63 - len(suffix)].rstrip("-._") or "model") + suffix


def node_facts(req: TuneRequest, gpu: GpuSpec, count: int) -> GpuInfo:
    """The profile's `gpu` section: the tier, and the facts about its nodes that build and render-k8s read
    (GPUs per node, the driver, the CUDA build of vLLM's image that driver runs and the driver it needs)."""
    driver = req.driver or gpu.node_driver
    if req.cuda is not None:
        cuda = req.cuda
        if req.driver is not None and driver_tuple(req.driver) < driver_tuple(CUDA_MIN_DRIVER[cuda]):
            raise TrdeployError(
                f"--cuda {cuda} needs NVIDIA driver >= {CUDA_MIN_DRIVER[cuda]}, and --driver is {req.driver}.",
                hint="Leave --cuda out (tune picks the build the driver runs), or upgrade the nodes' driver.",
            )
    else:
        cuda = cuda_for_driver(driver)
    return GpuInfo(
        tier=gpu.tier,
        count=count,
        name=gpu.name,
        memory_gib=round(gpu.memory_gib, 2),
        node_labels=list(gpu.product_labels),
        hourly_usd=gpu.hourly_usd,
        gpus_per_node=req.gpus_per_node or gpu.gpus_per_node,
        driver=driver,
        driver_source="given (--driver)" if req.driver else f"assumed for {gpu.tier} nodes (pass --driver)",
        cuda=cuda,
        min_driver=CUDA_MIN_DRIVER[cuda],
    )


def tune(req: TuneRequest, *, tokens_per_word_fn: TokensPerWordFn = context_tokens_per_word) -> TuneResult:
    """The steps of the module docstring, in order; every check that needs no corpus runs before the corpus is read."""
    warnings: list[str] = []
    target = resolve_target(req, warnings)
    util = check_load_and_overrides(req, target.gpu)
    shape = plan_shape(req, target.model, tokens_per_word_fn)
    sla = plan_sla(req)
    plan, kv = choose_tensor_parallel(target, initial_plan(req, target, shape.max_model_len, util), req.gpus, req.compile_cache)
    plan = replace(plan, pp=parallel_layout(plan.tp, req.gpus_per_node or target.gpu.gpus_per_node)[1])
    latency_at = _latency_fn(target, plan, kv, shape)
    traffic = plan_traffic(req, latency_at, _kv_capacity(kv, shape), sla, _rate_latency_fn(target, replace(plan, max_num_seqs=max(plan.max_num_seqs, _kv_capacity(kv, shape))), kv, shape))
    capacity = sla_capacity(latency_at, sla, _kv_capacity(kv, shape))
    plan, kv = settle_max_num_seqs(req, target, plan, kv, traffic.per_replica, _kv_capacity(kv, shape), capacity)
    outcome = assess(target, plan, kv, shape, traffic, sla)
    warnings.extend(outcome.warnings)
    profile = build_profile(req, target, plan, kv, shape, sla, traffic, outcome)
    return TuneResult(profile=profile, kv=kv, latency=outcome.latency, model=target.model, gpu=target.gpu, warnings=warnings)


def _pipeline_note(arch, plan: _Plan) -> list[str]:
    """What the prediction of a multi-node replica (TP per node x PP across nodes) does and does not model."""
    if plan.pp == 1:
        return []
    tp = plan.tp // plan.pp
    extra_gib = (embedding_bytes(arch, tp) - embedding_bytes(arch, plan.tp)) / GiB
    return [
        f"Multi-node layout: tensor parallelism {tp} within a node x pipeline parallelism {plan.pp} across nodes (vLLM's LeaderWorkerSet "
        f"layout). Memory is predicted as {plan.tp} GPUs each holding 1/{plan.tp} of the weights and KV heads; not modelled: the first "
        f"pipeline stage holds the embedding and the last the LM head split over {tp} GPUs, not {plan.tp} (+{extra_gib:.2f} GiB on those "
        "GPUs, so vLLM's KV cache, the smallest stage's, is that much smaller), and KV heads replicated when TP x PP exceeds the KV heads. "
        f"Latency is predicted as one {tp}-GPU engine running every layer (a token passes the stages in turn); not modelled: the "
        "activations sent between nodes at each stage boundary and the overlap of micro-batches across stages, which raises throughput "
        "at high concurrency. Measure with `trdeploy bench`."
    ]


def _standard_assumptions(gpu: GpuSpec, plan: _Plan, compile_cache: str, calibration: CalibrationRef | None = None, lat: LatencyPrediction | None = None) -> list[str]:
    out = [
        "Memory follows vLLM 0.25.0's V1 accounting (model runner V2): requested = cudaMemGetInfo total x gpu_memory_utilization; "
        "KV = requested - weights - profile-run activation peak - non-torch memory, in 16-token blocks; CUDA graphs are not subtracted.",
        f"{gpu.tier}: CUDA-visible memory {gpu.cuda_total_gib:.2f} GiB ({gpu.cuda_total_source}); {gpu.bandwidth_gbs:g} GB/s; "
        f"{gpu.bf16_tflops:g} dense bf16 TFLOP/s (datasheet).",
        (
            "Predicted for the first start (cold torch.compile cache), whose compilation holds ~0.4-1 GiB more activation memory than a "
            "restart with ~/.cache/vllm kept: a warm restart gets a slightly larger KV cache."
            if compile_cache == "cold"
            else "Predicted for a restart with vLLM's torch.compile cache (~/.cache/vllm) warm; a first start gets a slightly smaller KV cache."
        ),
        "Latency: vLLM's continuous batching simulated step by step (chunked prefill within max_num_batched_tokens, max_num_seqs, the "
        "KV cache), each step's time from weights and KV bytes over bandwidth and FLOPs over compute, plus the API server's work per "
        "request and per streamed token; parameters from "
        + (calibration.basis if calibration is not None else "the H100 calibration")
        + ".",
        (
            f"Load: Poisson arrivals at {lat.request_rate:g} requests/s per replica ({lat.num_requests} requests simulated)"
            if lat is not None and lat.arrivals == "poisson"
            else f"Load: a closed loop of {lat.concurrency if lat is not None else 'C'} clients per replica sending the typical request "
            f"({closed_loop_requests(lat.concurrency) if lat is not None else '3 x C'} requests, the first wave at once, as `trdeploy bench` and "
            "`vllm bench serve --max-concurrency` send them)"
        )
        + "; TTFT and end-to-end are p95, TPOT the median, as `trdeploy bench` measures them.",
        f"Prices: {gpu.hourly_usd:.2f} USD per GPU-hour, typical on-demand list price seen 2025-06; check your provider.",
    ]
    if plan.tp > 1:
        out.append(
            f"Tensor parallelism {plan.tp // plan.pp}" + (f" x pipeline parallelism {plan.pp}" if plan.pp > 1 else "")
            + ": per-GPU weights, KV heads and activations are split as vLLM splits them; the extra memory "
            f"per GPU (NCCL and all-reduce buffers: {NON_TORCH_TP_EXTRA_GIB} GiB in vLLM's budget, {cuda_context_gib(plan.tp)} GiB of context) "
            "was measured with 2 GPUs (H100, Llama-3-8B, first start)"
            + (" and is assumed the same for more" if plan.tp > 2 else "")
            + "; all-reduce times are estimates not yet measured."
        )
    if plan.kv_cache_dtype != "auto" and gpu.architecture == "ampere":
        out.append("fp8 KV cache on Ampere: vLLM uses an attention backend that stores fp8 and dequantizes (FlashAttention 3's fp8 path is Hopper-only).")
    return [a for a in out if a]
