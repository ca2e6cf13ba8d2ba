"""AWQ 4-bit quantization with Turkish calibration, measured before and after.

One call, `quantize(QuantizeRequest(...))`, does the whole job:

1. resolve the model (local folder or hub id) and inspect it on the meta device: architecture
   has an AWQ mapping, every quantized Linear's in_features divides by the group size, not
   already quantized, and the machine has the memory (estimated before anything heavy loads);
2. render the calibration set (Turkish chats through the chat template by default) and the
   held-out evaluation windows (Turkish side of the parallel corpus);
3. perplexity of the original, then llm-compressor's `oneshot` with the recipe below;
4. save a compressed-tensors checkpoint (what vLLM detects by itself) into a temporary folder,
   reload it, check every tensor against the quantized model in memory (int4 weights as they
   decompress, norms, embeddings), take the perplexity of the reloaded checkpoint (and of plain
   round-to-nearest with `compare_rtn`), write `quantization_report.json` and a model card, and
   only then move the folder into place.

The recipe is data (llm-compressor's way): `AWQModifier` picks per-channel scales from the
calibration activations, then `QuantizationModifier` applies W4A16_ASYM (int4 weights, group
size 128, asymmetric with a zero point; activations stay 16-bit) to every Linear but lm_head.

Heavy imports (torch, transformers, llmcompressor) happen inside functions, so importing this
module is cheap and the pure helpers below are testable without them.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from trdeploy.errors import TrdeployError
from trdeploy.hub import hub_error, looks_like_path, split_revision
from trdeploy.output import atomic_directory, ensure_writable, to_json, warn
from trdeploy.quant.calibration import (
    CalibrationSet,
    EvaluationSet,
    evaluation_texts,
    load_calibration_records,
    render_calibration,
    render_evaluation,
)

SCHEME = "W4A16_ASYM"
NUM_BITS = 4
GROUP_SIZE = 128
IGNORE = ("lm_head",)
REPORT_NAME = "quantization_report.json"
MODEL_CARD_NAME = "README.md"
REPORT_SCHEMA_VERSION = 1
# config.json goes by this name until the written checkpoint has been verified.
_PENDING_CONFIG = "config.json.incomplete"

DEFAULT_NUM_SAMPLES = 128
DEFAULT_MAX_SEQ_LEN = 512
DEFAULT_EVAL_TOKENS = 16384
DEFAULT_EVAL_SEQ_LEN = 512
DEFAULT_MAX_PPL_INCREASE_PCT = 10.0
# Every tensor of the reloaded checkpoint must match the in-memory quantized model this closely
# (relative error of a fixed random projection of the tensor). Writing the same integers gave 0.0
# (compressed-tensors) and 2.4e-4 (--format awq, float16 tensors) on a tiny Llama; a tensor written
# unquantized, with other scales or without AWQ's smoothing differs by the int4 rounding itself.
MAX_TENSOR_REL_ERROR = 0.005
# Tokens of the diagnostic probe: logits of the quantized model in memory (compressed-tensors'
# quantize-on-the-fly forward) against the reloaded checkpoint's, reported, not a pass criterion.
PROBE_TOKENS = 64
# Evaluation windows per forward pass on a GPU: each pass onloads every layer once, so fewer
# passes are faster; 8 x 512 tokens of 128k-vocabulary logits is about 1 GiB in bf16.
EVAL_BATCH_GPU = 8
GIB = 1024**3
# Memory estimate factors (see estimate_memory), fitted to the measured 8B run.
CPU_WEIGHT_COPIES = 2.5
AWQ_HIDDEN_COPIES = 10

INSTALL_HINT = "Install the quantization extra: pip install 'trdeploy[quantize]' (install the torch build for your machine first)."

Format = Literal["compressed-tensors", "awq"]


@dataclass
class QuantizeRequest:
    """Everything `trdeploy quantize` takes; the CLI fills it from its options."""

    model: str
    output: Path
    dataset: str | None = None
    dataset_split: str = "train"
    dataset_config: str | None = None
    text_column: str | None = None
    num_samples: int = DEFAULT_NUM_SAMPLES
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    compare_rtn: bool = False
    output_format: Format = "compressed-tensors"
    eval_tokens: int = DEFAULT_EVAL_TOKENS
    eval_seq_len: int = DEFAULT_EVAL_SEQ_LEN
    max_ppl_increase_pct: float = DEFAULT_MAX_PPL_INCREASE_PCT
    seed: int = 0
    force: bool = False
    verbose: bool = False


class Reporter:
    """Progress sink. The CLI passes one that draws rich progress bars; the default is silent."""

    def stage(self, description: str, total: int | None = None) -> None:
        """A new step starts (total: how many units it has, if known)."""

    def update(self, completed: int) -> None:
        """How many units of the current step are done."""

    def close(self) -> None:
        """The run ended (successfully or not)."""


# --------------------------------------------------------------------------------------------
# Pure checks and numbers
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Environment and I/O edges
# --------------------------------------------------------------------------------------------


def require_quantize_extra() -> None:
    """Import the heavy packages, failing with the install command when one is missing.

    llm-compressor configures loguru at import time with a handler on stdout, which would
    corrupt `--json` output; it is imported with its logging disabled, and `_quiet_libraries`
    routes everything to stderr afterwards.
    """
    missing = []
    previous = os.environ.get("LLM_COMPRESSOR_LOG_DISABLED")
    os.environ["LLM_COMPRESSOR_LOG_DISABLED"] = "true"
    try:
        for module in ("torch", "transformers", "compressed_tensors", "datasets", "llmcompressor"):
            try:
                __import__(module)
            except ImportError:
                missing.append(module)
    finally:
        if previous is None:
            os.environ.pop("LLM_COMPRESSOR_LOG_DISABLED", None)
        else:
            os.environ["LLM_COMPRESSOR_LOG_DISABLED"] = previous
    if missing:
        raise TrdeployError(f"`trdeploy quantize` needs {', '.join(missing)}, which is not installed.", hint=INSTALL_HINT)


def resolve_model(model: str) -> Path:
    """A local checkpoint folder, or the hub snapshot of `model` (downloaded or from the cache)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TrdeployError(f"{model} is a file, not a checkpoint folder.", hint="Pass the folder that holds config.json, or a hub id.")
        if not (path / "config.json").is_file():
            raise TrdeployError(f"{model} has no config.json: it is not a Hugging Face checkpoint folder.", hint="Pass the folder that holds config.json and the *.safetensors weights.")
        return path
    if looks_like_path(model):
        raise TrdeployError(f"The model folder {model} does not exist.", hint="Check the path, or pass a hub id like meta-llama/Meta-Llama-3-8B-Instruct.")
    from huggingface_hub import snapshot_download

    repo_id, revision = split_revision(model)
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"],
            )
        )
    except Exception as exc:  # every hub failure is one line the user can act on
        raise hub_error(repo_id, exc, instead="pass a local checkpoint folder") from exc


