"""vLLM 0.25 (V1 engine, model runner V2) GPU memory accounting, as pure functions.

What vLLM does at start-up (vllm/v1/worker/gpu_worker.py `determine_available_memory`, checked in the
0.25.0 wheel):

    requested  = ceil(cuda_total x gpu_memory_utilization)          # cudaMemGetInfo total, not nvidia-smi
    available  = requested - weights - torch_peak_increase - non_torch_increase
    num_blocks = available // page_size // num_layers               # kv_cache_utils.get_num_blocks
    page_size  = 16 x kv_heads_per_rank x head_dim x 2 (K and V) x kv_dtype_bytes   # per layer, block of 16 tokens
    "GPU KV cache size: N tokens" = int(num_blocks / ceil(max_model_len/16) x max_model_len)

- weights: "Model loading took X GiB" -- the tensors as vLLM keeps them after repacking (AWQ on Hopper runs
  on Machete, which stores zero points as 16-bit `-zero x scale`; elsewhere Marlin keeps them 4-bit).
- torch_peak_increase: the peak of PyTorch allocations during `profile_run` (a dummy forward of
  max_num_batched_tokens tokens spread over min(max_num_seqs, tokens) requests, then the sampler over
  those requests). The dominant tensors are the MLP's gate_up output and its activation (3 x intermediate
  per token), or the float32 logits of the sampler (requests x vocab). On the first start the forward also
  triggers torch.compile, whose Inductor compilation allocates more (see COMPILE_*); with vLLM's compile
  cache warm (a restart on the same machine or a mounted ~/.cache/vllm) it does not.
- non_torch_increase: memory allocated outside PyTorch after the baseline snapshot (kernel modules,
  cuBLAS/NCCL buffers first touched by the profile run).
- CUDA graphs: model runner V2 (the default for dense decoder models such as Llama in 0.25) returns 0 from
  `profile_cudagraph_memory`, so graph memory (about 1 GiB measured for Llama-3-8B) is NOT subtracted: it
  must fit in the memory gpu_memory_utilization leaves out, next to the CUDA context.

With tensor parallelism every rank holds kv_heads/tp KV heads (one replicated head per rank when
tp > kv_heads), 1/tp of each linear layer, 1/tp of the (64-padded) vocabulary rows of the embedding and
lm_head, and a copy of the norms; vLLM sizes every rank the same and logs the per-rank token capacity.

The constants below were calibrated on 8 start-ups of vLLM 0.25.0 on one H100 80GB HBM3 (torch 2.11,
Llama-3-8B shapes, bf16 and AWQ int4, auto and fp8 KV cache, max_num_batched_tokens 2048..16384,
max_num_seqs 64..1024, utilisation 0.85..0.92) and, for tensor parallelism, 2 start-ups on two H100s
(tp=2, bf16, auto and fp8 KV cache); tests/data/vllm_measurements.json holds them and a test keeps every
prediction within 1% of vLLM's logged KV tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from trdeploy.deployment import KV_CACHE_DTYPES, Quantization
from trdeploy.errors import TrdeployError
from trdeploy.sizing.architectures import VOCAB_PADDING, Architecture, QuantConfig, ResolvedModel
from trdeploy.sizing.gpus import GiB, GpuSpec, MiB

KV_BLOCK_SIZE = 16  # vLLM CacheConfig.DEFAULT_BLOCK_SIZE on CUDA
ACT_BYTES = 2  # activations in bf16/fp16

# --- Calibrated on the H100 measurements (see module docstring); GiB unless named otherwise. ----------
# Non-torch memory that appears during the profile run (measured 0.22 GiB in every single-GPU start).
NON_TORCH_GIB = 0.225
# Extra non-torch memory per rank with tensor parallelism: buffers the first collectives allocate inside
# the profile run. Measured 0.54 GiB non-torch (so +0.315) on both ranks of two H100s (tp=2, bf16 and
# fp8 KV cache); tp=4 and tp=8 are assumed to add the same.
NON_TORCH_TP_EXTRA_GIB = 0.315
# First start (cold compile cache): small tensors alive at the forward's peak besides the MLP
# intermediates, fitted with COMPILE_EXTRA_GIB below to the cold starts at 2048, 8192 and 16384 tokens.
ACTIVATION_BASE_GIB = 0.076
# Warm compile cache: the forward's peak holds the MLP intermediates plus about three hidden-size rows
# per token (residual, normed input, attention output) and a small constant. Fitted to the two warm
# starts measured: 0.24 GiB at 2048 tokens and 0.88 GiB at 8192 tokens (Llama-3-8B, H100).
WARM_HIDDEN_COPIES = 3
WARM_BASE_GIB = 0.0293
# First start (cold compile cache): Inductor compiles the graph during the profile forward and keeps
# ~0.375 GiB more than a warm forward at its peak, and allocates a floor (plus two hidden-size rows per
# token) even for small batches. Measured on one H100: 1.01 GiB cold vs 0.24 GiB warm at 2048 tokens,
# a floor of 0.979 GiB, which is the size of the rank's embedding matrix (128,256 x 4,096 bf16 =
# 0.9785 GiB); on two H100s (tp=2, 8192 tokens) the peak was 0.84 GiB, below a tp-independent floor
# (1.10 GiB), so the floor is taken as the rank's share of the embedding (the vocabulary rows split over
# tp). The sampler runs after the compiled forward, so the compile extra is not added to it.
COMPILE_EXTRA_GIB = 0.375
# Per decoder layer, kept with the weights: int4 kernels' workspaces and fp8-KV scale buffers (both
# measured as +0.03 GiB over the tensors' own bytes on 32 layers).
QUANT_KERNEL_EXTRA_PER_LAYER = 1 * MiB
FP8_KV_EXTRA_PER_LAYER = 1 * MiB
# Outside vLLM's budget but on the card: the CUDA context (+ NCCL communicators and all-reduce buffers)
# before the baseline snapshot, and the CUDA graphs captured after the KV cache. Measured on H100s: the
# context 0.51 GiB with one GPU and 1.47 GiB per rank with tp=2 (assumed the same for tp=4 and 8); graphs
# 0.98 GiB for Llama-3-8B on one GPU (graphs up to 512 tokens), 0.58-0.72 GiB per rank with tp=2.
CUDA_CONTEXT_GIB = 0.51
CUDA_CONTEXT_TP_GIB = 1.47
CUDA_GRAPH_GIB = 1.0

QuantKind = Quantization
CompileCache = Literal["cold", "warm"]
KV_DTYPES = KV_CACHE_DTYPES


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def kv_dtype_bytes(kv_cache_dtype: str) -> int:
    if kv_cache_dtype not in KV_DTYPES:
        raise TrdeployError(f"Unknown --kv-cache-dtype '{kv_cache_dtype}'.", hint="Use auto or fp8.")
    return 1 if kv_cache_dtype.startswith("fp8") else 2


def valid_tp_sizes(arch: Architecture, limit: int = 8) -> list[int]:
    """Tensor-parallel sizes vLLM accepts for this model: attention heads divide evenly, and KV heads either
    divide evenly or are replicated (tp a multiple of kv_heads)."""
    sizes = []
    for tp in (1, 2, 4, 8, 16):
        if tp > limit:
            break
        if arch.num_attention_heads % tp:
            continue
        kv = arch.num_key_value_heads
        if tp <= kv and kv % tp:
            continue
        if tp > kv and tp % kv:
            continue
        sizes.append(tp)
    return sizes


def check_tp(arch: Architecture, tp: int) -> None:
    if tp < 1:
        raise TrdeployError(f"--gpus must be at least 1 (got {tp}).", hint="Pass --gpus 1, 2, 4 or 8.")
    if tp not in valid_tp_sizes(arch, limit=max(tp, 16)):
        raise TrdeployError(
            f"vLLM cannot split {arch.name} over {tp} GPUs: {arch.num_attention_heads} attention heads and "
            f"{arch.num_key_value_heads} KV heads must divide evenly (or KV heads be replicated).",
            hint=f"Use --gpus {' or '.join(str(t) for t in valid_tp_sizes(arch))}.",
        )


def kv_heads_per_rank(arch: Architecture, tp: int) -> int:
    """Each rank holds kv_heads/tp heads; with tp > kv_heads each rank keeps one (replicated) head."""
    return max(1, arch.num_key_value_heads // tp)


def kv_bytes_per_token(arch: Architecture, kv_cache_dtype: str = "auto", tp: int = 1) -> int:
    """Per-rank KV bytes for one token over all layers: 2 (K,V) x layers x kv_heads/tp x head_dim x dtype."""
    return 2 * arch.num_hidden_layers * kv_heads_per_rank(arch, tp) * arch.head_dim * kv_dtype_bytes(kv_cache_dtype)


def page_size_bytes(arch: Architecture, kv_cache_dtype: str = "auto", tp: int = 1) -> int:
    """Bytes of one 16-token block in one layer (vLLM's FullAttentionSpec.page_size_bytes)."""
    return KV_BLOCK_SIZE * 2 * kv_heads_per_rank(arch, tp) * arch.head_dim * kv_dtype_bytes(kv_cache_dtype)


def kv_cache_tokens_for_blocks(num_blocks: int, max_model_len: int) -> int:
    """What vLLM logs as "GPU KV cache size: N tokens" (get_kv_cache_capacity)."""
    blocks_per_request = cdiv(max_model_len, KV_BLOCK_SIZE)
    return int(num_blocks / blocks_per_request * max_model_len)


# ---------------------------------------------------------------------------------------------
# Weights


def _quant_for(model: Architecture | ResolvedModel, quantization: QuantKind) -> QuantConfig | None:
    if quantization == "none":
        return None
    existing = model.quant if isinstance(model, ResolvedModel) else None
    if existing is not None and existing.kind == quantization:
        return existing
    if quantization == "awq":
        # What `trdeploy quantize` writes (llm-compressor AWQ): int4, group 128, asymmetric (zero points).
        return QuantConfig(kind="awq", method="awq", bits=4, group_size=128, zero_point=True)
    if quantization == "fp8":
        return QuantConfig(kind="fp8", method="fp8", bits=8, group_size=0, zero_point=False)
    raise TrdeployError(f"Unknown quantization '{quantization}'.", hint="Use none, awq or fp8.")


def embedding_bytes(arch: Architecture, tp: int) -> int:
    """One rank's embedding (or lm_head): the vocabulary padded to 64 rows, split over tp, x hidden in 16-bit."""
    return cdiv(cdiv(arch.vocab_size, VOCAB_PADDING) * VOCAB_PADDING, tp) * arch.hidden_size * ACT_BYTES


def weights_breakdown(
    arch: Architecture, gpu: GpuSpec, *, tp: int = 1, quant: QuantConfig | None = None, kv_cache_dtype: str = "auto"
) -> dict[str, int]:
    """Per-rank bytes of what "Model loading took" counts, by part."""
    embed = embedding_bytes(arch, tp)
    parts = {
        "embedding": embed,
        "lm_head": 0 if arch.tie_word_embeddings else embed,
        "norms": arch.norm_params * ACT_BYTES,
    }
    linear = arch.linear_params // tp
    if quant is None:
        parts["linear"] = linear * ACT_BYTES
    elif quant.kind == "fp8":
        parts["linear"] = linear  # 1 byte a weight (+ per-tensor scales, a few KB)
    else:
        groups = linear // quant.group_size
        parts["linear"] = linear * quant.bits // 8
        parts["group_scales"] = groups * ACT_BYTES
        if quant.zero_point:
            # Machete (Hopper) pre-multiplies zero points into 16-bit values; Marlin keeps them packed 4-bit.
            parts["group_zeros"] = groups * ACT_BYTES if gpu.architecture == "hopper" else groups * quant.bits // 8
        parts["kernel_workspace"] = QUANT_KERNEL_EXTRA_PER_LAYER * arch.num_hidden_layers
    if kv_dtype_bytes(kv_cache_dtype) == 1:
        parts["fp8_kv_scales"] = FP8_KV_EXTRA_PER_LAYER * arch.num_hidden_layers
    return parts


# ---------------------------------------------------------------------------------------------
# Profile-run activation peak


def activation_breakdown(
    arch: Architecture, *, tp: int, max_num_batched_tokens: int, max_num_seqs: int, compile_cache: CompileCache = "cold"
) -> dict[str, int]:
    """Per-rank PyTorch peak increase during vLLM's profile run, in bytes, with the phases it is the max of."""
    t = max_num_batched_tokens
    s = min(max_num_seqs, t)
    mlp = t * 3 * cdiv(arch.intermediate_size, tp) * ACT_BYTES  # gate_up (2I) + act (I)
    hidden = t * arch.hidden_size * ACT_BYTES
    # With tp > 1 the row-parallel layers' all-reduce writes a new hidden-size tensor beside its input
    # (fitted to the one tp=2 measurement: 0.84 GiB at 8192 tokens).
    allreduce = hidden if tp > 1 else 0
    logits = s * arch.vocab_size * 4  # the sampler's float32 logits over the full (gathered) vocabulary
    if compile_cache == "cold":
        base = ACTIVATION_BASE_GIB * GiB
        forward = mlp + allreduce + base
        sampler = hidden + logits + base
        compile_floor = embedding_bytes(arch, tp) + 2 * hidden
        peak = max(forward + COMPILE_EXTRA_GIB * GiB, sampler, compile_floor)
        return {"forward": int(forward), "sampler": int(sampler), "compile_floor": int(compile_floor), "peak": int(peak)}
    if compile_cache == "warm":
        base = WARM_BASE_GIB * GiB
        forward = mlp + allreduce + WARM_HIDDEN_COPIES * hidden + base
        sampler = hidden + logits + base
        return {"forward": int(forward), "sampler": int(sampler), "peak": int(max(forward, sampler))}
    raise TrdeployError(f"Unknown compile cache state '{compile_cache}'.", hint="Use cold or warm.")


def non_torch_bytes(tp: int) -> int:
    return int((NON_TORCH_GIB + (NON_TORCH_TP_EXTRA_GIB if tp > 1 else 0.0)) * GiB)


def cuda_context_gib(tp: int) -> float:
    """Per rank, in use before vLLM's start-up snapshot (CUDA context, and with tp > 1 NCCL and all-reduce buffers)."""
    return CUDA_CONTEXT_TP_GIB if tp > 1 else CUDA_CONTEXT_GIB


# ---------------------------------------------------------------------------------------------
# The prediction


@dataclass(frozen=True)
class KvCachePrediction:
    """vLLM's start-up memory accounting for one rank, with the settings it was computed for."""

    gpu: str
    tp: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    kv_cache_dtype: str
    quantization: str
    compile_cache: str
    cuda_total_bytes: int
    requested_bytes: int
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    available_bytes: int
    page_size_bytes: int
    num_layers: int
    num_blocks: int
    kv_cache_tokens: int
    kv_heads_per_rank: int
    kv_bytes_per_token: int  # per rank
    weights_parts: dict[str, int] = field(default_factory=dict)
    activation_parts: dict[str, int] = field(default_factory=dict)

    @property
    def kv_cache_bytes(self) -> int:
        return self.num_blocks * self.page_size_bytes * self.num_layers

    @property
    def blocks_per_max_len_request(self) -> int:
        return cdiv(self.max_model_len, KV_BLOCK_SIZE)

    @property
    def fits(self) -> bool:
        """vLLM starts only if one request of max_model_len fits in the KV cache."""
        return self.available_bytes > 0 and self.num_blocks >= self.blocks_per_max_len_request

    @property
    def max_concurrency(self) -> float:
        """vLLM's "Maximum concurrency for max_model_len tokens per request"."""
        return self.num_blocks / self.blocks_per_max_len_request

    def concurrency_for(self, tokens_per_request: int) -> float:
        """Requests of this many tokens (prompt + output) the cache holds at once."""
        return self.num_blocks / cdiv(max(1, tokens_per_request), KV_BLOCK_SIZE)

    @property
    def headroom_bytes(self) -> int:
        """What is left on the card after vLLM's budget, the CUDA context and the CUDA graphs."""
        return int(self.cuda_total_bytes - self.requested_bytes - (cuda_context_gib(self.tp) + CUDA_GRAPH_GIB) * GiB)

    def gib(self, name: str) -> float:
        return getattr(self, name) / GiB

    @property
    def weights_gib(self) -> float:
        return self.weights_bytes / GiB

    @property
    def kv_cache_gib(self) -> float:
        return self.kv_cache_bytes / GiB

    @property
    def activation_gib(self) -> float:
        return self.activation_bytes / GiB

    @property
    def non_torch_gib(self) -> float:
        return self.non_torch_bytes / GiB

    @property
    def available_gib(self) -> float:
        return self.available_bytes / GiB

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            kv_cache_bytes=self.kv_cache_bytes,
            fits=self.fits,
            max_concurrency=round(self.max_concurrency, 2),
            weights_gib=round(self.weights_gib, 3),
            activation_gib=round(self.activation_gib, 3),
            non_torch_gib=round(self.non_torch_gib, 3),
            available_kv_gib=round(self.available_gib, 3),
            kv_cache_gib=round(self.kv_cache_gib, 3),
            requested_gib=round(self.requested_bytes / GiB, 3),
        )
        return d


