"""Calibrations: the latency and memory models' free parameters for one GPU tier, with the points they came from.

A `Calibration` (YAML, written by `trdeploy calibrate`) holds, for one tier: one or more runs (a model shape,
its quantization, the engine arguments vLLM ran with, what the server reported about its KV cache, and every
measured point), the fitted parameters (trdeploy.sizing.latency.LatencyParams; the CUDA-visible memory the
KV cache accounting starts from), and the error of the model on every point before and after calibration,
leave-one-out (each point predicted by a fit to the others).

The files shipped for the H100 and H200 (trdeploy/data/calibrations/) are made by this module's
`fit_calibration` from the points in tests/data (scripts/make_calibrations.py), the same code a user's
`trdeploy calibrate` runs. `resolve` gives `tune` what to predict a tier with: a calibration passed with
`--calibration`, else the tier's shipped one, else the H100's parameters on the tier's datasheet figures.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from trdeploy import __version__
from trdeploy.deployment import CalibrationRef, EngineArgs, ModelInfo, Quantization
from trdeploy.errors import TrdeployError
from trdeploy.inputs import load_yaml, read_limited, validate_document
from trdeploy.output import write_atomic
from trdeploy.sizing.architectures import Architecture
from trdeploy.sizing.batching import Engine, Load, Mix
from trdeploy.sizing.fit import METRICS, FitResult, Observation, errors, fit_multistart, leave_one_out, summarize_errors
from trdeploy.sizing.gpus import GpuSpec, get_gpu
from trdeploy.sizing.latency import INT4_WIDE_HIDDEN, PRIOR, LatencyParams, StepModel, step_model
from trdeploy.sizing.memory import KV_BLOCK_SIZE, kv_cache_tokens_for_blocks, predict_kv_cache

SCHEMA_VERSION = 1
KIND = "trdeploy-calibration"
MAX_CALIBRATION_BYTES = 8 * 1024 * 1024  # a sweep's calibration is about 20 KB; a big --from-bench one well under 1 MB
_HINT = "Pass the file `trdeploy calibrate -o` wrote."
REFERENCE_TIER = "h100"  # tiers without a calibration use its latency parameters (on their own datasheet figures)
SHIPPED_PACKAGE = "trdeploy.data"
SHIPPED_FOLDER = "calibrations"
# Starting values of the API server's per-token work tried by the fit (its cost landscape has a local
# minimum on each side of the regime where the API server paces the streams).
FRONTEND_STARTS = (0.02, 0.08)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PointLoad(_Strict):
    arrivals: Literal["closed", "poisson"]
    concurrency: int | None = Field(None, ge=1)  # closed: clients; poisson: the cap (None: none)
    request_rate: float | None = Field(None, gt=0)
    burstiness: float = Field(1.0, gt=0)
    num_requests: int = Field(..., ge=1)
    seed: int = Field(0, ge=0)  # bench's seed: the arrival times of a rate-driven run follow from it

    def to_load(self) -> Load:
        if self.arrivals == "closed":
            return Load.closed(self.concurrency or 1, self.num_requests)
        return Load.poisson(self.request_rate or 1.0, self.num_requests, seed=self.seed, burstiness=self.burstiness, concurrency=self.concurrency)

    def label(self) -> str:
        if self.arrivals == "closed":
            return f"c{self.concurrency}"
        return f"{self.request_rate:g}/s" + (f" c<={self.concurrency}" if self.concurrency else "")


class Timings(_Strict):
    """Means over a point's requests (ms): bench's own (client) and vLLM's histograms (server: from the request's
    arrival in the API server; queue and prefill are the engine's). The fit uses one figure made from them
    (Measured.ttft_outside_engine_mean_ms); the rest are kept for the record."""

    client_ttft_mean_ms: float | None = Field(None, ge=0)
    client_e2e_mean_ms: float | None = Field(None, ge=0)
    server_ttft_mean_ms: float | None = Field(None, ge=0)
    server_e2e_mean_ms: float | None = Field(None, ge=0)
    queue_mean_ms: float | None = Field(None, ge=0)
    prefill_mean_ms: float | None = Field(None, ge=0)
    decode_mean_ms: float | None = Field(None, ge=0)

    @classmethod
    def from_bench_run(cls, run: dict[str, Any]) -> Timings | None:
        server = (run.get("server_metrics") or {}).get("mean_ms") or {}

        def num(v: Any) -> float | None:
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 else None

        t = cls(
            client_ttft_mean_ms=num(run.get("mean_ttft_ms")),
            client_e2e_mean_ms=num(run.get("mean_e2el_ms")),
            server_ttft_mean_ms=num(server.get("ttft")),
            server_e2e_mean_ms=num(server.get("e2el")),
            queue_mean_ms=num(server.get("queue")),
            prefill_mean_ms=num(server.get("prefill")),
            decode_mean_ms=num(server.get("decode")),
        )
        return t if any(v is not None for v in t.model_dump().values()) else None

    @property
    def ttft_outside_engine_mean_ms(self) -> float | None:
        """bench's mean TTFT less vLLM's mean queue + prefill time, when both are there and it is positive."""
        parts = (self.client_ttft_mean_ms, self.queue_mean_ms, self.prefill_mean_ms)
        if any(v is None for v in parts):
            return None
        value = parts[0] - parts[1] - parts[2]  # type: ignore[operator]
        return value if value > 0 else None


class Measured(_Strict):
    """What bench measured (ms; output tokens per second)."""

    ttft_p50_ms: float | None = Field(None, gt=0)
    ttft_p95_ms: float | None = Field(None, gt=0)
    tpot_p50_ms: float | None = Field(None, gt=0)
    e2e_p95_ms: float | None = Field(None, gt=0)
    output_throughput: float | None = Field(None, gt=0)
    # bench's mean TTFT less vLLM's mean queue + prefill time (from /metrics; trdeploy.sizing.fit.METRIC_WEIGHTS)
    ttft_outside_engine_mean_ms: float | None = Field(None, gt=0)

    def values(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}

    @classmethod
    def from_bench_run(cls, run: dict[str, Any], timings: Timings | None = None) -> Measured:
        """From one run of a bench report (or bench's summary of a point with its server_metrics: the same keys);
        `timings`: the run's, when the caller has them already."""
        timings = timings or Timings.from_bench_run(run)
        return cls(
            ttft_p50_ms=run.get("median_ttft_ms") or None,
            ttft_p95_ms=run.get("p95_ttft_ms") or None,
            tpot_p50_ms=run.get("median_tpot_ms") or None,
            e2e_p95_ms=run.get("p95_e2el_ms") or None,
            output_throughput=run.get("output_throughput") or None,
            ttft_outside_engine_mean_ms=timings.ttft_outside_engine_mean_ms if timings else None,
        )


class Point(_Strict):
    id: str
    prompt_tokens: int = Field(..., ge=1)
    output_tokens: int = Field(..., ge=1)
    cached_prompt_tokens: int = Field(0, ge=0)  # per request, served from the prefix cache (deliberately)
    load: PointLoad
    measured: Measured
    timings: Timings | None = None
    completed: int | None = Field(None, ge=0)
    failed: int = Field(0, ge=0)
    duration_s: float | None = Field(None, ge=0)
    prefix_cache_hit_rate: float | None = Field(None, ge=0, le=1)
    preemptions: float | None = Field(None, ge=0)
    fit: bool = True  # used in the fit; False: kept for the record (held out, or why_not_fit)
    why_not_fit: str | None = None
    source: str = ""
    error_before: dict[str, float] = Field(default_factory=dict)  # predicted / measured - 1, before calibration
    error_after: dict[str, float] = Field(default_factory=dict)  # the same after it (fitted points: leave-one-out)


class ModelShape(_Strict):
    """The architecture facts the models need (trdeploy.sizing.architectures.Architecture)."""

    name: str
    num_hidden_layers: int = Field(..., ge=1)
    hidden_size: int = Field(..., ge=1)
    intermediate_size: int = Field(..., ge=1)
    num_attention_heads: int = Field(..., ge=1)
    num_key_value_heads: int = Field(..., ge=1)
    head_dim: int = Field(..., ge=1)
    vocab_size: int = Field(..., ge=1)
    max_position_embeddings: int = Field(..., ge=1)
    tie_word_embeddings: bool = False

    def arch(self) -> Architecture:
        return Architecture(**self.model_dump())

    @classmethod
    def from_arch(cls, arch: Architecture) -> ModelShape:
        return cls(**{k: getattr(arch, k) for k in cls.model_fields})

    @classmethod
    def from_profile(cls, model: ModelInfo) -> ModelShape:
        data = model.model_dump()
        return cls(name=model.id, tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
                   **{k: data[k] for k in cls.model_fields if k not in ("name", "tie_word_embeddings")})  # fmt: skip


class ServerFacts(_Strict):
    """What the server said about itself (vllm:cache_config_info labels, /version, /v1/models)."""

    vllm_version: str | None = None
    num_gpu_blocks: int | None = Field(None, ge=0)
    block_size: int | None = Field(None, ge=1)
    kv_cache_size_tokens: int | None = Field(None, ge=0)  # what vLLM logs as "GPU KV cache size: N tokens"
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    cache_dtype: str | None = None
    enable_prefix_caching: bool | None = None
    max_model_len: int | None = Field(None, ge=1)


class KvCheck(_Strict):
    """KV cache tokens (vLLM's "GPU KV cache size") measured, and predicted before and after calibration."""

    measured_tokens: int
    predicted_before: int
    predicted_after: int
    after_is_fitted: bool  # True when this run's own start-up fitted the memory parameter (no held-out start)

    def error_before(self) -> float:
        return self.predicted_before / self.measured_tokens - 1.0

    def error_after(self) -> float:
        return self.predicted_after / self.measured_tokens - 1.0


class Run(_Strict):
    """One server start: a model on the tier with fixed engine arguments, and the points measured on it."""

    id: str
    model: ModelShape
    quantization: Quantization = "none"
    engine_args: EngineArgs
    compile_cache: Literal["cold", "warm"] = "cold"
    server: ServerFacts = Field(default_factory=ServerFacts)
    kv: KvCheck | None = None
    points: list[Point] = Field(default_factory=list)
    source: str = ""


class GpuRef(_Strict):
    tier: str
    name: str | None = None


class ErrorStat(_Strict):
    median_abs: float
    p90_abs: float
    points: int


class Calibration(_Strict):
    schema_version: int = SCHEMA_VERSION
    kind: Literal["trdeploy-calibration"] = KIND
    name: str
    created_by: str = f"trdeploy {__version__}"
    created_at: str = ""
    gpu: GpuRef
    vllm_version: str = "0.25.0"
    prior: str = "datasheet"  # what the fit started from and the "before" errors are of
    latency: dict[str, float]
    fitted: list[str] = Field(default_factory=list)
    cuda_total_bytes: int | None = Field(None, ge=1)  # fitted from the KV cache sizes; None: the catalog's
    runs: list[Run]
    errors: dict[str, dict[str, ErrorStat]] = Field(default_factory=dict)  # before | after_leave_one_out | held_out
    sweep: dict[str, Any] | None = None
    notes: list[str] = Field(default_factory=list)

    @field_validator("latency")
    @classmethod
    def _all_parameters(cls, value: dict[str, float]) -> dict[str, float]:
        names = set(LatencyParams.names())
        if set(value) != names:
            missing, extra = sorted(names - set(value)), sorted(set(value) - names)
            raise ValueError(
                f"latency must hold exactly the model's parameters (missing {missing}, unknown {extra}): a calibration made by another "
                "version of trdeploy's latency model; make it again with this one (trdeploy calibrate, or --from-bench on its bench reports)"
            )
        if any(not (math.isfinite(v) and v > 0) for v in value.values()):
            raise ValueError("latency parameters must be positive numbers")
        return value

    @property
    def params(self) -> LatencyParams:
        return LatencyParams(**self.latency)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=110)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        return write_atomic(path, self.to_yaml(), force=force)

    def all_points(self) -> list[tuple[Run, Point]]:
        return [(r, p) for r in self.runs for p in r.points]

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration as untrusted input (a file people share): size checked before reading, nesting
        and aliases while parsing (trdeploy.inputs), every field when validating; any problem is one line."""
        path = Path(path)
        if not path.is_file():
            raise TrdeployError(f"No calibration at {path}.", hint="Make one with `trdeploy calibrate --url URL --profile P -o FILE`.")
        text = read_limited(path, limit=MAX_CALIBRATION_BYTES, what="calibration", hint=_HINT)
        return cls.parse_text(text, str(path))

    @classmethod
    def parse_text(cls, text: str | bytes, where: str) -> Calibration:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise TrdeployError(f"{where} is not UTF-8 text.", hint=_HINT) from None
        data = load_yaml(text, where=where, hint=_HINT)
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise TrdeployError(f"{where} is not a trdeploy calibration (no `kind: {KIND}`).", hint=_HINT)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise TrdeployError(
                f"{where} has calibration schema_version {data.get('schema_version')!r}; this trdeploy reads {SCHEMA_VERSION}.",
                hint="Run `trdeploy calibrate` again with this version.",
            )
        return validate_document(cls, data, where=where, what="calibration", hint=_HINT)


# ---------------------------------------------------------------------------------------------
# From runs to observations


def _gpu(tier: str, cuda_total_bytes: int | None = None) -> GpuSpec:
    gpu = get_gpu(tier)
    return replace(gpu, cuda_total_bytes=cuda_total_bytes) if cuda_total_bytes else gpu


def _kv(run: Run, gpu: GpuSpec, util: float | None = None):
    ea = run.engine_args
    return predict_kv_cache(
        run.model.arch(),
        gpu,
        tp=ea.tensor_parallel_size,
        max_model_len=ea.max_model_len,
        max_num_seqs=ea.max_num_seqs,
        max_num_batched_tokens=ea.max_num_batched_tokens,
        gpu_memory_utilization=util or run.server.gpu_memory_utilization or ea.gpu_memory_utilization,
        kv_cache_dtype=ea.kv_cache_dtype,
        quantization=run.quantization,
        compile_cache=run.compile_cache,
    )


def step_factory(run: Run, tier: str) -> Callable[[LatencyParams], StepModel]:
    gpu = get_gpu(tier)
    kv = _kv(run, gpu)
    arch = run.model.arch()

    def make(params: LatencyParams) -> StepModel:
        return step_model(
            arch, gpu, tp=run.engine_args.tensor_parallel_size, weights_parts=kv.weights_parts,
            kv_bytes_per_token=kv.kv_bytes_per_token, quantization=run.quantization, params=params,
        )  # fmt: skip

    return make


def run_engine(run: Run, tier: str, *, async_scheduling: bool = False) -> Engine:
    """The engine limits of a run; the KV capacity as the server reported it, else as predicted
    (`async_scheduling`: trdeploy.sizing.batching's module docstring)."""
    ea = run.engine_args
    s = run.server
    if s.num_gpu_blocks:
        capacity = s.num_gpu_blocks * (s.block_size or KV_BLOCK_SIZE)
    else:
        capacity = _kv(run, get_gpu(tier)).num_blocks * KV_BLOCK_SIZE
    return Engine(max_num_seqs=ea.max_num_seqs, max_num_batched_tokens=ea.max_num_batched_tokens, kv_capacity_tokens=capacity,
                  async_scheduling=async_scheduling)  # fmt: skip


def observations(runs: Sequence[Run], tier: str, *, fitted: bool | None = True, async_scheduling: bool = False) -> list[tuple[int, int, Observation]]:
    """(run index, point index, observation) for the runs' points (`fitted`: only points used in the fit, only
    the others, or all)."""
    out: list[tuple[int, int, Observation]] = []
    for r, run in enumerate(runs):
        if not run.points:
            continue
        make = step_factory(run, tier)
        engine = run_engine(run, tier, async_scheduling=async_scheduling)
        for k, p in enumerate(run.points):
            if fitted is not None and p.fit != fitted:
                continue
            obs = Observation(
                id=f"{run.id}/{p.id}", mix=Mix(p.prompt_tokens, p.output_tokens, p.cached_prompt_tokens),
                load=p.load.to_load(), engine=engine, measured=p.measured.values(), make_step=make,
            )  # fmt: skip
            out.append((r, k, obs))
    return out


def fittable(runs: Sequence[Run]) -> list[str]:
    """The parameters the runs' fitted points can inform."""
    names = ["step_overhead_ms", "per_sequence_ms", "kv_read_eff", "request_overhead_ms", "frontend_request_ms", "frontend_token_ms", "request_jitter_ms", "frontend_finish_ms"]
    for run in runs:
        if not any(p.fit for p in run.points):
            continue
        if run.quantization == "awq":
            names += ["int4_read_eff", "decode_gemm_factor_int4"]
            names.append("int4_gemm_eff_wide" if run.model.hidden_size >= (INT4_WIDE_HIDDEN * 3) // 4 else "int4_gemm_eff")
        else:
            names += ["weight_read_eff", "gemm_eff"]
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------
# Memory: the CUDA-visible total that reproduces the KV cache vLLM allocated


def _fit_cuda_total(run: Run, tier: str) -> float | None:
    """The CUDA-visible memory for which the accounting gives the run's measured block count (the middle of
    the range that does), or None without a measurement."""
    s = run.server
    if not s.num_gpu_blocks:
        return None
    kv = _kv(run, get_gpu(tier))
    per_block = kv.page_size_bytes * kv.num_layers
    util = s.gpu_memory_utilization or run.engine_args.gpu_memory_utilization
    spent = kv.weights_bytes + kv.activation_bytes + kv.non_torch_bytes
    return ((s.num_gpu_blocks + 0.5) * per_block + spent) / util


def predicted_kv_tokens(run: Run, tier: str, cuda_total: int | None) -> int:
    """What vLLM would log as "GPU KV cache size" for the run, with this CUDA-visible total (None: the catalog's)."""
    kv = _kv(run, _gpu(tier, cuda_total))
    return kv_cache_tokens_for_blocks(kv.num_blocks, run.engine_args.max_model_len)


def measured_kv_tokens(run: Run) -> int | None:
    """vLLM's "GPU KV cache size" for the run, as the server reported it."""
    s = run.server
    if s.kv_cache_size_tokens:
        return s.kv_cache_size_tokens
    if s.num_gpu_blocks:
        return kv_cache_tokens_for_blocks(s.num_gpu_blocks, run.engine_args.max_model_len)
    return None


def fit_memory(runs: Sequence[Run], tier: str, before: int | None) -> tuple[int | None, list[KvCheck | None]]:
    """The CUDA-visible total (mean over the runs' starts) and each start's KV check; with several starts a
    start is predicted from the others (held out), with one it is the fitted one."""
    totals = {r: t for r, run in enumerate(runs) if (t := _fit_cuda_total(run, tier)) is not None}
    if not totals:
        return None, [None] * len(runs)
    fitted = round(float(np.mean(list(totals.values()))))
    checks: list[KvCheck | None] = []
    for r, run in enumerate(runs):
        measured = measured_kv_tokens(run)
        if measured is None:
            checks.append(None)
            continue
        others = [t for k, t in totals.items() if k != r]
        held_out = bool(others)
        total = round(float(np.mean(others))) if held_out else fitted
        checks.append(
            KvCheck(measured_tokens=measured, predicted_before=predicted_kv_tokens(run, tier, before), predicted_after=predicted_kv_tokens(run, tier, total), after_is_fitted=not held_out)
        )
    return fitted, checks


# ---------------------------------------------------------------------------------------------
# The whole calibration


def _stats(per_point: Sequence[dict[str, float]]) -> dict[str, ErrorStat]:
    return {m: ErrorStat(**v) for m, v in summarize_errors(per_point).items()}  # type: ignore[arg-type]


def kv_stats(checks: Sequence[KvCheck | None], *, after: bool, held_out_only: bool) -> ErrorStat | None:
    vals = [abs(c.error_after() if after else c.error_before()) for c in checks if c is not None and (not held_out_only or not c.after_is_fitted)]
    if not vals:
        return None
    return ErrorStat(median_abs=float(np.median(vals)), p90_abs=float(np.percentile(vals, 90)), points=len(vals))


def fit_calibration(
    *,
    name: str,
    tier: str,
    runs: Sequence[Run],
    prior: LatencyParams = PRIOR,
    prior_name: str = "datasheet",
    vllm_version: str = "0.25.0",
    leave_one_out_errors: bool = True,
    sweep: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    created_at: str | None = None,
    progress: Callable[[str], None] | None = None,
    async_scheduling: bool = False,
) -> Calibration:
    """Fit the latency parameters to every fitted point of the runs (jointly), the CUDA-visible memory to their
    KV cache sizes, and record each point's error before (the prior) and after (leave-one-out for fitted
    points; the calibration's own prediction for held-out ones)."""
    say = progress or (lambda _msg: None)
    runs = [r.model_copy(deep=True) for r in runs]
    gpu = get_gpu(tier)
    fit_obs = observations(runs, tier, fitted=True, async_scheduling=async_scheduling)
    names = fittable(runs)
    say(f"fitting {len(names)} parameters to {len(fit_obs)} points")
    obs_list = [o for _, _, o in fit_obs]
    if obs_list:
        res = fit_multistart(prior, names, obs_list, prior=prior, starts=[{"frontend_token_ms": v} for v in FRONTEND_STARTS])
        params, fitted_names = res.params, list(res.fitted)
    else:
        params, fitted_names = prior, []
    for r, k, o in fit_obs:
        runs[r].points[k].error_before = errors(o.predict(prior), o)
    if obs_list and leave_one_out_errors:
        say(f"leave-one-out: {len(obs_list)} refits")
        loo = leave_one_out(FitResult(params=params, fitted=tuple(fitted_names), iterations=0, cost=0, rms_log_error=0, converged=True), obs_list, prior=prior)
        for (r, k, _), e in zip(fit_obs, loo, strict=True):
            runs[r].points[k].error_after = e
    held = observations(runs, tier, fitted=False, async_scheduling=async_scheduling)
    for r, k, o in held:
        runs[r].points[k].error_before = errors(o.predict(prior), o)
        runs[r].points[k].error_after = errors(o.predict(params), o)
    catalog_total = gpu.cuda_total_bytes
    cuda_total, checks = fit_memory(runs, tier, catalog_total)
    for run, check in zip(runs, checks, strict=True):
        run.kv = check
    errs: dict[str, dict[str, ErrorStat]] = {}
    errs["before"] = _stats([runs[r].points[k].error_before for r, k, _ in fit_obs])
    if leave_one_out_errors and fit_obs:
        errs["after_leave_one_out"] = _stats([runs[r].points[k].error_after for r, k, _ in fit_obs])
    if held:
        errs["held_out_before"] = _stats([runs[r].points[k].error_before for r, k, _ in held])
        errs["held_out"] = _stats([runs[r].points[k].error_after for r, k, _ in held])
    for key, after, only in (("before", False, False), ("after_leave_one_out", True, True)):
        stat = kv_stats(checks, after=after, held_out_only=only)
        if stat is not None and (key in errs or key == "before"):
            errs.setdefault(key, {})["kv_cache_tokens"] = stat
    return Calibration(
        name=name,
        created_at=created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        gpu=GpuRef(tier=gpu.tier, name=gpu.name),
        vllm_version=vllm_version,
        prior=prior_name,
        latency=params.as_dict(),
        fitted=fitted_names,
        cuda_total_bytes=cuda_total,
        runs=runs,
        errors=errs,
        sweep=sweep,
        notes=list(notes),
    )


# ---------------------------------------------------------------------------------------------
# What tune predicts with


def _shipped_files() -> dict[str, Any]:
    folder = resources.files(SHIPPED_PACKAGE) / SHIPPED_FOLDER
    return {p.name.removesuffix(".yaml"): p for p in folder.iterdir() if p.name.endswith(".yaml")} if folder.is_dir() else {}


@cache
def shipped(tier: str) -> Calibration | None:
    """The calibration that ships for a tier (trdeploy/data/calibrations/TIER.yaml), if any."""
    files = _shipped_files()
    if tier not in files:
        return None
    return Calibration.parse_text(files[tier].read_bytes(), f"trdeploy/data/calibrations/{tier}.yaml")


def shipped_tiers() -> list[str]:
    return sorted(_shipped_files())


@dataclass(frozen=True)
class TierModel:
    """What tune predicts a tier with: its GPU facts (CUDA-visible memory as calibrated), the latency
    parameters, and where both came from."""

    gpu: GpuSpec
    params: LatencyParams
    ref: CalibrationRef


def resolve(tier: str, calibration: Calibration | None = None, source: str | None = None) -> TierModel:
    """`calibration` (given with --calibration) for its own tier; else the tier's shipped calibration; else the
    H100's latency parameters with the tier's datasheet figures (its speed was not measured)."""
    gpu = get_gpu(tier)
    if calibration is not None and calibration.gpu.tier == gpu.tier:
        cal, how = calibration, "given"
    else:
        cal, how = shipped(gpu.tier), "shipped"
    if cal is not None:
        params = cal.params
        if cal.cuda_total_bytes:
            gpu = replace(gpu, cuda_total_bytes=cal.cuda_total_bytes, cuda_total_source=f"calibrated ({cal.name})")
        points = sum(1 for _ in cal.all_points())
        ref = CalibrationRef(
            name=cal.name, source=source if how == "given" and source else f"shipped:trdeploy/data/calibrations/{gpu.tier}.yaml",
            sha256=cal.sha256(), tier=cal.gpu.tier, measured=True, points=points,
            basis=f"{how} calibration of {cal.gpu.tier} ({points} measured points, prior {cal.prior})",
        )  # fmt: skip
        return TierModel(gpu=gpu, params=params, ref=ref)
    ref_cal = shipped(REFERENCE_TIER)
    params = ref_cal.params if ref_cal is not None else PRIOR
    ref = CalibrationRef(
        name=ref_cal.name if ref_cal is not None else "prior",
        source=f"shipped:trdeploy/data/calibrations/{REFERENCE_TIER}.yaml" if ref_cal is not None else "prior",
        sha256=ref_cal.sha256() if ref_cal is not None else None,
        tier=REFERENCE_TIER if ref_cal is not None else None,
        measured=False,
        points=0,
        basis=f"{gpu.tier} not calibrated: the {REFERENCE_TIER} calibration's efficiencies with {gpu.tier}'s datasheet bandwidth and throughput",
    )
    return TierModel(gpu=gpu, params=params, ref=ref)


def metric_names() -> tuple[str, ...]:
    return METRICS