def weight_files_bytes(folder: Path) -> int:
    files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def inspect_model(path: Path) -> ModelFacts:
    """Read config.json and build the model on the meta device: shapes and sizes, no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise TrdeployError(f"Cannot read the model config in {path}: {str(exc).splitlines()[0][:200]}", hint="Pass a Hugging Face checkpoint folder with a valid config.json.") from exc
    architecture = (getattr(config, "architectures", None) or ["?"])[0]
    qcfg = getattr(config, "quantization_config", None)
    qmethod = (qcfg.get("quant_method") if isinstance(qcfg, dict) else getattr(qcfg, "quant_method", None)) if qcfg else None
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, torch.float32)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (ValueError, KeyError, TypeError) as exc:
        raise TrdeployError(
            f"transformers cannot build {architecture} as a causal language model: {str(exc).splitlines()[0][:200]}",
            hint="trdeploy quantizes decoder-only text models such as Llama-3.",
        ) from exc
    linear_in, linear_out = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in IGNORE and name not in IGNORE:
            linear_in[name] = module.in_features
            linear_out[name] = module.out_features
    params = list(model.parameters())
    dtype_bytes = torch.tensor([], dtype=dtype).element_size()
    layers = _decoder_layers(model, getattr(config, "num_hidden_layers", 0))
    layer_bytes = max((sum(p.numel() for p in layer.parameters()) * dtype_bytes for layer in layers), default=0)
    emb = model.get_input_embeddings()
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    facts = ModelFacts(
        path=path,
        architecture=architecture,
        model_type=getattr(config, "model_type", "?"),
        dtype=str(dtype).replace("torch.", ""),
        dtype_bytes=dtype_bytes,
        num_parameters=sum(p.numel() for p in params),
        parameter_bytes=sum(p.numel() for p in params) * dtype_bytes,
        layer_bytes=layer_bytes,
        embedding_bytes=emb.weight.numel() * dtype_bytes if emb is not None else 0,
        num_layers=len(layers),
        hidden_size=getattr(text_config, "hidden_size", 0),
        vocab_size=getattr(text_config, "vocab_size", 0),
        linear_in_features=linear_in,
        linear_out_features=linear_out,
        quantization_method=qmethod,
        weight_files_bytes=weight_files_bytes(path),
    )
    del model
    return facts


def _decoder_layers(model: Any, num_layers: int) -> list[Any]:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and num_layers and len(module) == num_layers:
            return list(module)
    return []


def validate_model(facts: ModelFacts, *, output_format: Format) -> None:
    """Raise a TrdeployError for anything that would make AWQ W4A16 g128 fail or be wrong."""
    from llmcompressor.modifiers.transform.awq import AWQ_MAPPING_REGISTRY

    if facts.quantization_method:
        raise TrdeployError(
            f"{facts.path} is already quantized ({facts.quantization_method}).",
            hint="Pass the original 16-bit checkpoint.",
        )
    reason = unsupported_architecture(facts.architecture, frozenset(AWQ_MAPPING_REGISTRY))
    if reason:
        raise TrdeployError(reason, hint="Use a supported architecture such as LlamaForCausalLM (Llama-3).")
    if not facts.linear_in_features:
        raise TrdeployError(f"{facts.architecture} has no Linear layers to quantize.", hint="Pass a transformer language model.")
    bad = group_size_offenders(facts.linear_in_features)
    if bad:
        listed = ", ".join(f"{k} (in_features {v})" for k, v in list(bad.items())[:4])
        raise TrdeployError(
            f"Group size {GROUP_SIZE} needs every quantized Linear's in_features to be a multiple of {GROUP_SIZE}; these are not: {listed}.",
            hint="This model's dimensions do not fit W4A16 group-128 quantization (vLLM's kernels need it too).",
        )
    if output_format == "awq":
        bad_out = {k: v for k, v in facts.linear_out_features.items() if v % 8}
        if bad_out:
            name, value = next(iter(bad_out.items()))
            raise TrdeployError(f"--format awq packs 8 int4 values per int32 along out_features; {name} has {value}.", hint="Use the default --format compressed-tensors.")


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises OSError, ValueError, TypeError... for a missing tokenizer
        raise TrdeployError(
            f"No usable tokenizer in {path} ({exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}).",
            hint="Put tokenizer.json and tokenizer_config.json in the model folder (for Llama-3: scripts/make_llama3_hf_tokenizer.py).",
        ) from exc
    if isinstance(tokenizer, bool) or not callable(tokenizer):
        raise TrdeployError(f"No usable tokenizer in {path}.", hint="Put tokenizer.json and tokenizer_config.json in the model folder.")
    return tokenizer


def available_cpu_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with compressed-tensors; /proc as a fallback
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return sys.maxsize


def peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value if sys.platform == "darwin" else value * 1024)


@contextlib.contextmanager
def _quiet_libraries(verbose: bool) -> Iterator[None]:
    """Keep stdout clean for --json and replace the libraries' own bars with our progress.

    llm-compressor logs through loguru to stdout; transformers, compressed-tensors and
    llm-compressor draw tqdm bars (some with an explicit `disable=False`), torch.fx and
    transformers warn about internals the user cannot act on. `verbose` keeps all of it.
    """
    import logging
    import warnings

    import tqdm.std
    from loguru import logger
    from transformers.utils import logging as hf_logging

    logger.remove()
    logger.add(sys.stderr, level="INFO" if verbose else "ERROR")
    logger.enable("llmcompressor")
    if verbose:
        yield
        return
    raw_init = tqdm.std.tqdm.__dict__["__init__"]
    bound_init = tqdm.std.tqdm.__init__

    def silent_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        bound_init(self, *args, **kwargs)

    bars_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    fx_logger = logging.getLogger("torch.fx._symbolic_trace")
    fx_level = fx_logger.level
    tqdm.std.tqdm.__init__ = silent_init  # type: ignore[method-assign]
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    fx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tqdm.std.tqdm.__init__ = raw_init  # type: ignore[method-assign]
        fx_logger.setLevel(fx_level)
        if bars_enabled:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)


@contextlib.contextmanager
def _cpu_pin_memory_workaround() -> Iterator[None]:
    """Let llm-compressor's AWQ run on a CPU-only torch.

    AWQModifier._apply_smoothing pins its cached activations (`IntermediatesCache.pin_memory`)
    before the grid search so that later host-to-device copies can be non-blocking. On a
    CPU-only torch `Tensor.pin_memory()` raises "Cannot access accelerator device when none is
    available". Pinning only speeds up copies to an accelerator that does not exist here, so
    skipping it changes nothing numerically. Applied only while no accelerator is available,
    and undone afterwards.
    """
    import torch

    if torch.accelerator.is_available():
        yield
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original  # type: ignore[method-assign]


def compute_device() -> Any:
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def describe_device(device: Any) -> str:
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device} ({props.name}, {props.total_memory / GIB:.0f} GiB)"
    return f"cpu ({os.cpu_count()} cores)"


def awq_recipe() -> list[Any]:
    """AWQ smoothing, then W4A16_ASYM round-to-nearest on the smoothed weights (llm-compressor 0.14 API)."""
    from llmcompressor.modifiers.transform.awq import AWQModifier

    return [AWQModifier(), *rtn_recipe()]


def rtn_recipe() -> list[Any]:
    """Plain round-to-nearest at the same scheme: the baseline AWQ must beat."""
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(targets=["Linear"], scheme=SCHEME, ignore=list(IGNORE))]


def load_model(path: Path, *, device: Any) -> Any:
    """The 16-bit model on the CPU; with CUDA, dispatched so that each module onloads to the GPU
    only while it runs (compressed-tensors offloading, which llm-compressor's pipelines use too)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    except (OSError, ValueError, RuntimeError) as exc:
        raise TrdeployError(f"Cannot load the weights in {path}: {str(exc).splitlines()[0][:200]}", hint="Check that the *.safetensors files are complete.") from exc
    model.eval()
    if device.type != "cpu":
        from compressed_tensors.offload import set_onload_device

        set_onload_device(model, device)
    return model


def perplexity(model: Any, windows: list[list[int]], *, device: Any, batch_size: int = 4, reporter: Reporter | None = None) -> float:
    """exp(mean next-token negative log-likelihood) over the windows (each scored on its own)."""
    import torch

    total_nll = 0.0
    total_tokens = 0
    done = 0
    with torch.no_grad():
        i = 0
        while i < len(windows):
            # batch consecutive windows of equal length (all but maybe the last one)
            batch = [windows[i]]
            while len(batch) < batch_size and i + len(batch) < len(windows) and len(windows[i + len(batch)]) == len(batch[0]):
                batch.append(windows[i + len(batch)])
            i += len(batch)
            ids = torch.tensor(batch, dtype=torch.long, device=device)
            with _onload_per_layer(model):
                logits = model(input_ids=ids, use_cache=False).logits
            for row in range(ids.shape[0]):
                lp = torch.log_softmax(logits[row, :-1].float(), dim=-1)
                nll = -lp.gather(-1, ids[row, 1:].unsqueeze(-1)).squeeze(-1)
                total_nll += float(nll.double().sum())
                total_tokens += nll.numel()
            del logits
            done += len(batch)
            if reporter:
                reporter.update(done)
    return math.exp(total_nll / total_tokens) if total_tokens else float("nan")


def probe_logits(model: Any, ids: list[int], *, device: Any) -> Any:
    import torch

    with torch.no_grad(), _onload_per_layer(model):
        return model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0].float().cpu()


