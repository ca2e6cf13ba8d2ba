"""A roofline latency model for vLLM serving, calibrated on measured H100 runs.

Per engine step, per tensor-parallel rank:

- decode step (B sequences at context L):
      t = overhead + B x per_sequence + max(weight_bytes / (bandwidth x e_w), B x flops_per_token / (TFLOP/s x e_d))
          + B x L x kv_bytes / (bandwidth x e_kv) + 2 all-reduces per layer
  the linear layers are bound by their weight read or, at large batches, by their FLOPs (e_d: the prefill
  efficiency, x0.89 for int4); attention is its own kernel reading the KV cache, so its time adds;
- prefill chunk of n tokens (chunked prefill, n <= max_num_batched_tokens):
      t = overhead + max(weight read, n x (2 x non-embedding params + attention) / (TFLOP/s x e_p)) + all-reduces.

Load model ("closed loop", what `vllm bench serve --max-concurrency C` with fixed lengths produces and the
calibration measured): C clients send a prompt of P tokens, wait for O output tokens, and send the next.
Requests of equal length start and finish together, so prompts arrive in waves of C: the wave's C x P
prefill tokens are processed in chunks of max_num_batched_tokens, then C sequences decode together.

- TTFT at quantile q: a fixed 12 ms (HTTP, tokenizing, scheduling) plus the time to prefill the first q x C
  prompts of a wave; given the bench run's length N, the slowest 5% of its requests are the first wave's
  slowest 5 x N / C percent (later waves arrive spread out), so p95 is the wave's 1 - 0.05 x N / C quantile;
- TPOT: the decode step at batch C and mean context P + O/2, plus the part of the wave's prefill that runs
  after a request's first token, spread over its O - 1 output tokens (half the wave at the median);
- end-to-end: the whole wave's prefill plus O - 1 decode steps; output tokens/s = C x O / end-to-end.

Traffic that arrives spread out (Poisson) sees lower TTFT than waves; the model therefore errs high on
TTFT, which is the safe side for an SLA check.

Calibration (vLLM 0.25.0, one H100 80GB HBM3, Llama-3-8B shapes, prompts 512 / outputs 300,
tests/data/vllm_measurements.json):
- bf16 TPOT 6.47 ms at concurrency 1 and 7.65 ms at 32 (prefill served from the prefix cache) give the
  per-step overhead (1.15 ms) and per-sequence cost (8 us), with e_w = e_kv = 0.85 of the datasheet
  bandwidth (a device-to-device copy reached 0.90 on the same card);
- AWQ int4 TPOT 4.13 ms at concurrency 1 gives e_w = 0.43 for the int4 weights (Machete, with the
  16-bit lm_head read at 0.85);
- TTFT p95 at concurrency 100 (1,333 and 1,420 ms bf16; 1,492 ms AWQ) gives e_p = 0.506 (bf16) and
  0.467 (int4) of the dense tensor throughput for 8192-token chunks.
Predicted at that point: TPOT p50 12.7 ms (measured 12.18 and 11.74), TTFT p95 1,389 ms (1,244 ms given the
run's 300 prompts), end-to-end 4.5 s (measured p50 4.34-4.43 s), 6,640 output tok/s (measured 6,738-6,760).

Checked on one H200 (vLLM 0.25.0, tests/data/vllm_measurements_h200.json, tests/sizing/test_latency_h200.py):
Llama-3-8B bf16 at concurrency 1 to 1,024 and Llama-3-70B AWQ (Machete) at 1 to 256, 512 in / 300 out. That
sweep fitted the decode FLOP bound with the KV read added (8B at 256+ sequences), the int4 GEMM efficiency of
the 70B's wider layers (0.62, hidden 8192; 0.467 at 4096 from the H100) and its decode factor (0.89), and the
12 ms TTFT overhead (concurrency 1); TPOT p50 and TTFT p95 are within 15% at all 16 points.
Other GPUs use the same efficiencies with their datasheet bandwidth and throughput (an assumption);
all-reduce costs are assumptions too (no multi-GPU measurement was possible).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from trdeploy.sizing.architectures import Architecture
from trdeploy.sizing.gpus import GpuSpec

STEP_OVERHEAD_MS = 1.15
PER_SEQUENCE_MS = 0.008
MEM_EFF_16BIT = 0.85
MEM_EFF_KV = 0.85
MEM_EFF_INT4 = 0.43
PREFILL_EFF_16BIT = 0.506
PREFILL_EFF_INT4 = 0.467
# int4 (Machete) GEMMs of a Llama-3-70B layer (hidden 8192) run nearer the tensor peak than the 8B's (hidden 4096):
# 0.62 fitted on one H200 (TTFT of 512 to 131,072-token waves, and decode at 128-256 sequences); in between,
# interpolated in log2(hidden); below 4096 and above 8192, held (not measured).
PREFILL_EFF_INT4_HIDDEN_8192 = 0.62
# Decode batches (M = the number of sequences, at most a few hundred) fill Machete's tiles less well than
# prefill chunks of thousands of tokens: fitted to the 70B AWQ TPOT at 100-256 sequences on the H200.
DECODE_GEMM_EFF_INT4_FACTOR = 0.89
# Time from the request reaching the server to its first token, besides the prefill itself (HTTP, tokenizing,
# scheduling, returning the token): fitted to TTFT at concurrency 1 on the H200 (25-32 ms measured, 8B bf16).
TTFT_OVERHEAD_MS = 12.0
# Assumed, not measured: one all-reduce's fixed cost (vLLM's custom all-reduce inside CUDA graphs on
# NVLink; NCCL over PCIe is slower).
ALLREDUCE_LATENCY_MS_NVLINK = 0.008
ALLREDUCE_LATENCY_MS_PCIE = 0.030


@dataclass(frozen=True)
class StepModel:
    """What one rank reads and computes per step, and how fast it can."""

    weight_bytes_16bit: float  # read at MEM_EFF_16BIT (16-bit and fp8 weights, lm_head, norms)
    weight_bytes_lowbit: float  # int4 tensors (and their group scales/zeros), read at MEM_EFF_INT4
    kv_bytes_per_token: float  # per rank
    flops_per_token: float  # per rank, without attention: 2 x non-embedding params / tp
    attn_flops_per_token_ctx: float  # per rank, per token of context: 4 x layers x q_heads/tp x head_dim
    tflops: float  # dense throughput used for prefill (fp8 for W8A8)
    prefill_eff: float
    decode_gemm_eff: float  # the same for 16-bit weights; lower for the dequantising int4 kernels
    bandwidth_gbs: float
    tp: int
    hidden_size: int
    num_layers: int
    allreduce_latency_ms: float
    interconnect_gbs: float

    def _allreduce_ms(self, tokens: int) -> float:
        if self.tp == 1:
            return 0.0
        per = self.allreduce_latency_ms + tokens * self.hidden_size * 2 * 2 * (self.tp - 1) / self.tp / (self.interconnect_gbs * 1e9) * 1e3
        return 2 * self.num_layers * per

    def decode_step_ms(self, batch: int, context: float) -> float:
        bw = self.bandwidth_gbs * 1e9
        weights = (self.weight_bytes_16bit / (bw * MEM_EFF_16BIT) + self.weight_bytes_lowbit / (bw * MEM_EFF_INT4)) * 1e3
        kv = batch * context * self.kv_bytes_per_token / (bw * MEM_EFF_KV) * 1e3
        gemm = batch * self.flops_per_token / (self.tflops * 1e12 * self.decode_gemm_eff) * 1e3
        # The linear layers are bound by the weight read or, at large batches, by their FLOPs; attention is its
        # own kernel that reads the KV cache, so its time adds (measured on the H200: 8B bf16 decode at 256-1024
        # sequences, 70B AWQ at 128-256). Where the weight read dominates, this is the weight and KV read.
        return STEP_OVERHEAD_MS + batch * PER_SEQUENCE_MS + max(weights, gemm) + kv + self._allreduce_ms(batch)

    def prefill_chunk_ms(self, tokens: int, context: float) -> float:
        bw = self.bandwidth_gbs * 1e9
        read = (self.weight_bytes_16bit / (bw * MEM_EFF_16BIT) + self.weight_bytes_lowbit / (bw * MEM_EFF_INT4)) * 1e3
        compute = tokens * (self.flops_per_token + self.attn_flops_per_token_ctx * context) / (self.tflops * 1e12 * self.prefill_eff) * 1e3
        return STEP_OVERHEAD_MS + max(read, compute) + self._allreduce_ms(tokens)


def _int4_gemm_eff(hidden_size: int) -> float:
    """Tensor-core efficiency of the dequantising int4 GEMMs, larger for wider layers (see the constants)."""
    x = min(1.0, max(0.0, math.log2(hidden_size / 4096)))
    return PREFILL_EFF_INT4 + x * (PREFILL_EFF_INT4_HIDDEN_8192 - PREFILL_EFF_INT4)


def step_model(
    arch: Architecture,
    gpu: GpuSpec,
    *,
    tp: int,
    weights_parts: dict[str, int],
    kv_bytes_per_token: int,
    quantization: str,
) -> StepModel:
    """Per-rank byte and FLOP counts from the memory model's weight breakdown."""
    parts = dict(weights_parts)
    # The embedding table is looked up, not read whole; a tied lm_head reads it fully.
    embedding = parts.pop("embedding", 0)
    if arch.tie_word_embeddings:
        parts["lm_head"] = embedding
    parts.pop("kernel_workspace", None)
    parts.pop("fp8_kv_scales", None)
    lowbit_keys = ("linear", "group_scales", "group_zeros") if quantization == "awq" else ()
    if quantization == "fp8" and not gpu.fp8_compute:
        lowbit_keys = ("linear",)  # weight-only FP8 Marlin on Ampere: dequantising kernels, like int4
    lowbit = sum(v for k, v in parts.items() if k in lowbit_keys)
    sixteen = sum(v for k, v in parts.items() if k not in lowbit_keys)
    if quantization == "fp8" and gpu.fp8_compute:
        tflops, eff = float(gpu.fp8_tflops or gpu.bf16_tflops), PREFILL_EFF_16BIT
    elif quantization in ("awq", "fp8"):
        tflops, eff = gpu.bf16_tflops, _int4_gemm_eff(arch.hidden_size)
    else:
        tflops, eff = gpu.bf16_tflops, PREFILL_EFF_16BIT
    nvlink = gpu.interconnect.startswith("NVLink")
    return StepModel(
        weight_bytes_16bit=sixteen,
        weight_bytes_lowbit=lowbit,
        kv_bytes_per_token=kv_bytes_per_token,
        flops_per_token=2 * arch.non_embedding_params / tp,
        attn_flops_per_token_ctx=4 * arch.num_hidden_layers * (arch.num_attention_heads // tp) * arch.head_dim,
        tflops=tflops,
        prefill_eff=eff,
        decode_gemm_eff=eff * DECODE_GEMM_EFF_INT4_FACTOR if quantization == "awq" or (quantization == "fp8" and not gpu.fp8_compute) else eff,
        bandwidth_gbs=gpu.bandwidth_gbs,
        tp=tp,
        hidden_size=arch.hidden_size,
        num_layers=arch.num_hidden_layers,
        allreduce_latency_ms=ALLREDUCE_LATENCY_MS_NVLINK if nvlink else ALLREDUCE_LATENCY_MS_PCIE,
        interconnect_gbs=gpu.interconnect_gbs,
    )


@dataclass(frozen=True)
class LatencyPrediction:
    concurrency: int
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
    decode_step_ms: float
    prefill_wave_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def predict_latency(
    step: StepModel,
    *,
    concurrency: int,
    prompt_tokens: int,
    output_tokens: int,
    max_num_batched_tokens: int,
    num_prompts: int | None = None,
) -> LatencyPrediction:
    """Latency percentiles and throughput of one replica at `concurrency` closed-loop clients.

    `num_prompts` (a bench run's length): the first wave's prompts all arrive at once; later waves arrive
    spread out and wait less, so the slowest 5% of N requests are the first wave's slowest 5 x N / C percent.
    Without it, TTFT p95 is the first wave's 95th percentile (the safe side for an SLA).
    """
    c = max(1, int(concurrency))
    p, o = int(prompt_tokens), max(1, int(output_tokens))
    budget = max(1, int(max_num_batched_tokens))
    wave_tokens = c * p
    prompt_ctx = p / 2  # mean causal attention span inside a prompt

    def prefill_ms(tokens: float) -> float:
        if tokens <= budget:
            return step.prefill_chunk_ms(max(1, round(tokens)), prompt_ctx)
        return tokens / budget * step.prefill_chunk_ms(budget, prompt_ctx)

    def first_token_ms(q: float) -> float:
        """The time to the first token of the wave's q-quantile prompt (decode tokens riding in the chunks
        blur the chunk boundaries, so the wave is taken as continuous)."""
        return TTFT_OVERHEAD_MS + (prefill_ms(max(p, q * wave_tokens)) if wave_tokens > budget else wave)

    wave = prefill_ms(wave_tokens)
    waves = max(1.0, num_prompts / c) if num_prompts else 1.0
    ttft50 = first_token_ms(0.5)
    ttft95 = first_token_ms(max(0.5, 1 - 0.05 * waves))
    decode = step.decode_step_ms(c, p + o / 2)
    steps = max(1, o - 1)
    tpot50 = decode + 0.5 * wave / steps if o > 1 else decode
    tpot95 = decode + 0.95 * wave / steps if o > 1 else decode
    e2e = wave + (o - 1) * decode
    return LatencyPrediction(
        concurrency=c,
        prompt_tokens=p,
        output_tokens=o,
        ttft_p50_ms=ttft50,
        ttft_p95_ms=ttft95,
        tpot_p50_ms=tpot50,
        tpot_p95_ms=tpot95,
        e2e_p50_ms=e2e,
        e2e_p95_ms=e2e,
        output_tokens_per_s=c * o / (e2e / 1e3),
        requests_per_s=c / (e2e / 1e3),
        decode_step_ms=decode,
        prefill_wave_ms=wave,
    )
