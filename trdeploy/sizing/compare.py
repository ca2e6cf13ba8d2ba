"""`tune --gpu all`: every GPU tier of the catalog side by side for the same model, workload and SLA.

Each tier is tuned at 1, 2, 4, ... GPUs per replica up to the first count on which vLLM starts and the
SLA holds for at least one request (the counts before are rows too, with the reason), exactly as
`tune --gpu TIER --gpus N` would (`--gpus N` compares that count only).
Per row: KV tokens, the highest per-replica concurrency at which the SLA holds, the replicas for the
traffic, dollars per hour, and dollars per million generated Turkish words:

    words per hour (one replica) = output tokens/s at the SLA capacity x 3600 / tokens per word
    $ per million words          = hourly price of one replica / words per hour x 1e6

with tokens per word the profile's (p95 per document on the model's tokenizer, so the cost errs high).
Tiers whose memory accounting or speed were not measured (trdeploy.sizing.gpus `measured`) are marked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from trdeploy.errors import TrdeployError
from trdeploy.sizing.architectures import resolve_model
from trdeploy.sizing.calibration import Calibration
from trdeploy.sizing.gpus import GPUS, GpuSpec
from trdeploy.sizing.memory import valid_tp_sizes
from trdeploy.sizing.request import TuneRequest
from trdeploy.sizing.tuning import (
    MAX_TP,
    TokensPerWordFn,
    check_load_and_overrides,
    context_tokens_per_word,
    plan_shape,
    plan_sla,
    sla_is_default,
    tune,
)


@dataclass(frozen=True)
class TierRow:
    tier: str
    name: str
    gpus: int
    fits: bool
    why: str | None  # why it does not fit, or why a figure is missing
    memory_measured: bool
    speed_measured: bool
    kv_cache_tokens: int | None = None
    sla_met: bool | None = None  # at the planned load per replica
    sla_capacity_per_replica: int | None = None  # highest per-replica concurrency meeting the SLA
    max_num_seqs: int | None = None
    replicas: int | None = None  # for the traffic (the peak)
    hourly_usd_per_replica: float | None = None
    hourly_usd: float | None = None  # all replicas
    output_tokens_per_s_per_replica: float | None = None  # at the SLA capacity
    usd_per_million_words: float | None = None
    ttft_p95_ms: float | None = None  # at the planned load per replica
    tpot_ms: float | None = None
    cold_start_s: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return self.memory_measured and self.speed_measured


@dataclass(frozen=True)
class Comparison:
    model: str
    quantization: str | None
    max_model_len: int
    prompt_tokens: int
    output_tokens: int
    tokens_per_word: float
    tokens_per_word_source: str
    sla: dict[str, float | None]
    sla_default: bool
    rows: list[TierRow]
    notes: list[str]

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows"] = [{**asdict(r), "measured": r.measured} for r in self.rows]
        return data


def _gpu_counts(req: TuneRequest, arch) -> list[int]:
    return [req.gpus] if req.gpus is not None else valid_tp_sizes(arch, MAX_TP)


def _row(req: TuneRequest, gpu: GpuSpec, tp: int, tpw: float, calibrated: bool) -> TierRow:
    """One tier at `tp` GPUs; `calibrated`: the request's --calibration was measured on this tier."""
    measured = calibrated or gpu.speed_measured
    base = {"tier": gpu.tier, "name": gpu.name, "gpus": tp, "memory_measured": calibrated or gpu.memory_measured, "speed_measured": measured}
    try:
        result = tune(replace_request(req, gpu=gpu.tier, gpus=tp, calibration=req.calibration if calibrated else None))
    except TrdeployError as exc:
        return TierRow(fits=False, why=exc.message, **base)
    p = result.profile
    pred = p.prediction
    cap = pred.capacity
    per_replica_hour = round(p.gpu.count * gpu.hourly_usd, 4)
    tok_s = usd_m = None
    why = None
    if cap is not None and pred.sla_capacity_per_replica:
        tok_s = cap.requests_per_s_per_replica * p.workload.output_tokens
        words_per_hour = tok_s * 3600 / tpw
        usd_m = per_replica_hour / words_per_hour * 1e6
    else:
        why = "the SLA does not hold even for one request per replica"
    return TierRow(
        fits=True,
        why=why,
        kv_cache_tokens=pred.kv_cache_tokens,
        sla_met=pred.sla_met,
        sla_capacity_per_replica=pred.sla_capacity_per_replica,
        max_num_seqs=p.engine_args.max_num_seqs,
        replicas=pred.replicas,
        hourly_usd_per_replica=per_replica_hour,
        hourly_usd=pred.hourly_cost_usd,
        output_tokens_per_s_per_replica=round(tok_s, 1) if tok_s is not None else None,
        usd_per_million_words=round(usd_m, 4) if usd_m is not None else None,
        ttft_p95_ms=pred.ttft_ms,
        tpot_ms=pred.tpot_ms,
        cold_start_s=pred.startup.cold_s if pred.startup else None,
        warnings=list(result.warnings),
        **base,
    )