def logits_cosine(a: Any, b: Any) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@contextlib.contextmanager
def _onload_per_layer(model: Any) -> Iterator[None]:
    """Keep each decoder layer's tensors onloaded while that layer runs (offloaded models).

    On a model offloaded by compressed-tensors (`set_onload_device`), every read of an offloaded
    tensor onto an accelerator is a fresh copy. Within `disable_offloading` a tensor is onloaded
    once and the same copy is returned until the context exits, which is how llm-compressor's
    sequential pipeline runs each subgraph. Doing it per decoder layer keeps GPU memory at one
    layer (plus embedding and head) and onloads each weight once per pass.
    """
    from compressed_tensors.offload import disable_offloading

    layers = _decoder_layers(model, getattr(getattr(model, "config", None), "num_hidden_layers", 0))
    if not layers:
        with disable_offloading():
            yield
        return
    open_contexts: dict[int, Any] = {}

    def enter(module: Any, _args: Any) -> None:
        context = disable_offloading()
        context.__enter__()
        open_contexts[id(module)] = context

    def leave(module: Any, _args: Any, _output: Any) -> None:
        context = open_contexts.pop(id(module), None)
        if context is not None:
            context.__exit__(None, None, None)

    hooks = [h for layer in layers for h in (layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave))]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for context in reversed(list(open_contexts.values())):
            context.__exit__(None, None, None)
        open_contexts.clear()


