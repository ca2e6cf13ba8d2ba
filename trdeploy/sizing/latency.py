"""The latency model: a step law for one vLLM engine step, and the latency a load sees through it.

Step law, per tensor-parallel rank (times in ms). A step runs T tokens of S sequences: the decoding
sequences' one token each and the prefill chunks, whose tokens attend over their prompt so far:

    step = step_overhead + S x per_sequence
           + max(weights read, T x linear FLOPs / (TFLOP/s x gemm_eff) + attention FLOPs / (TFLOP/s x gemm_eff))
           + context tokens read x KV bytes / (bandwidth x kv_read_eff) + 2 all-reduces per layer

The linear layers are bound by reading their weights (16-bit at `weight_read_eff`, int4 and its group
scales at `int4_read_eff` of the datasheet bandwidth) or, in large batches, by their FLOPs; attention is its
own kernel reading each sequence's KV cache, so its time adds. Steps of pure decode run the int4 GEMMs at
`decode_gemm_factor_int4` of their prefill efficiency (small M fills Machete's tiles less well).

What a load sees (TTFT, TPOT, end-to-end, throughput at a concurrency or a request rate) comes from running
the requests through vLLM's scheduler with this step law (trdeploy.sizing.batching), adding
`request_overhead_ms` (HTTP, tokenizing, queueing outside the engine) to each request, and a random part of
mean `request_jitter_ms` (exponentially distributed: the event loops of the client and the API server, the
hand-offs between processes). Without it a lone request's TTFT would have no spread, while vLLM's has: on
the H100 sweep, one client's TTFT p95 was 16% above its p50 (43.2 against 37.2 ms), and a fit that cannot
match both settles on a fixed overhead twice the size vLLM's own timers show. The API server's work after a
request's last token (`frontend_finish_ms`) delays the requests behind it: in a closed loop every client
sends its next request as its last one ends, and on the H100 the first request of each wave reached vLLM's
engine 20-30 ms after it was sent (vLLM's timers: 22 ms between its arrival and the engine's queue at 4
clients, 3 ms at 1); a fit with this cost cut the leave-one-out TTFT errors of both H100 sweeps.

The free parameters (`LatencyParams`) are what `trdeploy calibrate` fits on a user's GPU, and what the
calibration files shipped for the H100 and H200 hold (trdeploy/data/calibrations, made by the same code from
the points in tests/data). `PRIOR` is only the starting point of a fit: typical fractions of a datasheet,
not measured on any card. A tier without a calibration uses the H100's (trdeploy.sizing.calibration).
All-reduce costs are assumptions (no multi-GPU latency was measured).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from trdeploy.sizing.architectures import Architecture
from trdeploy.sizing.batching import Engine, Load, Mix, Simulated, simulate
from trdeploy.sizing.gpus import GpuSpec

# Assumed, not measured: one all-reduce's fixed cost (vLLM's custom all-reduce inside CUDA graphs on
# NVLink; NCCL over PCIe is slower).
ALLREDUCE_LATENCY_MS_NVLINK = 0.008
ALLREDUCE_LATENCY_MS_PCIE = 0.030
# int4 GEMM efficiency is interpolated in log2(hidden size) between the 4096 and the 8192 values.
INT4_NARROW_HIDDEN, INT4_WIDE_HIDDEN = 4096, 8192


@dataclass(frozen=True)
class LatencyParams:
    """The free parameters of the step law (see the module docstring); efficiencies are fractions of the
    GPU's datasheet bandwidth or dense tensor throughput."""

    step_overhead_ms: float
    per_sequence_ms: float
    weight_read_eff: float  # 16-bit (and fp8) weights, lm_head, norms
    int4_read_eff: float  # int4 weights with their group scales and zero points
    kv_read_eff: float
    gemm_eff: float  # 16-bit (and W8A8 fp8) tensor GEMMs
    int4_gemm_eff: float  # dequantising int4 GEMMs at hidden size 4096
    int4_gemm_eff_wide: float  # the same at hidden size 8192
    decode_gemm_factor_int4: float
    request_overhead_ms: float  # latency a request spends outside the engine (HTTP, hand-offs), in parallel
    frontend_request_ms: float  # the API server's exclusive work per new request (parsing, tokenizing)
    frontend_token_ms: float  # the API server's exclusive work per streamed token
    request_jitter_ms: float  # mean of the exponentially distributed extra latency of a request outside the engine
    frontend_finish_ms: float  # the API server's exclusive work per finished request (after its last token)

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def with_values(self, **values: float) -> LatencyParams:
        return replace(self, **values)


