#!/usr/bin/env python3
"""Fit a calibration again from the points it holds, with this trdeploy's latency model (after the model changed:
a calibration file names exactly the parameters of the model that made it, and a newer trdeploy refuses one that
names others). The measured points, the server facts and the sweep record are kept; the parameters, the errors
before and after (leave-one-out) and the KV check are made anew.

    python scripts/refit_calibration.py OLD.yaml NEW.yaml [--no-leave-one-out]

tests/data/calibrate_h100/*.yaml were refit this way when the model gained `request_jitter_ms`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trdeploy.inputs import load_yaml, read_limited  # noqa: E402
from trdeploy.sizing.calibration import MAX_CALIBRATION_BYTES, Calibration, fit_calibration  # noqa: E402
from trdeploy.sizing.latency import PRIOR  # noqa: E402


def refit(path: Path, *, leave_one_out: bool = True, async_scheduling: bool = False) -> Calibration:
    text = read_limited(path, limit=MAX_CALIBRATION_BYTES, what="calibration", hint="")
    return refit_text(text, str(path), leave_one_out=leave_one_out, async_scheduling=async_scheduling)


def refit_text(text: str | bytes, where: str, *, leave_one_out: bool = True, async_scheduling: bool = False) -> Calibration:
    """`refit` of a calibration's YAML text (`where` names it in messages)."""
    data = load_yaml(text, where=where, hint="")
    if data.get("prior") != "datasheet":
        raise SystemExit(f"{where}: prior {data.get('prior')!r}; this script refits datasheet-prior calibrations only")
    data.update(latency=PRIOR.as_dict(), fitted=[], errors={})  # the old model's parameters are not read
    old = Calibration.model_validate(data)
    for run in old.runs:  # measured figures a newer model fits, made from what the point recorded
        for p in run.points:
            if p.timings is not None and p.measured.ttft_outside_engine_mean_ms is None:
                p.measured = p.measured.model_copy(update={"ttft_outside_engine_mean_ms": p.timings.ttft_outside_engine_mean_ms})
    refitted = fit_calibration(
        name=old.name,
        tier=old.gpu.tier,
        runs=old.runs,
        prior=PRIOR,
        prior_name=old.prior,
        vllm_version=old.vllm_version,
        leave_one_out_errors=leave_one_out,
        sweep=old.sweep,
        notes=[*old.notes, f"Refit from its points by scripts/refit_calibration.py (made at {old.created_at} by {old.created_by})."],
        created_at=old.created_at,
        progress=lambda msg: print(f"[{Path(where).name}] {msg}", file=sys.stderr, flush=True),
        async_scheduling=async_scheduling,
    )
    return refitted.model_copy(update={"created_by": old.created_by})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--no-leave-one-out", action="store_true")
    args = ap.parse_args()
    cal = refit(args.old, leave_one_out=not args.no_leave_one_out)
    args.new.write_text(cal.to_yaml())
    print(f"wrote {args.new}: {', '.join(f'{k}={v:.4g}' for k, v in cal.latency.items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