def run_oneshot(model: Any, tokenizer: Any, recipe: list[Any], calibration: CalibrationSet | None, *, max_seq_len: int, reporter: Reporter | None = None) -> None:
    """llm-compressor's oneshot on an already loaded model (modifies it in place)."""
    from datasets import Dataset
    from llmcompressor import oneshot

    kwargs: dict[str, Any] = {}
    if calibration is not None:
        kwargs = {
            "dataset": Dataset.from_dict({"input_ids": calibration.samples, "attention_mask": [[1] * len(s) for s in calibration.samples]}),
            "num_calibration_samples": len(calibration.samples),
            "max_seq_length": max_seq_len,
            "shuffle_calibration_samples": False,
        }
    hooks = _layer_progress_hooks(model, reporter) if reporter else []
    try:
        with _cpu_pin_memory_workaround():
            oneshot(model=model, processor=tokenizer, recipe=recipe, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()


def _layer_progress_hooks(model: Any, reporter: Reporter) -> list[Any]:
    """Report which decoder layer the sequential pipeline is calibrating."""
    layers = _decoder_layers(model, getattr(model.config, "num_hidden_layers", 0))
    state = {"seen": 0}
    hooks = []
    for index, layer in enumerate(layers):

        def hook(_module: Any, _args: Any, index: int = index) -> None:
            if index + 1 > state["seen"]:
                state["seen"] = index + 1
                reporter.update(index)

        hooks.append(layer.register_forward_pre_hook(hook))
    return hooks


def _release() -> None:
    """Free a model the caller has just dropped (llm-compressor's session still points at it)."""
    import torch
    from llmcompressor.core import reset_session

    reset_session()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _quantized_linear(module: Any) -> bool:
    import torch

    scheme = getattr(module, "quantization_scheme", None)
    return isinstance(module, torch.nn.Linear) and scheme is not None and getattr(scheme, "weights", None) is not None


def _quantize_dequantize(module: Any, weight: Any) -> Any:
    """A quantized Linear's weight as its checkpoint holds it: quantized to integers with the
    module's own scales and zero points, by the function the compressor calls when it writes the
    checkpoint, then dequantized as the loader does.

    Not compressed-tensors' fused fake quantization (the quantize-on-the-fly forward): on CUDA the
    two round differently. The compressor's `quantize` runs a Triton kernel that divides by the
    scale in float32; the fused fake quantization divides and adds the zero point in the weight's
    dtype (bfloat16 keeps 8 significant bits), so values near a rounding boundary land on the
    neighbouring integer. Seen on an H100 (8B-shaped model): every Linear weight differed by about
    3% (relative, through the fingerprint projection) between the two, while on the CPU, where
    both use the same torch arithmetic, they are equal.
    """
    import torch
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize

    args = module.quantization_scheme.weights
    scale = module.weight_scale
    zero_point = getattr(module, "weight_zero_point", None)
    global_scale = getattr(module, "weight_global_scale", None)
    q = quantize(x=weight, scale=scale, zero_point=zero_point, args=args, dtype=torch.int8, global_scale=global_scale)
    return dequantize(q, scale=scale, zero_point=zero_point, args=args, dtype=weight.dtype, global_scale=global_scale)


def _projection(value: Any, cache: dict[Any, Any]) -> Any:
    """A fingerprint of a tensor: 1-D tensors whole, matrices times a fixed random vector (float32, CPU)."""
    import torch

    value = value.detach()
    if value.dim() < 2:
        return value.float().cpu()
    cols = value.shape[-1]
    key = (cols, str(value.device))
    if key not in cache:
        cache[key] = torch.randn(cols, generator=torch.Generator().manual_seed(cols), dtype=torch.float32).to(value.device)
    return (value.reshape(-1, cols).float() @ cache[key]).cpu()


def _weight_fingerprints(model: Any) -> dict[str, Any]:
    """Fingerprints of every parameter as the checkpoint must hold it.

    A Linear that llm-compressor quantized (status frozen) contributes its weight quantized with its
    own scales and zero points and dequantized (`_quantize_dequantize`), which is exactly what the
    checkpoint's int4 values decompress to; its scales and zero points themselves are skipped.
    A reloaded checkpoint (decompressed) contributes its weights as they are. Works on offloaded
    models: each module's tensors are onloaded once.
    """
    import torch
    from compressed_tensors.offload import disable_offloading
    from compressed_tensors.quantization import QuantizationStatus

    out: dict[str, Any] = {}
    cache: dict[Any, Any] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            quantized = _quantized_linear(module)
            fake_quantize = quantized and getattr(module, "quantization_status", None) not in (QuantizationStatus.COMPRESSED, QuantizationStatus.DECOMPRESSED)
            with disable_offloading():
                for pname, param in module.named_parameters(recurse=False):
                    if param is None or (quantized and pname not in ("weight", "bias")):
                        continue
                    value = param.data
                    if fake_quantize and pname == "weight":
                        value = _quantize_dequantize(module, value)
                    out[f"{name}.{pname}" if name else pname] = _projection(value, cache)
    return out


def compare_fingerprints(expected: dict[str, Any], actual: dict[str, Any]) -> dict[str, Any]:
    """Relative error of each tensor's fingerprint; missing tensors and shape changes count as inf."""
    errors: dict[str, float] = {}
    for key, want in expected.items():
        got = actual.get(key)
        if got is None or got.shape != want.shape:
            errors[key] = math.inf
            continue
        norm = float(want.double().norm())
        diff = float((got.double() - want.double()).norm())
        errors[key] = diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)
    worst = sorted(errors, key=lambda k: errors[k], reverse=True)[:3]
    return {
        "tensors_checked": len(errors),
        "max_rel_error": max(errors.values()) if errors else 0.0,
        "worst": [[k, errors[k]] for k in worst],
        "failed": sorted(k for k, e in errors.items() if not e <= MAX_TENSOR_REL_ERROR),
    }


