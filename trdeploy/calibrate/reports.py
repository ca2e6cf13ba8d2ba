"""Measured points from `trdeploy bench --json` reports (calibrate --from-bench, --check).

A bench run is a point when its requests had one shape: synthetic token-id prompts (`--synthetic N`, exact
length) and `--ignore-eos` with `--output-tokens` (exact output). Runs of natural-length prompts are read too,
at their mean lengths, and kept for the record but not fitted (the model assumes one shape per point); so are
runs with failed requests, interrupted runs and runs whose prompts came from the prefix cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trdeploy.errors import TrdeployError
from trdeploy.inputs import loads_json
from trdeploy.sizing.calibration import Measured, Point, PointLoad, ServerFacts, Timings


def read_report(path: Path) -> dict[str, Any]:
    hint = "Pass files `trdeploy bench --json` (or -o) wrote."
    if not path.is_file():
        raise TrdeployError(f"No bench report at {path}.", hint=hint)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrdeployError(f"{path} is not JSON ({exc.__class__.__name__}).", hint=hint) from None
    data = loads_json(text, where=str(path), hint=hint)
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or "trdeploy" not in str(data.get("tool", "")):
        raise TrdeployError(f"{path} is not a trdeploy bench report.", hint="Pass files `trdeploy bench --json` (or -o) wrote.")
    return data


def points_from_report(report: dict[str, Any], source: str) -> tuple[list[Point], ServerFacts | None]:
    """The report's runs as points, and the server's KV cache facts if the report has them."""
    sampling = report.get("sampling") or {}
    fixed_output = bool(sampling.get("ignore_eos")) and sampling.get("max_tokens")
    synthetic = (report.get("prompts") or {}).get("source") == "synthetic"
    points: list[Point] = []
    facts: ServerFacts | None = None
    for k, run in enumerate(report["runs"]):
        try:
            points.append(_point(run, k, source, fixed=bool(synthetic and fixed_output), max_tokens=sampling.get("max_tokens")))
        except (KeyError, TypeError, ValueError) as exc:
            raise TrdeployError(f"{source}: run {k} is not a bench run ({exc}).", hint="Pass files `trdeploy bench --json` (or -o) wrote.") from None
        cache = (run.get("server_metrics") or {}).get("cache_config")
        if cache and facts is None:
            facts = ServerFacts(**{key: cache.get(key) for key in ("num_gpu_blocks", "block_size", "kv_cache_size_tokens", "gpu_memory_utilization", "cache_dtype", "enable_prefix_caching")})
    return points, facts


def _point(run: dict[str, Any], k: int, source: str, *, fixed: bool, max_tokens: int | None) -> Point:
    completed, failed = int(run["completed"]), int(run["failed"])
    load = run["load"]
    if not completed:
        raise ValueError("no request completed")
    prompt = round(run["total_input_tokens"] / max(1, run.get("input_tokens_known") or completed))
    output = int(max_tokens) if fixed and max_tokens else round(run["total_output_tokens"] / completed)
    sent = int(run.get("sent") or completed + failed)
    pl = PointLoad(
        arrivals="closed" if load["closed_loop"] else "poisson",
        concurrency=load.get("concurrency"),
        request_rate=load.get("request_rate"),
        burstiness=load.get("burstiness") or 1.0,
        num_requests=sent,
        seed=int(load.get("seed") or 0),
    )
    pc = (run.get("server_metrics") or {}).get("prefix_cache") or {}
    counters = (run.get("server_metrics") or {}).get("counters") or {}
    why = None
    if not fixed:
        why = "requests of varying length (the model predicts one shape: use --synthetic N --output-tokens O --ignore-eos)"
    elif run.get("interrupted"):
        why = "interrupted"
    elif failed:
        why = f"{failed} requests failed"
    elif pc.get("flagged"):
        why = f"{pc['hit_rate']:.0%} of the prompt tokens came from the prefix cache"
    timings = Timings.from_bench_run(run)
    return Point(
        id=f"{Path(source).stem}-{k}-{pl.label().replace('/', 'per').replace(' ', '')}",
        prompt_tokens=max(1, prompt),
        output_tokens=max(1, output),
        load=pl,
        measured=Measured.from_bench_run(run, timings),
        timings=timings,
        completed=completed,
        failed=failed,
        duration_s=run.get("duration"),
        prefix_cache_hit_rate=pc.get("hit_rate"),
        preemptions=counters.get("num_preemptions"),
        fit=why is None,
        why_not_fit=why,
        source=f"{source}: {run.get('label', '')}",
    )