# The starting point of a fit (and what "datasheet figures only" predicts): round fractions typical of
# Hopper-class serving, not fitted to any card.
PRIOR = LatencyParams(
    step_overhead_ms=1.0,
    per_sequence_ms=0.01,
    weight_read_eff=0.8,
    int4_read_eff=0.45,
    kv_read_eff=0.8,
    gemm_eff=0.5,
    int4_gemm_eff=0.45,
    int4_gemm_eff_wide=0.6,
    decode_gemm_factor_int4=0.9,
    request_overhead_ms=10.0,
    frontend_request_ms=0.5,
    frontend_token_ms=0.05,
    request_jitter_ms=2.0,
    frontend_finish_ms=1.0,
)

# How far a fit may move each parameter from its start (log-normal prior, one standard deviation as a
# factor): overheads are the least known, bandwidth efficiencies the best.
PRIOR_SPREAD = {
    "step_overhead_ms": 3.0,
    "per_sequence_ms": 4.0,
    "weight_read_eff": 1.25,
    "int4_read_eff": 1.6,
    "kv_read_eff": 1.5,
    "gemm_eff": 1.6,
    "int4_gemm_eff": 1.6,
    "int4_gemm_eff_wide": 1.6,
    "decode_gemm_factor_int4": 1.3,
    "request_overhead_ms": 3.0,
    "frontend_request_ms": 4.0,
    "frontend_token_ms": 3.0,
    "request_jitter_ms": 3.0,
    "frontend_finish_ms": 4.0,
}
# Physical bounds a fit stays within.
BOUNDS = {
    "step_overhead_ms": (0.01, 100.0),
    "per_sequence_ms": (1e-5, 5.0),
    "weight_read_eff": (0.05, 1.0),
    "int4_read_eff": (0.03, 1.0),
    "kv_read_eff": (0.02, 1.5),
    "gemm_eff": (0.02, 1.0),
    "int4_gemm_eff": (0.02, 1.0),
    "int4_gemm_eff_wide": (0.02, 1.0),
    "decode_gemm_factor_int4": (0.2, 1.5),
    "request_overhead_ms": (0.1, 2000.0),
    "frontend_request_ms": (1e-3, 100.0),
    "frontend_token_ms": (1e-4, 5.0),
    "request_jitter_ms": (0.01, 500.0),
    "frontend_finish_ms": (1e-3, 100.0),
}


@dataclass(frozen=True)
class StepModel:
    """One rank's step law with its coefficients resolved (ms)."""

    weight_ms: float  # reading the weights once
    gemm_ms_per_token: float  # linear FLOPs of one token (prefill and mixed steps)
    decode_gemm_ms_per_token: float  # the same in pure decode steps
    attn_ms_per_token_ctx: float  # attention FLOPs of one prefill token per context token
    kv_ms_per_token: float  # reading one token of KV cache
    step_overhead_ms: float
    per_sequence_ms: float
    request_overhead_ms: float
    frontend_request_ms: float
    frontend_token_ms: float
    frontend_finish_ms: float
    request_jitter_ms: float
    allreduce_fixed_ms: float  # per step (0 at tp 1)
    allreduce_ms_per_token: float

    def step_ms(self, *, tokens: float, seqs: int, kv_context: float, attn_token_ctx: float, decode_only: bool) -> float:
        gemm = tokens * (self.decode_gemm_ms_per_token if decode_only else self.gemm_ms_per_token) + attn_token_ctx * self.attn_ms_per_token_ctx
        return (
            self.step_overhead_ms
            + seqs * self.per_sequence_ms
            + max(self.weight_ms, gemm)
            + kv_context * self.kv_ms_per_token
            + self.allreduce_fixed_ms
            + tokens * self.allreduce_ms_per_token
        )

    def decode_fixed_ms(self, batch: int) -> float:
        """A pure decode step of `batch` sequences without its KV read."""
        return (
            self.step_overhead_ms
            + batch * self.per_sequence_ms
            + max(self.weight_ms, batch * self.decode_gemm_ms_per_token)
            + self.allreduce_fixed_ms
            + batch * self.allreduce_ms_per_token
        )

    def decode_step_ms(self, batch: int, context: float) -> float:
        """A pure decode step of `batch` sequences at mean context `context`."""
        return self.decode_fixed_ms(batch) + batch * context * self.kv_ms_per_token

    def prefill_chunk_ms(self, tokens: int, context: float) -> float:
        """A step that prefills `tokens` prompt tokens at mean attention span `context` (nothing decoding)."""
        return self.step_ms(tokens=tokens, seqs=1, kv_context=0.0, attn_token_ctx=tokens * context, decode_only=False)