def reload_checkpoint(folder: Path, config_file: Path, *, output_format: Format = "compressed-tensors") -> Any:
    """The written checkpoint, reloaded on the CPU as a dense model (int4 weights dequantized).

    compressed-tensors: transformers' own loader, then compressed-tensors' decompression. awq:
    transformers needs gptqmodel for AWQ, so the folder is rebuilt with auto-round's reference
    AutoAWQ unpacking instead.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        if output_format == "awq":
            model = load_awq_gemm_reference(folder, config_file)
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, config=AutoConfig.from_pretrained(config_file))
            compressor = getattr(getattr(model, "hf_quantizer", None), "compressor", None)
            if compressor is not None:
                compressor.decompress_model(model)
    except Exception as exc:  # any failure here means the output is unusable
        raise RuntimeError(f"the written checkpoint does not reload: {exc}") from exc
    return model.eval()


def materialize_quantized_weights(model: Any) -> None:
    """Write each quantized Linear's int4 values (dequantized, as its checkpoint would hold them)
    into the model and switch its quantize-on-the-fly forward off: a plain forward then computes
    with the int4 values.

    Used for the round-to-nearest comparison, which is evaluated in memory: a plain forward reads
    the weight once, so the result does not depend on how an offloaded model onloads tensors.
    """
    import torch
    from compressed_tensors.offload import disable_offloading, update_offload_parameter

    with torch.no_grad():
        for module in model.modules():
            if not _quantized_linear(module):
                continue
            with disable_offloading():
                weight = module.weight.data
                update_offload_parameter(module, "weight", _quantize_dequantize(module, weight).to(weight.dtype))
            module.quantization_enabled = False


# --------------------------------------------------------------------------------------------
# --format awq: the classic AutoAWQ GEMM layout
# --------------------------------------------------------------------------------------------
#
# AutoAWQ is deprecated, so the layout is written here from the quantized values llm-compressor
# computed (the same integers the compressed-tensors checkpoint holds), per AutoAWQ's GEMM spec:
#   qweight [in, out/8] int32, qzeros [in/group, out/8] int32: eight unsigned 4-bit values per
#   int32, nibble i holding column AWQ_PACK_ORDER[i] of each block of eight;
#   scales  [in/group, out] float16;  weight = (q - zero) * scale.
# compressed-tensors stores signed int4 (q and zero point in [-8, 7]); AWQ's unsigned values are
# those plus 8, so (q - zero) and the dequantized weight are unchanged.
# The written folder is checked by reloading it through auto-round's `dequantize_gemm` (a
# maintained copy of AutoAWQ's own unpacking), independent of the packing code below.

AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_SHARD_BYTES = 4 * GIB


def awq_quantization_config() -> dict[str, Any]:
    """config.json's quantization_config for the AutoAWQ GEMM layout (what vLLM's awq reader expects)."""
    return {"quant_method": "awq", "bits": NUM_BITS, "group_size": GROUP_SIZE, "zero_point": True, "version": "gemm", "modules_to_not_convert": None}


def pack_awq(values: Any) -> Any:
    """Pack unsigned 4-bit values [rows, cols] into int32 [rows, cols/8] in AutoAWQ's nibble order."""
    import torch

    rows, cols = values.shape
    if cols % 8:
        raise ValueError(f"AWQ packing needs a multiple of 8 columns, got {cols}")
    if values.min() < 0 or values.max() > 15:
        raise ValueError("AWQ packing needs values in [0, 15]")
    blocks = values.to(torch.int64).reshape(rows, cols // 8, 8)[:, :, list(AWQ_PACK_ORDER)]
    shifts = torch.arange(8, dtype=torch.int64, device=values.device) * 4
    packed = (blocks << shifts).sum(dim=-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # the same 32 bits as int32
    return packed.to(torch.int32)


def awq_gemm_tensors(module: Any) -> dict[str, Any]:
    """qweight / qzeros / scales (and bias) of one quantized Linear, on the CPU."""
    import torch
    from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize

    args = module.quantization_scheme.weights
    weight = module.weight.detach()
    scale = module.weight_scale.detach()
    zero = module.weight_zero_point.detach()
    q = ct_quantize(weight.float(), scale.float(), zero, args, dtype=torch.int8)  # signed int4 in [-8, 7]
    offset = 2 ** (NUM_BITS - 1)
    out = {
        "qweight": pack_awq((q.to(torch.int16) + offset).t().contiguous()).cpu(),
        "qzeros": pack_awq((zero.to(torch.int16) + offset).t().contiguous()).cpu(),
        "scales": scale.t().contiguous().to(torch.float16).cpu(),
    }
    if getattr(module, "bias", None) is not None:
        out["bias"] = module.bias.detach().to(torch.float16).cpu()
    return out


def save_awq_gemm(model: Any, folder: Path) -> None:
    """Write `model` (quantized in memory by llm-compressor) in the AutoAWQ GEMM layout, float16."""
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    quantized_prefixes = []
    for name, module in model.named_modules():
        if _quantized_linear(module):
            quantized_prefixes.append(name)
            for key, value in awq_gemm_tensors(module).items():
                tensors[f"{name}.{key}"] = value
            continue
        if any(name == p or name.startswith(p + ".") for p in quantized_prefixes):
            continue
        for key, param in module._parameters.items():
            if param is not None:
                tensors[f"{name}.{key}" if name else key] = param.detach().to(torch.float16).cpu()
        for key, buf in module._buffers.items():
            if buf is not None and key not in module._non_persistent_buffers_set:
                tensors[f"{name}.{key}" if name else key] = buf.detach().cpu()
    if getattr(model.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)

    shards: list[dict[str, Any]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > AWQ_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float16"
    config["quantization_config"] = awq_quantization_config()
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)


def load_awq_gemm_reference(folder: Path, config_file: Path) -> Any:
    """Rebuild a dense model from an AutoAWQ GEMM folder with auto-round's reference unpacking."""
    import torch
    from auto_round.export.export_to_awq.utils import dequantize_gemm
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads(config_file.read_text())
    qcfg = raw.pop("quantization_config", {})
    if qcfg.get("quant_method") != "awq" or qcfg.get("version") != "gemm":
        raise RuntimeError(f"config.json is not the AutoAWQ GEMM layout: {qcfg}")
    config = AutoConfig.for_model(**{k: v for k, v in raw.items() if k != "model_type"}, model_type=raw["model_type"])
    state: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(file)))
    for key in [k for k in state if k.endswith(".qweight")]:
        prefix = key[: -len(".qweight")]
        weight = dequantize_gemm(state.pop(key), state.pop(prefix + ".qzeros"), state.pop(prefix + ".scales").float(), qcfg["bits"], qcfg["group_size"])
        state[prefix + ".weight"] = weight.t().contiguous()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"AWQ checkpoint does not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("trdeploy", "llmcompressor", "compressed-tensors", "transformers", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name.replace("-", "_")] = metadata.version(name)
    return out