def predict_kv_cache(
    model: Architecture | ResolvedModel,
    gpu: GpuSpec,
    *,
    tp: int = 1,
    max_model_len: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    gpu_memory_utilization: float = 0.9,
    kv_cache_dtype: str = "auto",
    quantization: QuantKind = "none",
    compile_cache: CompileCache = "cold",
) -> KvCachePrediction:
    """The KV cache vLLM 0.25 will allocate (per rank) for explicit engine settings. Pure; no I/O."""
    arch = model.arch if isinstance(model, ResolvedModel) else model
    check_tp(arch, tp)
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise TrdeployError(f"--gpu-memory-utilization must be in (0, 1] (got {gpu_memory_utilization}).", hint="vLLM's default is 0.9.")
    if max_model_len < 1 or max_num_seqs < 1 or max_num_batched_tokens < 1:
        raise TrdeployError("max_model_len, max_num_seqs and max_num_batched_tokens must be positive.", hint="Check the overrides.")
    quant = _quant_for(model, quantization)
    wparts = weights_breakdown(arch, gpu, tp=tp, quant=quant, kv_cache_dtype=kv_cache_dtype)
    aparts = activation_breakdown(
        arch, tp=tp, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs, compile_cache=compile_cache
    )
    weights = sum(wparts.values())
    activation = aparts["peak"]
    non_torch = non_torch_bytes(tp)
    requested = math.ceil(gpu.cuda_total_bytes * gpu_memory_utilization)
    available = requested - weights - activation - non_torch
    page = page_size_bytes(arch, kv_cache_dtype, tp)
    num_blocks = max(0, available // page // arch.num_hidden_layers)
    return KvCachePrediction(
        gpu=gpu.tier,
        tp=tp,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        gpu_memory_utilization=gpu_memory_utilization,
        kv_cache_dtype=kv_cache_dtype,
        quantization=quantization,
        compile_cache=compile_cache,
        cuda_total_bytes=gpu.cuda_total_bytes,
        requested_bytes=requested,
        weights_bytes=weights,
        activation_bytes=activation,
        non_torch_bytes=non_torch,
        available_bytes=available,
        page_size_bytes=page,
        num_layers=arch.num_hidden_layers,
        num_blocks=int(num_blocks),
        kv_cache_tokens=kv_cache_tokens_for_blocks(int(num_blocks), max_model_len),
        kv_heads_per_rank=kv_heads_per_rank(arch, tp),
        kv_bytes_per_token=kv_bytes_per_token(arch, kv_cache_dtype, tp),
        weights_parts=wparts,
        activation_parts=aparts,
    )


def max_gpu_memory_utilization(gpu: GpuSpec, tp: int = 1) -> float:
    """The highest utilisation vLLM accepts: requested memory must be free at start-up (context excluded)."""
    return (gpu.cuda_total_bytes - cuda_context_gib(tp) * GiB) / gpu.cuda_total_bytes