def int4_gemm_eff(params: LatencyParams, hidden_size: int) -> float:
    """Tensor-core efficiency of the dequantising int4 GEMMs, larger for wider layers (interpolated in log2)."""
    x = min(1.0, max(0.0, math.log2(hidden_size / INT4_NARROW_HIDDEN)))
    return params.int4_gemm_eff + x * (params.int4_gemm_eff_wide - params.int4_gemm_eff)


def step_model(
    arch: Architecture,
    gpu: GpuSpec,
    *,
    tp: int,
    weights_parts: dict[str, int],
    kv_bytes_per_token: int,
    quantization: str,
    params: LatencyParams,
) -> StepModel:
    """One rank's step law from the memory model's weight breakdown and the parameters."""
    parts = dict(weights_parts)
    # The embedding table is looked up, not read whole; a tied lm_head reads it fully.
    embedding = parts.pop("embedding", 0)
    if arch.tie_word_embeddings:
        parts["lm_head"] = embedding
    parts.pop("kernel_workspace", None)
    parts.pop("fp8_kv_scales", None)
    dequantising = quantization == "awq" or (quantization == "fp8" and not gpu.fp8_compute)  # int4, or FP8 Marlin on Ampere
    lowbit_keys = ("linear", "group_scales", "group_zeros") if quantization == "awq" else ("linear",) if dequantising else ()
    lowbit = sum(v for k, v in parts.items() if k in lowbit_keys)
    sixteen = sum(v for k, v in parts.items() if k not in lowbit_keys)
    if quantization == "fp8" and gpu.fp8_compute:
        tflops, eff = float(gpu.fp8_tflops or gpu.bf16_tflops), params.gemm_eff
    elif dequantising:
        tflops, eff = gpu.bf16_tflops, int4_gemm_eff(params, arch.hidden_size)
    else:
        tflops, eff = gpu.bf16_tflops, params.gemm_eff
    bw = gpu.bandwidth_gbs * 1e9
    flops_per_token = 2 * arch.non_embedding_params / tp
    attn_per_ctx = 4 * arch.num_hidden_layers * (arch.num_attention_heads // tp) * arch.head_dim
    rate = tflops * 1e12 * eff
    decode_eff = eff * params.decode_gemm_factor_int4 if dequantising else eff
    nvlink = gpu.interconnect.startswith("NVLink")
    ar_latency = ALLREDUCE_LATENCY_MS_NVLINK if nvlink else ALLREDUCE_LATENCY_MS_PCIE
    per_token_bytes = arch.hidden_size * 2 * 2 * (tp - 1) / tp  # one all-reduce of a bf16 hidden row (ring, both ways)
    return StepModel(
        weight_ms=(sixteen / (bw * params.weight_read_eff) + lowbit / (bw * params.int4_read_eff)) * 1e3,
        gemm_ms_per_token=flops_per_token / rate * 1e3,
        decode_gemm_ms_per_token=flops_per_token / (tflops * 1e12 * decode_eff) * 1e3,
        attn_ms_per_token_ctx=attn_per_ctx / rate * 1e3,
        kv_ms_per_token=kv_bytes_per_token / (bw * params.kv_read_eff) * 1e3,
        step_overhead_ms=params.step_overhead_ms,
        per_sequence_ms=params.per_sequence_ms,
        request_overhead_ms=params.request_overhead_ms,
        frontend_request_ms=params.frontend_request_ms,
        frontend_token_ms=params.frontend_token_ms,
        frontend_finish_ms=params.frontend_finish_ms,
        request_jitter_ms=params.request_jitter_ms,
        allreduce_fixed_ms=2 * arch.num_hidden_layers * ar_latency if tp > 1 else 0.0,
        allreduce_ms_per_token=2 * arch.num_hidden_layers * per_token_bytes / (gpu.interconnect_gbs * 1e9) * 1e3 if tp > 1 else 0.0,
    )


@dataclass(frozen=True)
class LatencyPrediction:
    """What `trdeploy bench` would measure for a load (its statistics, ms unless named otherwise)."""

    concurrency: int  # closed loop: the clients; rate-driven: the mean requests in flight (Little's law), rounded
    prompt_tokens: int
    output_tokens: int
    ttft_p50_ms: float
    ttft_p95_ms: float
    tpot_p50_ms: float
    tpot_p95_ms: float
    e2e_p50_ms: float
    e2e_p95_ms: float
    output_tokens_per_s: float
    requests_per_s: float
    decode_step_ms: float  # a pure decode step at `concurrency` sequences, mean context prompt + output / 2
    prefill_wave_ms: float  # prefilling `concurrency` prompts back to back
    arrivals: str = "closed"  # closed | poisson
    request_rate: float | None = None
    num_requests: int = 0
    mean_running: float = 0.0  # requests the engine held, time-weighted mean
    preemptions: int = 0
    ttft_mean_ms: float = 0.0
    engine_ttft_mean_ms: float = 0.0  # the part of TTFT vLLM's engine counts (its queue + prefill times), mean

    @property
    def ttft_outside_engine_mean_ms(self) -> float:
        """Mean TTFT outside the engine: HTTP, the API server, the hand-offs, waiting for the running step to end."""
        return self.ttft_mean_ms - self.engine_ttft_mean_ms

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def metric(self, name: str) -> float:
        """A prediction by the name a measured point uses (trdeploy.sizing.calibration.METRICS)."""
        return float(getattr(self, {"output_throughput": "output_tokens_per_s"}.get(name, name)))


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


def predict_latency(step: StepModel, engine: Engine, mix: Mix, load: Load) -> LatencyPrediction:
    """Latency statistics of one replica under `load`, computed as bench computes them (numpy's linear
    percentiles over the requests; TPOT per request = (E2E - TTFT) / (output tokens - 1))."""
    sim: Simulated = simulate(step, engine, mix, load)
    ttft, e2e = sim.ttft_ms, sim.e2e_ms
    tpot = sim.tpot_ms if mix.output_tokens > 1 else np.zeros_like(ttft)
    duration_s = max(sim.duration_ms, 1e-9) / 1e3
    n = ttft.size
    out_tps = n * sim.output_tokens / duration_s
    rps = n / duration_s
    if load.arrivals == "closed":
        concurrency = int(load.concurrency or 1)
    else:
        concurrency = max(1, round(rps * float(np.mean(e2e)) / 1e3))
    c = concurrency
    p = mix.prompt_tokens - mix.cached_prompt_tokens
    wave = c * p
    budget = engine.max_num_batched_tokens
    chunk = step.prefill_chunk_ms(min(wave, budget), mix.prompt_tokens / 2)
    return LatencyPrediction(
        concurrency=concurrency,
        prompt_tokens=mix.prompt_tokens,
        output_tokens=sim.output_tokens,
        ttft_p50_ms=_pct(ttft, 50),
        ttft_p95_ms=_pct(ttft, 95),
        tpot_p50_ms=_pct(tpot, 50),
        tpot_p95_ms=_pct(tpot, 95),
        e2e_p50_ms=_pct(e2e, 50),
        e2e_p95_ms=_pct(e2e, 95),
        output_tokens_per_s=out_tps,
        requests_per_s=rps,
        decode_step_ms=step.decode_step_ms(c, mix.prompt_tokens + mix.output_tokens / 2),
        prefill_wave_ms=chunk * max(1.0, wave / budget),
        arrivals=load.arrivals,
        request_rate=load.request_rate,
        num_requests=n,
        mean_running=sim.mean_running,
        preemptions=sim.preemptions,
        ttft_mean_ms=float(np.mean(ttft)) if n else float("nan"),
        engine_ttft_mean_ms=float(np.mean(sim.engine_ttft_ms)) if n else float("nan"),
    )
