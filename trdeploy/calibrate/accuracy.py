"""A calibration's error on runs it did not fit: bench reports predicted with its parameters (calibrate --check,
the tests and README's accuracy table all use this)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trdeploy.calibrate.reports import points_from_report, read_report
from trdeploy.deployment import EngineArgs
from trdeploy.sizing.calibration import Calibration, Point, Run, ServerFacts, measured_kv_tokens, observations, predicted_kv_tokens
from trdeploy.sizing.fit import errors, summarize_errors
from trdeploy.sizing.latency import LatencyParams


def run_of_reports(template: Run, reports: Sequence[Path], *, engine_args: EngineArgs | None = None, model=None, quantization: str | None = None) -> Run:
    """A run with the template's model and engine (or the ones given) and the reports' runs as its points
    (every one predicted, whatever its shape)."""
    points: list[Point] = []
    facts: ServerFacts | None = None
    for path in reports:
        pts, f = points_from_report(read_report(Path(path)), str(path))
        points += [p.model_copy(update={"fit": True}) for p in pts]
        facts = facts or f
    update: dict[str, Any] = {"points": points, "server": facts or ServerFacts(), "kv": None}
    if engine_args is not None:
        update["engine_args"] = engine_args
    if model is not None:
        update["model"] = model
    if quantization is not None:
        update["quantization"] = quantization
    return template.model_copy(update=update, deep=True)


def point_errors(params: LatencyParams, run: Run, tier: str, *, async_scheduling: bool = False) -> list[dict[str, Any]]:
    """Each point of the run predicted with `params`: its shape, load, measured values and signed errors."""
    rows = []
    for _, k, obs in observations([run], tier, fitted=None, async_scheduling=async_scheduling):
        p = run.points[k]
        rows.append({"id": p.id, "prompt_tokens": p.prompt_tokens, "output_tokens": p.output_tokens, "load": p.load.label(),
                     "measured": p.measured.values(), "error": errors(obs.predict(params), obs)})  # fmt: skip
    return rows


def kv_check(run: Run, tier: str, cuda_total_bytes: int | None) -> dict[str, Any] | None:
    measured = measured_kv_tokens(run)
    if not measured:
        return None
    predicted = predicted_kv_tokens(run, tier, cuda_total_bytes)
    return {"measured_tokens": measured, "predicted_tokens": predicted, "error": predicted / measured - 1.0}


def check(cal: Calibration, run: Run, tier: str) -> dict[str, Any]:
    """`calibrate --check`: the calibration's errors on the run's points, their summary, and the KV cache."""
    rows = point_errors(cal.params, run, tier)
    return {
        "calibration": cal.name,
        "sha256": cal.sha256(),
        "points": rows,
        "summary": summarize_errors([r["error"] for r in rows]),
        "kv_cache_tokens": kv_check(run, tier, cal.cuda_total_bytes),
    }
