"""`TuneRequest`: the arguments of `tune`, the single source of their defaults, ranges and allowed values
(`trdeploy tune`'s options read them). None means "derived": what the default is then is noted here and
decided in trdeploy.sizing.tuning."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import field_validator

from trdeploy.args import Args, arg
from trdeploy.deployment import KvCacheDtype, Quantization
from trdeploy.fields import Name, ShortText
from trdeploy.sizing.gpus import GPUS
from trdeploy.sizing.memory import KV_BLOCK_SIZE, CompileCache

DEFAULT_MODEL = "llama-3-8b"
DEFAULT_CONTEXT_WORDS = 2000
DEFAULT_PROMPT_TOKENS = 1024
DEFAULT_OUTPUT_TOKENS = 256
DEFAULT_CONCURRENCY = 32
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
DEFAULT_PEAK_FACTOR = 3.0
DEFAULT_PERCENTILE = 95.0
# The SLA tune checks when no --sla-* option is given: an interactive chat service (first token within
# 2 s at p95, 50 ms per output token at the median, about 20 tokens/s: faster than people read).
DEFAULT_SLA_TTFT_P95_MS = 2000.0
DEFAULT_SLA_TPOT_MS = 50.0


class TuneRequest(Args):
    command: ClassVar[str] = "tune"

    gpu: str = arg(..., help=f"GPU tier: {', '.join(GPUS)}.")
    model: str = arg(DEFAULT_MODEL, help="Preset (llama-3-8b, llama-3.1-70b, ...), local checkpoint folder, or hub id.")
    gpus: int | None = arg(None, ge=1, help="GPUs per replica (tensor parallelism).", default_note="the fewest that fit")
    quantization: Quantization | None = arg(
        None, help="Weights: none (bf16), awq (int4) or fp8.", default_note="what the checkpoint has, else none"
    )
    kv_cache_dtype: KvCacheDtype = arg("auto", help="KV cache dtype: auto (model dtype) or fp8 (half the bytes).")
    context_words: int | None = arg(
        None,
        ge=1,
        help="Turkish context the application needs, in words (converted with p95 tokens per word).",
        default_note=str(DEFAULT_CONTEXT_WORDS),
    )
    tokens_per_word: float | None = arg(None, gt=0, help="Use this tokens-per-word instead of measuring it (e.g. from `trdeploy profile`).")
    corpus: str | None = arg(
        None, help="Measure tokens per word on this Turkish corpus (text/JSONL/CSV/Parquet file or hub dataset) instead of the embedded one."
    )
    percentile: float = arg(DEFAULT_PERCENTILE, ge=1.0, le=100.0, help="Percentile of per-document tokens per word.")
    max_model_len: int | None = arg(None, ge=KV_BLOCK_SIZE, help="vLLM max_model_len in tokens (instead of --context-words).")
    prompt_tokens: int | None = arg(
        None, ge=1, help="Typical prompt length in tokens.", default_note=f"{DEFAULT_PROMPT_TOKENS}, or less to fit"
    )
    output_tokens: int | None = arg(None, ge=1, help="Typical output length in tokens.", default_note=str(DEFAULT_OUTPUT_TOKENS))
    concurrency: int | None = arg(
        None, ge=1, help="Requests in flight to plan for (all replicas).", default_note=str(DEFAULT_CONCURRENCY)
    )
    requests_per_day: float | None = arg(None, gt=0, help="Daily traffic to plan replicas for (instead of --concurrency); latency for Poisson arrivals.")
    request_rate: float | None = arg(
        None, gt=0, help="Peak arrivals per second over all replicas (instead of --concurrency); latency predicted for Poisson arrivals."
    )
    peak_factor: float = arg(DEFAULT_PEAK_FACTOR, ge=1.0, help="Peak-hour rate over the daily average rate.")
    ttft_p95_ms: float | None = arg(
        None,
        gt=0,
        flag="--sla-ttft-p95-ms",
        help="SLA: p95 time to first token, ms.",
        default_note=f"{DEFAULT_SLA_TTFT_P95_MS:g} with the default SLA (used when no --sla-* is given)",
    )
    e2e_p95_ms: float | None = arg(None, gt=0, flag="--sla-e2e-p95-ms", help="SLA: p95 end-to-end latency, ms.")
    tpot_ms: float | None = arg(
        None,
        gt=0,
        flag="--sla-tpot-ms",
        help="SLA: median time per output token, ms.",
        default_note=f"{DEFAULT_SLA_TPOT_MS:g} with the default SLA (used when no --sla-* is given)",
    )
    max_num_seqs: int | None = arg(None, ge=1, help="Override vLLM max_num_seqs.")
    max_num_batched_tokens: int | None = arg(
        None, ge=1, help="Override vLLM max_num_batched_tokens.", default_note="vLLM's for the GPU: 8192 on H100/H200, else 2048"
    )
    gpu_memory_utilization: float | None = arg(
        None, gt=0.0, le=1.0, help="Override vLLM gpu_memory_utilization.", default_note=f"{DEFAULT_GPU_MEMORY_UTILIZATION:g}"
    )
    compile_cache: CompileCache = arg(
        "cold", help="Predict the first start (cold torch.compile cache) or a restart with ~/.cache/vllm kept (warm)."
    )
    weights_read_gbps: float | None = arg(
        None,
        gt=0,
        help="Storage read bandwidth for the weights at start-up, GB/s (predicts prediction.startup).",
        default_note="1 (a model-cache volume; local NVMe 2-7, a hub download 0.1-0.5)",
    )
    calibration: Path | None = arg(
        None,
        help="A calibration file from `trdeploy calibrate` (your GPU, measured): its tier is predicted with it.",
        default_note="the tier's shipped calibration (h100, h200), else the h100's parameters",
    )
    name: Name | None = arg(None, help="Profile name (1-63 of A-Z a-z 0-9 . _ -).", default_note="model-quant-gpu")
    served_model_name: ShortText | None = arg(None, help="vLLM served_model_name (the name clients send).", default_note="the model id")
    driver: str | None = arg(
        None, help="NVIDIA driver on the GPU nodes (what nvidia-smi prints): picks the CUDA build of the image.", default_note="assumed per GPU tier"
    )
    cuda: Literal["13.0", "12.9"] | None = arg(None, help="CUDA build of vLLM's image.", default_note="the newest the driver runs")
    gpus_per_node: int | None = arg(None, ge=1, le=64, help="GPUs in one node of the tier.", default_note="8 for the known tiers")

    @field_validator("driver")
    @classmethod
    def _driver(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d{1,4}(\.\d{1,4}){0,2}", value):
            raise ValueError("driver must look like 580.65.06 (what nvidia-smi prints)")
        return value
