#!/usr/bin/env python3
"""Synchronous or asynchronous scheduling in the latency model: which predicts the H100 sessions' held-out loads better.

    python scripts/compare_scheduling.py [--jobs 2] [--sets 4,10] [--json FILE]

vLLM 0.25 schedules one step ahead by default (trdeploy.sizing.batching's module docstring); the model schedules
synchronously unless `Engine.async_scheduling` is set. For every held-out set of README's accuracy table
(scripts/accuracy_table.py: four sessions on a lent H100, tests/data/calibrate_h100*), this script predicts the
set's loads with its calibration as shipped (fitted with synchronous scheduling) and with the same points
refitted with asynchronous scheduling, and prints both errors: median / P90 of the absolute relative error per
metric, each set and all sets pooled, and how many (set, metric) cells miss the issue's targets (median above
the target, P90 above twice it). A refit takes about 30 s of one CPU core; the ten calibrations take about
5 minutes on one core. Nothing is written unless --json is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from accuracy_table import NAMES, held_out_sets  # noqa: E402
from refit_calibration import refit_text  # noqa: E402

from trdeploy.calibrate.accuracy import point_errors  # noqa: E402
from trdeploy.sizing.fit import METRICS, summarize_errors  # noqa: E402

# The targets for held-out points (median absolute error; P90 at most twice).
TARGETS = {"ttft_p50_ms": 0.15, "ttft_p95_ms": 0.10, "tpot_p50_ms": 0.05, "e2e_p95_ms": 0.05, "output_throughput": 0.05}


def _refit_async(text: str) -> dict[str, float]:
    """The calibration's points fitted again with asynchronous scheduling (no leave-one-out): its parameters."""
    return refit_text(text, "calibration.yaml", leave_one_out=False, async_scheduling=True).latency


def _misses(summary: dict[str, dict]) -> tuple[int, int]:
    med = sum(1 for m, s in summary.items() if s["median_abs"] > TARGETS[m])
    p90 = sum(1 for m, s in summary.items() if s["p90_abs"] > 2 * TARGETS[m])
    return med, p90


def _line(label: str, summary: dict[str, dict]) -> str:
    cells = [f"{s['median_abs'] * 100:5.1f} / {s['p90_abs'] * 100:5.1f}" if (s := summary.get(m)) else "      -      " for m in METRICS]
    return f"  {label:6s} " + " | ".join(cells)


def compare(sets: list[int] | None = None, jobs: int = 1) -> dict:
    chosen = [(k, s) for k, s in enumerate(held_out_sets()) if sets is None or k in sets]
    texts: dict[str, str] = {}
    for _, (_, cal, _) in chosen:
        texts.setdefault(cal.sha256(), cal.to_yaml())
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        refits = dict(zip(texts, pool.map(_refit_async, texts.values()), strict=True))
    out: dict = {"sets": [], "pooled": {}}
    pooled: dict[str, list[dict[str, float]]] = {"sync": [], "async": []}  # every point's errors
    for k, (label, cal, run) in chosen:
        async_params = cal.params.with_values(**refits[cal.sha256()])
        rows = {"sync": point_errors(cal.params, run, "h100"), "async": point_errors(async_params, run, "h100", async_scheduling=True)}
        entry = {"index": k, "label": label, "points": len(run.points)}
        for mode, r in rows.items():
            errs = [row["error"] for row in r]
            pooled[mode] += errs
            summary = summarize_errors(errs)
            entry[mode] = {"summary": summary, "misses": _misses(summary), "errors": {row["id"]: row["error"] for row in r}}
        entry["async_latency"] = refits[cal.sha256()]
        out["sets"].append(entry)
    for mode, errs in pooled.items():
        out["pooled"][mode] = {"summary": summarize_errors(errs), "misses": [sum(e[mode]["misses"][i] for e in out["sets"]) for i in (0, 1)]}
    return out


def render(result: dict) -> str:
    lines = ["median / P90 absolute error (%): " + " | ".join(f"{NAMES[m]:>13s}" for m in METRICS)]
    for e in result["sets"]:
        lines.append(f"[{e['index']}] {e['label']} ({e['points']} points)")
        for mode in ("sync", "async"):
            med, p90 = e[mode]["misses"]
            lines.append(_line(mode, e[mode]["summary"]) + f"   misses: {med} median, {p90} P90")
    lines.append("all sets pooled")
    for mode in ("sync", "async"):
        med, p90 = result["pooled"][mode]["misses"]
        lines.append(_line(mode, result["pooled"][mode]["summary"]) + f"   cells missing a target: {med} median, {p90} P90")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1, help="refits in parallel (processes)")
    ap.add_argument("--sets", help="comma-separated indices of the held-out sets (as printed); default: all")
    ap.add_argument("--json", type=Path, help="also write the result (every point's errors) to this file")
    args = ap.parse_args()
    sets = [int(x) for x in args.sets.split(",")] if args.sets else None
    result = compare(sets, jobs=args.jobs)
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