# --------------------------------------------------------------------------------------------
# The whole job
# --------------------------------------------------------------------------------------------


def quantize(request: QuantizeRequest, reporter: Reporter | None = None) -> dict[str, Any]:
    """Quantize `request.model` into `request.output`; return the report (also written there)."""
    reporter = reporter or Reporter()
    if request.output_format not in ("compressed-tensors", "awq"):
        raise TrdeployError(f"Unknown --format {request.output_format!r}.", hint="Use compressed-tensors (default) or awq.")
    if request.eval_seq_len < 64:
        raise TrdeployError(f"--eval-seq-len must be at least 64 (got {request.eval_seq_len}).", hint="512 is a good default.")
    output = Path(request.output).expanduser()
    ensure_writable(output, force=request.force, folder=True)
    stale = sorted(output.parent.glob(f".{output.name}.partial-*"))
    if stale:
        warn(f"{len(stale)} unfinished folder(s) from an interrupted run beside {output} ({stale[0].name}{', ...' if len(stale) > 1 else ''}); they are not checkpoints, delete them.")
    require_quantize_extra()
    import torch

    t_start = time.perf_counter()
    times: dict[str, float] = {}
    with _quiet_libraries(request.verbose):
        try:
            reporter.stage("Checking the model")
            model_path = resolve_model(request.model)
            if output.resolve() == model_path.resolve():
                raise TrdeployError("The output folder is the model folder.", hint="Pass another -o folder; the original is never overwritten.")
            facts = inspect_model(model_path)
            validate_model(facts, output_format=request.output_format)
            tokenizer = load_tokenizer(model_path)

            records = load_calibration_records(request.dataset, split=request.dataset_split, config_name=request.dataset_config, text_column=request.text_column)
            calibration = render_calibration(records, tokenizer, num_samples=request.num_samples, max_seq_len=request.max_seq_len, seed=request.seed)
            evaluation = render_evaluation(evaluation_texts(), tokenizer, seq_len=request.eval_seq_len, max_tokens=request.eval_tokens)

            device = compute_device()
            cuda = device.type == "cuda"
            estimate = estimate_memory(facts, num_samples=len(calibration.samples), max_seq_len=request.max_seq_len, eval_seq_len=request.eval_seq_len, cuda=cuda)
            gpu_free = torch.cuda.mem_get_info(device)[0] if cuda else None
            problem = memory_problem(estimate, cpu_available=available_cpu_memory(), gpu_free=gpu_free)
            if problem:
                raise TrdeployError(problem, hint="Use a machine with more memory, or fewer --num-samples / a shorter --max-seq-len.")
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            torch.manual_seed(request.seed)

            with atomic_directory(output, force=request.force) as tmp:
                report = _quantize_into(tmp, output, request, model_path, facts, tokenizer, calibration, evaluation, device, estimate, reporter, times)
                reporter.stage("Writing the report and moving the checkpoint into place")
                times["total"] = round(time.perf_counter() - t_start, 2)
                report["time_s"] = times
                report["peak_memory"] = {
                    "gpu_bytes": int(torch.cuda.max_memory_allocated(device)) if cuda else None,
                    "cpu_rss_bytes": peak_rss_bytes(),
                }
                (tmp / REPORT_NAME).write_text(to_json(report) + "\n", encoding="utf-8")
                (tmp / MODEL_CARD_NAME).write_text(render_model_card(report), encoding="utf-8")
                # Last step inside the temporary folder: it becomes a loadable checkpoint only now.
                os.replace(tmp / _PENDING_CONFIG, tmp / "config.json")
            return report
        finally:
            reporter.close()


