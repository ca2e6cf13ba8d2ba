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

import math
import os
import time
from pathlib import Path
from typing import Any, ClassVar

from trdeploy.args import Args, arg
from trdeploy.errors import TrdeployError
from trdeploy.output import atomic_directory, ensure_writable, to_json, warn
from trdeploy.quant.awq_export import NUM_BITS, package_versions, save_awq_gemm
from trdeploy.quant.calibration import (
    CalibrationSet,
    EvaluationSet,
    evaluation_texts,
    load_calibration_records,
    render_calibration,
    render_evaluation,
)
from trdeploy.quant.checks import (
    DEFAULT_EVAL_SEQ_LEN,
    DEFAULT_EVAL_TOKENS,
    DEFAULT_MAX_PPL_INCREASE_PCT,
    DEFAULT_MAX_SEQ_LEN,
    DEFAULT_NUM_SAMPLES,
    EVAL_BATCH_GPU,
    GROUP_SIZE,
    REPORT_NAME,
    MemoryEstimate,
    ModelFacts,
    delta_pct,
    estimate_memory,
    memory_problem,
    quality_warnings,
    render_model_card,
)
from trdeploy.quant.model_io import (
    IGNORE,
    MAX_TENSOR_REL_ERROR,
    SCHEME,
    Format,
    Reporter,
    _quiet_libraries,
    _release,
    _weight_fingerprints,
    available_cpu_memory,
    awq_recipe,
    compare_fingerprints,
    compute_device,
    describe_device,
    inspect_model,
    load_model,
    load_tokenizer,
    logits_cosine,
    materialize_quantized_weights,
    peak_rss_bytes,
    perplexity,
    probe_logits,
    reload_checkpoint,
    require_quantize_extra,
    resolve_model,
    rtn_recipe,
    run_oneshot,
    validate_model,
    weight_files_bytes,
)

MODEL_CARD_NAME = "README.md"
REPORT_SCHEMA_VERSION = 1
# config.json goes by this name until the written checkpoint has been verified.
_PENDING_CONFIG = "config.json.incomplete"
# Tokens of the diagnostic probe: logits of the quantized model in memory (compressed-tensors'
# quantize-on-the-fly forward) against the reloaded checkpoint's, reported, not a pass criterion.
PROBE_TOKENS = 64
class QuantizeRequest(Args):
    """Everything `trdeploy quantize` takes: the one source of its defaults, ranges and allowed values
    (the CLI's options read them)."""

    command: ClassVar[str] = "quantize"

    model: str = arg(..., help="Hub id (e.g. meta-llama/Meta-Llama-3-8B-Instruct) or local checkpoint folder (16-bit).")
    output: Path = arg(..., help="The folder to write.")
    dataset: str | None = arg(
        None,
        help="Calibration data: a .jsonl/.json/.parquet file or folder, or a hub dataset id. Rows: `messages` (chat) or a text column. "
        "Default: the embedded Turkish chats.",
    )
    dataset_split: str = arg("train", help="Split of a hub dataset.")
    dataset_config: str | None = arg(None, help="Config (subset) name of a hub dataset.")
    text_column: str | None = arg(None, help="Column to calibrate on (default: `messages`, else `text`).")
    num_samples: int = arg(DEFAULT_NUM_SAMPLES, ge=1, help="Calibration samples.")
    max_seq_len: int = arg(DEFAULT_MAX_SEQ_LEN, ge=16, help="Tokens per calibration sample (longer ones are cut).")
    compare_rtn: bool = arg(False, flag="--compare", help="Also quantize with plain round-to-nearest (same scheme) and report its perplexity.")
    output_format: Format = arg(
        "compressed-tensors",
        flag="--format",
        help="compressed-tensors (vLLM detects it, no flags) or awq (classic AutoAWQ GEMM layout for engines that read only that).",
    )
    eval_tokens: int = arg(DEFAULT_EVAL_TOKENS, ge=64, help="At most this many held-out Turkish tokens for perplexity.")
    eval_seq_len: int = arg(DEFAULT_EVAL_SEQ_LEN, ge=64, help="Perplexity window length.")
    max_ppl_increase_pct: float = arg(
        DEFAULT_MAX_PPL_INCREASE_PCT, ge=0.0, flag="--max-ppl-increase", help="Warn when quantized perplexity rises more than this many percent."
    )
    seed: int = arg(0, help="Seed for the calibration sample order.")
    force: bool = arg(False, help="Overwrite existing output.")
    verbose: bool = arg(False, help="Show llm-compressor's and transformers' own logs and bars.")


def quantize(request: QuantizeRequest, reporter: Reporter | None = None) -> dict[str, Any]:
    """Quantize `request.model` into `request.output`; return the report (also written there)."""
    reporter = reporter or Reporter()
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

            with atomic_directory(output, force=request.force, inputs={"MODEL": model_path}) as tmp:
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
