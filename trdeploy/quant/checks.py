"""Pure checks and numbers for `trdeploy quantize`: what can be quantized, the memory estimate, perplexity deltas, quality warnings, the model card."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GROUP_SIZE = 128
REPORT_NAME = "quantization_report.json"
DEFAULT_NUM_SAMPLES = 128
DEFAULT_MAX_SEQ_LEN = 512
DEFAULT_EVAL_TOKENS = 16384
DEFAULT_EVAL_SEQ_LEN = 512
DEFAULT_MAX_PPL_INCREASE_PCT = 10.0
# Evaluation windows per forward pass on a GPU: each pass onloads every layer once, so fewer
# passes are faster; 8 x 512 tokens of 128k-vocabulary logits is about 1 GiB in bf16.
EVAL_BATCH_GPU = 8
GIB = 1024**3
# Memory estimate factors (see estimate_memory), fitted to the measured 8B run.
CPU_WEIGHT_COPIES = 2.5
AWQ_HIDDEN_COPIES = 10


@dataclass(frozen=True)
class ModelFacts:
    """What the config says about a checkpoint, read without loading weights."""

    path: Path
    architecture: str
    model_type: str
    dtype: str
    dtype_bytes: int
    num_parameters: int
    parameter_bytes: int
    layer_bytes: int
    embedding_bytes: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    linear_in_features: dict[str, int]  # quantized Linear name -> in_features
    linear_out_features: dict[str, int]
    quantization_method: str | None = None
    weight_files_bytes: int = 0


def unsupported_architecture(architecture: str, supported: set[str] | frozenset[str]) -> str | None:
    """A one-line reason when llm-compressor has no AWQ mapping for the architecture."""
    if architecture in supported:
        return None
    close = sorted(a for a in supported if a.lower().startswith(architecture[:4].lower()))
    known = ", ".join(close[:4] or sorted(supported)[:6])
    return f"trdeploy cannot map the architecture {architecture} for AWQ (llm-compressor has no smoothing mapping for it; known: {known}, ...)."


def group_size_offenders(linear_in_features: dict[str, int], group_size: int = GROUP_SIZE) -> dict[str, int]:
    """Linear layers whose in_features is not a multiple of `group_size`, by name pattern.

    Names are collapsed over the layer index (model.layers.3.mlp.down_proj -> model.layers.*.mlp.down_proj).
    """
    bad: dict[str, int] = {}
    for name, in_features in linear_in_features.items():
        if in_features % group_size:
            pattern = ".".join("*" if part.isdigit() else part for part in name.split("."))
            bad[pattern] = in_features
    return bad


@dataclass(frozen=True)
class MemoryEstimate:
    cpu_bytes: int
    gpu_bytes: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"cpu_bytes": self.cpu_bytes, "gpu_bytes": self.gpu_bytes}


def estimate_memory(facts: ModelFacts, *, num_samples: int, max_seq_len: int, eval_seq_len: int, cuda: bool) -> MemoryEstimate:
    """Peak memory of a quantize run, before anything is loaded.

    Calibrated on one measured run: a random-weight Llama-3-8B-shaped model (bf16, 15 GiB of
    weights), 128 x 512 calibration tokens, on an H100 (2026-11-25): peak RSS 39.0 GiB, nvidia-smi
    peak 9,657 MiB. CPU: the whole 16-bit model is loaded on the CPU (the sequential pipeline
    onloads one decoder layer at a time to the GPU); saving and reloading the checkpoint on the
    CPU bring the peak to about 2.5x the 16-bit weights; plus the cached hidden states of every
    calibration sample and ~2 GiB for torch and the libraries. GPU: two decoder layers, the
    embedding, AWQ's cached activations for the grid search (about ten hidden-state copies of the
    calibration set at the measured peak), the logits of one evaluation batch, ~1 GiB of CUDA
    context.
    """
    hidden_cache = num_samples * max_seq_len * facts.hidden_size * facts.dtype_bytes
    cpu = int(facts.parameter_bytes * CPU_WEIGHT_COPIES + 2 * hidden_cache + 2 * GIB)
    if not cuda:
        # On the CPU, AWQ's own caches live in RAM too.
        cpu += AWQ_HIDDEN_COPIES * hidden_cache
        return MemoryEstimate(cpu_bytes=cpu, gpu_bytes=None)
    eval_logits = EVAL_BATCH_GPU * eval_seq_len * facts.vocab_size * facts.dtype_bytes + 2 * eval_seq_len * facts.vocab_size * 4
    gpu = int(2 * facts.layer_bytes + facts.embedding_bytes + AWQ_HIDDEN_COPIES * hidden_cache + eval_logits + GIB)
    return MemoryEstimate(cpu_bytes=cpu, gpu_bytes=gpu)


def memory_problem(estimate: MemoryEstimate, *, cpu_available: int, gpu_free: int | None) -> str | None:
    """A one-line reason when the estimate does not fit the machine."""
    if estimate.cpu_bytes > cpu_available:
        return (
            f"Not enough memory: quantizing this model needs about {estimate.cpu_bytes / GIB:.1f} GiB of RAM "
            f"(the 16-bit model is loaded on the CPU), and {cpu_available / GIB:.1f} GiB is available."
        )
    if estimate.gpu_bytes is not None and gpu_free is not None and estimate.gpu_bytes > gpu_free:
        return (
            f"Not enough GPU memory: this run needs about {estimate.gpu_bytes / GIB:.1f} GiB "
            f"(layer-by-layer onloading), and {gpu_free / GIB:.1f} GiB is free."
        )
    return None


def delta_pct(original: float, quantized: float | None) -> float | None:
    if quantized is None or not math.isfinite(original) or original <= 0:
        return None
    return round(100.0 * (quantized - original) / original, 3)


def quality_warnings(perplexity: dict[str, float | None], threshold_pct: float) -> list[str]:
    """Warnings for a quantized perplexity more than `threshold_pct` above the original."""
    out = []
    base = perplexity.get("original")
    for method in ("awq", "rtn"):
        value = perplexity.get(method)
        if base is None or value is None:
            continue
        if not math.isfinite(value):
            out.append(f"{method.upper()} perplexity is not finite: the quantized model is broken.")
            continue
        d = delta_pct(base, value)
        if d is not None and d > threshold_pct:
            out.append(
                f"{method.upper()} raises Turkish perplexity by {d:.1f}% ({base:.3f} -> {value:.3f}), "
                f"past the {threshold_pct:g}% threshold: check quality on your own task before serving it."
            )
    if perplexity.get("awq") is not None and perplexity.get("rtn") is not None and perplexity["awq"] > perplexity["rtn"]:
        out.append("AWQ came out worse than plain round-to-nearest on the evaluation text: try more or more representative calibration data.")
    return out


def render_model_card(report: dict[str, Any]) -> str:
    """The output folder's README.md: what this checkpoint is, how it was made, how to serve it."""
    ppl = report["perplexity"]
    d = report["perplexity_delta_pct"]
    cal = report["calibration"]
    ev = report["evaluation"]
    size = report["size_bytes"]
    fmt = report["format"]
    rows = [f"| original (16-bit) | {_fmt(ppl['original'])} | |", f"| AWQ W4A16 g{report['group_size']} | {_fmt(ppl['awq'])} | {_fmt_pct(d['awq'])} |"]
    if ppl.get("rtn") is not None:
        rows.append(f"| round-to-nearest W4A16 g{report['group_size']} | {_fmt(ppl['rtn'])} | {_fmt_pct(d['rtn'])} |")
    warnings = "".join(f"\n> **Warning:** {w}\n" for w in report["warnings"])
    serve = report["vllm"]["serve"]
    tags = ["awq", "int4", "turkish", "llm-compressor", "vllm", fmt]
    front = "\n".join(["---", f"base_model: {json.dumps(report['model'])}", "language:", "- tr", "tags:", *[f"- {t}" for t in tags], "---"])
    return f"""{front}

# {Path(report['output']).name}: AWQ 4-bit ({fmt}) with Turkish calibration

Quantized from `{report['model']}` by `trdeploy quantize` ({report['versions'].get('trdeploy', '?')}) with
llm-compressor {report['versions'].get('llmcompressor', '?')}: AWQ smoothing, then int4 weights
(scheme `{report['scheme']}`: group size {report['group_size']}, asymmetric with a zero point),
16-bit activations, `{', '.join(report['ignore'])}` kept in 16 bits.

## Serve it

```bash
{serve}
```

{report['vllm']['note']}

## Quality: perplexity on held-out Turkish text

Evaluation: {ev['source']} ({ev['texts']} texts, {ev['tokens']} tokens in {ev['windows']} windows of {ev['seq_len']}).
It was never used for calibration. Lower is better.

| model | perplexity | change |
|---|---|---|
{chr(10).join(rows)}
{warnings}
## Calibration

{cal['num_samples']} samples from `{cal['source']}` ({cal['kind']}{', rendered through the chat template' if cal['kind'] == 'chat' else ''}),
at most {cal['max_seq_len']} tokens each, {cal['tokens']} tokens in total.

## Size and cost

Weights: {human_bytes(size['original'])} -> {human_bytes(size['quantized'])}.
Quantization took {report['time_s']['total']:.0f} s on {report['device']}; peak GPU memory
{human_bytes(report['peak_memory']['gpu_bytes'])}, peak process RSS {human_bytes(report['peak_memory']['cpu_rss_bytes'])}.
All numbers: `{REPORT_NAME}`.
"""


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}%"


def human_bytes(value: int | None) -> str:
    """GiB for model-sized numbers, MiB below one GiB."""
    if value is None:
        return "n/a"
    return f"{value / GIB:.2f} GiB" if value >= GIB else f"{value / 1024**2:.1f} MiB"