def replace_request(req: TuneRequest, **changes: Any) -> TuneRequest:
    return TuneRequest(**{**req.model_dump(), **changes})


def compare(req: TuneRequest, *, tokens_per_word_fn: TokensPerWordFn = context_tokens_per_word, tiers: list[str] | None = None) -> Comparison:
    """Tune `req` on every tier (`req.gpu` is ignored). Tier-independent errors (the model, the context) are
    raised once, before any tier runs."""
    check_load_and_overrides(replace_request(req, gpu_memory_utilization=None), GPUS["h100"])  # the cross-option checks, once
    model = resolve_model(req.model)
    if req.tokens_per_word is not None:
        tpw, tpw_source = float(req.tokens_per_word), "given (--tokens-per-word)"
    else:
        tpw, tpw_source = tokens_per_word_fn(model.tokenizer, req.corpus, req.percentile)
    measured_req = replace_request(req, tokens_per_word=tpw)
    shape = plan_shape(measured_req, model, tokens_per_word_fn)  # raises the context errors once
    sla = plan_sla(req)
    cal_tier = Calibration.load(req.calibration).gpu.tier if req.calibration is not None else None
    rows: list[TierRow] = []
    for tier in tiers or list(GPUS):
        gpu = GPUS[tier]
        for tp in _gpu_counts(req, model.arch):
            row = _row(measured_req, gpu, tp, tpw, calibrated=tier == cal_tier)
            rows.append(row)
            if row.fits and row.sla_capacity_per_replica:
                break  # more GPUs only when fewer do not start or do not meet the SLA
    notes = [
        "Predictions, not measurements: vLLM 0.25 memory accounting and the latency model of `trdeploy tune` (continuous batching "
        "simulated with each tier's calibration).",
        f"$ per million words: one replica's hourly price over the Turkish words it generates per hour at its SLA capacity "
        f"(output tokens/s x 3600 / {tpw:.3f} tokens per word: {tpw_source}).",
        "Tiers marked as not measured use datasheet bandwidth and throughput with the H100 calibration's efficiencies "
        "and CUDA-visible memory from public reports (trdeploy.sizing.gpus); `--calibration FILE` replaces them for its tier.",
        "Prices: typical on-demand USD per GPU-hour seen 2025-06; check your provider.",
    ]
    if sla_is_default(req):
        notes.insert(1, f"SLA: the default interactive SLA (p95 TTFT {sla.ttft_p95_ms:g} ms, median TPOT {sla.tpot_ms:g} ms); set --sla-* for yours.")
    return Comparison(
        model=model.id,
        quantization=req.quantization,
        max_model_len=shape.max_model_len,
        prompt_tokens=shape.prompt_tokens,
        output_tokens=shape.output_tokens,
        tokens_per_word=round(tpw, 4),
        tokens_per_word_source=tpw_source,
        sla=sla.model_dump(),
        sla_default=sla_is_default(req),
        rows=rows,
        notes=notes,
    )