def _timed(times: dict[str, float], key: str, start: float) -> None:
    times[key] = round(times.get(key, 0.0) + time.perf_counter() - start, 2)


def _quantize_into(
    tmp: Path,
    output: Path,
    request: QuantizeRequest,
    model_path: Path,
    facts: ModelFacts,
    tokenizer: Any,
    calibration: CalibrationSet,
    evaluation: EvaluationSet,
    device: Any,
    estimate: MemoryEstimate,
    reporter: Reporter,
    times: dict[str, float],
) -> dict[str, Any]:
    batch = EVAL_BATCH_GPU if device.type == "cuda" else 1
    n_windows = len(evaluation.windows)

    t = time.perf_counter()
    reporter.stage(f"Loading {facts.architecture} ({facts.num_parameters / 1e9:.2f}B parameters)")
    model = load_model(model_path, device=device)
    _timed(times, "load", t)

    t = time.perf_counter()
    reporter.stage("Perplexity of the original (held-out Turkish)", n_windows)
    ppl_original = perplexity(model, evaluation.windows, device=device, batch_size=batch, reporter=reporter)
    _timed(times, "evaluate", t)

    t = time.perf_counter()
    reporter.stage(f"AWQ on {len(calibration.samples)} Turkish samples (decoder layer)", facts.num_layers or None)
    run_oneshot(model, tokenizer, awq_recipe(), calibration, max_seq_len=request.max_seq_len, reporter=reporter)
    _timed(times, "awq", t)

    t = time.perf_counter()
    reporter.stage(f"Writing the {request.output_format} checkpoint")
    # What the checkpoint must hold: every tensor as the quantized model computes with it.
    expected = _weight_fingerprints(model)
    probe = evaluation.windows[0][:PROBE_TOKENS]
    in_memory_logits = probe_logits(model, probe, device=device)
    tokenizer.save_pretrained(tmp)
    if request.output_format == "awq":
        save_awq_gemm(model, tmp)
    else:
        model.save_pretrained(tmp, save_compressed=True)
    # Until it is verified, the (hidden, `.partial-`) folder has no config.json, so nothing
    # loads it as a checkpoint if the run dies from here on.
    os.replace(tmp / "config.json", tmp / _PENDING_CONFIG)
    _timed(times, "save", t)
    del model
    _release()

    # The checkpoint itself is checked and evaluated, not the model in memory: what is reported is
    # what a server will load.
    t = time.perf_counter()
    reporter.stage("Reloading the output and checking every tensor")
    try:
        reloaded = reload_checkpoint(tmp, tmp / _PENDING_CONFIG, output_format=request.output_format)
    except RuntimeError as exc:
        raise TrdeployError(f"The quantized checkpoint failed verification: {str(exc).splitlines()[0][:200]}", hint="Nothing was written. Rerun with --verbose and report the problem.") from exc
    check = compare_fingerprints(expected, _weight_fingerprints(reloaded))
    del expected
    if check["failed"]:
        worst = ", ".join(f"{k} ({e:.3g})" for k, e in check["worst"])
        raise TrdeployError(
            f"The written checkpoint does not hold the quantized weights: {len(check['failed'])} of {check['tensors_checked']} tensors differ (relative error; worst: {worst}).",
            hint="Nothing was written. Rerun with --verbose and report the problem.",
        )
    _timed(times, "verify", t)

    t = time.perf_counter()
    reporter.stage("Perplexity of the written checkpoint", n_windows)
    if device.type != "cpu":
        from compressed_tensors.offload import set_onload_device

        set_onload_device(reloaded, device)
    ppl_awq = perplexity(reloaded, evaluation.windows, device=device, batch_size=batch, reporter=reporter)
    probe_cosine = logits_cosine(in_memory_logits, probe_logits(reloaded, probe, device=device))
    del reloaded
    _release()
    _timed(times, "evaluate", t)
    if not math.isfinite(ppl_awq):
        raise TrdeployError(f"The written checkpoint gives a non-finite perplexity ({ppl_awq}).", hint="Nothing was written. Rerun with --verbose and report the problem.")
    loader = "auto-round dequantize_gemm (AutoAWQ reference)" if request.output_format == "awq" else "transformers AutoModelForCausalLM"
    verification = {
        "reloaded": True,
        "loader": loader,
        "tensors_checked": check["tensors_checked"],
        "max_tensor_rel_error": round(check["max_rel_error"], 8),
        "worst_tensor": check["worst"][0][0] if check["worst"] else None,
        "threshold": MAX_TENSOR_REL_ERROR,
        "perplexity_from": "the reloaded checkpoint",
        # Diagnostic: does the in-memory quantize-on-the-fly forward agree with the checkpoint?
        "in_memory_logits_cosine": round(probe_cosine, 6),
        "probe_tokens": len(probe),
    }

    ppl_rtn = None
    if request.compare_rtn:
        t = time.perf_counter()
        reporter.stage("Round-to-nearest for comparison")
        rtn_model = load_model(model_path, device=device)
        run_oneshot(rtn_model, tokenizer, rtn_recipe(), None, max_seq_len=request.max_seq_len)
        materialize_quantized_weights(rtn_model)
        reporter.stage("Perplexity after round-to-nearest", n_windows)
        ppl_rtn = perplexity(rtn_model, evaluation.windows, device=device, batch_size=batch, reporter=reporter)
        del rtn_model
        _release()
        _timed(times, "rtn", t)

    perplexities = {"original": _round(ppl_original), "awq": _round(ppl_awq), "rtn": _round(ppl_rtn)}
    warnings = quality_warnings(perplexities, request.max_ppl_increase_pct)
    if calibration.requested > len(calibration.samples):
        warnings.append(f"Only {len(calibration.samples)} calibration samples were available (asked for {calibration.requested}).")
    size_quantized = weight_files_bytes(tmp)
    size_original = facts.weight_files_bytes or facts.parameter_bytes
    out_str = str(output)
    serve = f"vllm serve {out_str}" if request.output_format == "compressed-tensors" else f"vllm serve {out_str} --dtype float16"
    note = (
        "vLLM reads the compressed-tensors `quantization_config` in config.json and picks its int4 kernels itself: no --quantization flag."
        if request.output_format == "compressed-tensors"
        else "AutoAWQ GEMM layout (`quant_method: awq`, version gemm); vLLM detects it and uses awq_marlin where it can. The AWQ kernels want float16."
    )
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model": request.model,
        "model_path": str(model_path),
        "architecture": facts.architecture,
        "num_parameters": facts.num_parameters,
        "output": out_str,
        "format": request.output_format,
        "method": "awq",
        "scheme": SCHEME,
        "num_bits": NUM_BITS,
        "group_size": GROUP_SIZE,
        "symmetric": False,
        "ignore": list(IGNORE),
        "calibration": calibration.summary(),
        "evaluation": evaluation.summary(),
        "perplexity": perplexities,
        "perplexity_delta_pct": {"awq": delta_pct(ppl_original, ppl_awq), "rtn": delta_pct(ppl_original, ppl_rtn)},
        "warning_threshold_pct": request.max_ppl_increase_pct,
        "warnings": warnings,
        "size_bytes": {"original": int(size_original), "quantized": int(size_quantized)},
        "compression_ratio": round(size_original / size_quantized, 3) if size_quantized else None,
        "device": describe_device(device),
        "memory_estimate": estimate.as_dict(),
        "verification": verification,
        "versions": package_versions(),
        "vllm": {"serve": serve, "quantization_flag": None, "note": note},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
