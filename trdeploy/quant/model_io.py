"""The environment and I/O edges of `trdeploy quantize`: the extra, the device, the checkpoint (local or
hub), the meta-device inspection, llm-compressor's oneshot, perplexity, reload and the tensor check."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from trdeploy.errors import TrdeployError
from trdeploy.hub import hub_error, looks_like_path, split_revision
from trdeploy.quant.awq_export import _quantized_linear, load_awq_gemm_reference
from trdeploy.quant.calibration import (
    CalibrationSet,
)
from trdeploy.quant.checks import GIB, GROUP_SIZE, ModelFacts, group_size_offenders, unsupported_architecture

SCHEME = "W4A16_ASYM"
IGNORE = ("lm_head",)
# Every tensor of the reloaded checkpoint must match the in-memory quantized model this closely
# (relative error of a fixed random projection of the tensor). Writing the same integers gave 0.0
# (compressed-tensors) and 2.4e-4 (--format awq, float16 tensors) on a tiny Llama; a tensor written
# unquantized, with other scales or without AWQ's smoothing differs by the int4 rounding itself.
MAX_TENSOR_REL_ERROR = 0.005
INSTALL_HINT = "Install the quantization extra: pip install 'trdeploy[quantize]' (install the torch build for your machine first)."
Format = Literal["compressed-tensors", "awq"]
class Reporter:
    """Progress sink. The CLI passes one that draws rich progress bars; the default is silent."""

    def stage(self, description: str, total: int | None = None) -> None:
        """A new step starts (total: how many units it has, if known)."""

    def update(self, completed: int) -> None:
        """How many units of the current step are done."""

    def close(self) -> None:
        """The run ended (successfully or not)."""


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
    from trdeploy.sizing.architectures import check_safetensors_file

    for weights in sorted(Path(path).glob("*.safetensors")):  # fail now, in one line, not at the load minutes later
        check_safetensors_file(weights)
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
    except Exception as exc:
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
