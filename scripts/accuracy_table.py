#!/usr/bin/env python3
"""README's accuracy table: the latency model's error on points its calibration did not fit, per tier and metric.

    python scripts/accuracy_table.py            # print the table
    python scripts/accuracy_table.py --write    # replace it in README.md (between the accuracy-table markers)

Sources, all in the repository: the calibrations shipped for the H100 and H200 (trdeploy/data/calibrations:
leave-one-out errors over the points in tests/data), and tests/data/calibrate_h100, calibrate_h100_2 and
calibrate_h100_3, calibrate_h100_4 (four sessions of trdeploy calibrate on a lent H100 treated as unknown, and bench runs of loads it did not measure). Each cell is the median / P90 of
the absolute relative error, predicted / measured - 1; "before" is the model with the datasheet prior.
tests/calibrate/test_gpu_points.py keeps README in sync with this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trdeploy.calibrate.accuracy import kv_check, point_errors, run_of_reports  # noqa: E402
from trdeploy.sizing.calibration import Calibration, shipped  # noqa: E402
from trdeploy.sizing.fit import METRICS, summarize_errors  # noqa: E402
from trdeploy.sizing.latency import PRIOR  # noqa: E402

DATA = ROOT / "tests" / "data" / "calibrate_h100"
DATA2 = ROOT / "tests" / "data" / "calibrate_h100_2"  # the second session: points with vLLM's own timers
DATA3 = ROOT / "tests" / "data" / "calibrate_h100_3"  # the third: measured after the model of this table was chosen
DATA4 = ROOT / "tests" / "data" / "calibrate_h100_4"  # the fourth: AWQ only, four calibrations with this model, 7 loads measured twice
START, END = "<!-- accuracy-table:start -->", "<!-- accuracy-table:end -->"
NAMES = {"ttft_p50_ms": "TTFT p50", "ttft_p95_ms": "TTFT p95", "tpot_p50_ms": "TPOT p50", "e2e_p95_ms": "E2E p95", "output_throughput": "output tok/s"}


# The later sessions: (folder, label of its bf16 held-out set, label of its AWQ held-out set).
LATER_SESSIONS = (
    (
        DATA2,
        "H100, second session, bf16: other loads (c=8/32/48, 3000/100, 128/512, 512/128, a Poisson rate)",
        "H100, second session, AWQ (2-minute sweep): 1024/256 at c=32, 3000/100 at c=8",
    ),
    (
        DATA3,
        "H100, third session, bf16: other loads (c=8/32/48, 3000/100, 128/512, 512/128, 1536/128 c=24, 768/384 c=64, two Poisson rates)",
        "H100, third session, AWQ (2-minute sweep): 1024/256 at c=32, 3000/100 at c=8, 512/128 at c=16",
    ),
)


def session_sets(data: Path, bf16_label: str, awq_label: str) -> list[tuple[str, Calibration, object]]:
    """A session's two held-out sets: its bf16-held-* and awq-held-* reports, each with its own calibration."""
    out = []
    for label, quant in ((bf16_label, "bf16"), (awq_label, "awq")):
        cal = Calibration.load(data / f"calibration-h100-{quant}.yaml")
        out.append((label, cal, run_of_reports(cal.runs[0], sorted(data.glob(f"{quant}-held-*.json")))))
    return out


# The fourth session's calibrations (its AWQ start): two sweeps of the plan with at most 3 waves per point (2-minute
# budget) and two of at most 8 (6-minute budget), each checked on the same 7 loads measured twice (held1-*, held2-*).
FOURTH = (
    ("w3-1", "H100, fourth session, AWQ, 2-minute sweep (at most 3 waves a point), first: 7 loads measured twice"),
    ("w3-2", "H100, fourth session, AWQ, 2-minute sweep (at most 3 waves a point), second"),
    ("w8-1", "H100, fourth session, AWQ, 6-minute sweep (at most 8 waves a point), first"),
    ("w8-2", "H100, fourth session, AWQ, 6-minute sweep (at most 8 waves a point), second"),
)


def fourth_session_sets() -> list[tuple[str, Calibration, object]]:
    """The fourth session: each calibration with the 14 held-out runs (7 loads, each measured twice)."""
    out = []
    for tag, label in FOURTH:
        cal = Calibration.load(DATA4 / f"calibration-h100-awq-{tag}.yaml")
        out.append((label, cal, run_of_reports(cal.runs[0], sorted(DATA4.glob("held[12]-*.json")))))
    return out


def held_out_sets() -> list[tuple[str, Calibration, object]]:
    """(label, calibration, run of held-out points) for the four H100 sessions."""
    bf16 = Calibration.load(DATA / "calibration-h100-bf16.yaml")
    awq = Calibration.load(DATA / "calibration-h100-awq.yaml")
    card = json.loads((DATA / "card.json").read_text())
    engine_b = next(s for s in card["starts"] if s["id"] == "engine-b")["engine_args"]
    same = run_of_reports(bf16.runs[0], sorted(DATA.glob("bf16-held-*.json")))
    other = run_of_reports(bf16.runs[0], sorted(DATA.glob("bf16-engine-b-*.json")), engine_args=bf16.runs[0].engine_args.model_copy(update=engine_b))
    awq_run = run_of_reports(awq.runs[0], sorted(DATA.glob("awq-held-*.json")))
    return [
        ("H100, Llama-3-8B bf16: other loads (c=8/32/48, 3000/100, 128/512, a Poisson rate)", bf16, same),
        ("H100, Llama-3-8B bf16: other engine arguments (max_num_batched_tokens 4096, utilisation 0.85, max_num_seqs 64)", bf16, other),
        ("H100, Llama-3-8B AWQ (calibrated with a 2-minute sweep)", awq, awq_run),
        *(held for session in LATER_SESSIONS for held in session_sets(*session)),
        *fourth_session_sets(),
    ]


def _cell(stats: dict, metric: str, points: int) -> str:
    s = stats.get(metric)
    if s is None:
        return "-"
    n = f" ({s['points']} points)" if s["points"] != points else ""
    return f"{s['median_abs'] * 100:.1f} / {s['p90_abs'] * 100:.1f}{n}"


def _row(label: str, points: int, what: str, stats: dict) -> str:
    return f"| {label} | {points} | {what} | " + " | ".join(_cell(stats, m, points) for m in METRICS) + " |"


def table() -> str:
    head = "| where | points | | " + " | ".join(NAMES[m] for m in METRICS) + " |\n|---|---|---|" + "---|" * len(METRICS)
    rows = [head]
    for label, cal, run in held_out_sets():
        after = summarize_errors([r["error"] for r in point_errors(cal.params, run, "h100")])
        before = summarize_errors([r["error"] for r in point_errors(PRIOR, run, "h100")])
        n = len(run.points)
        rows.append(_row(label, n, "after", after))
        rows.append(_row("", n, "before (datasheet)", before))
    sweeps = [Calibration.load(data / "calibration-h100-bf16.yaml") for data in (DATA, DATA2, DATA3)]
    sessions = ("Llama-3-8B", "second session,", "third session,")
    for label, cal in (
        *((f"H100, {where} bf16: the sweep's own {len(cal.runs[0].points)} points, leave-one-out", cal) for where, cal in zip(sessions, sweeps, strict=True)),
        ("H200 (shipped calibration): Llama-3-8B bf16 c=1-1,024 and Llama-3-70B AWQ c=1-256, leave-one-out", shipped("h200")),
        ("H100 (shipped calibration): Llama-3-8B bf16 and AWQ, 512/300, leave-one-out", shipped("h100")),
    ):
        n = sum(1 for _, p in cal.all_points() if p.fit)
        after = {m: s.model_dump() for m, s in cal.errors["after_leave_one_out"].items()}
        before = {m: s.model_dump() for m, s in cal.errors["before"].items()}
        rows.append(_row(label, n, "after", after))
        rows.append(_row("", n, "before (datasheet)", before))
    return "\n".join(rows) + "\n"


def kv_table() -> str:
    bf16 = Calibration.load(DATA / "calibration-h100-bf16.yaml")
    awq = Calibration.load(DATA / "calibration-h100-awq.yaml")
    card = json.loads((DATA / "card.json").read_text())
    engine_b = next(s for s in card["starts"] if s["id"] == "engine-b")
    other = run_of_reports(bf16.runs[0], [], engine_args=bf16.runs[0].engine_args.model_copy(update=engine_b["engine_args"]))
    other = other.model_copy(update={"server": other.server.model_copy(update={"kv_cache_size_tokens": engine_b["log"]["kv_cache_tokens"]})})
    awq_run = awq.runs[0]
    rows = ["| start (held out) | vLLM logged | predicted by the bf16 calibration | error | predicted before (catalog memory) |", "|---|---|---|---|---|"]
    for label, run in (("AWQ int4, same settings", awq_run), ("bf16, max_num_batched_tokens 4096, utilisation 0.85", other)):
        after, before = kv_check(run, "h100", bf16.cuda_total_bytes), kv_check(run, "h100", None)
        rows.append(f"| {label} | {after['measured_tokens']:,} | {after['predicted_tokens']:,} | {after['error'] * 100:+.3f}% | {before['predicted_tokens']:,} ({before['error'] * 100:+.3f}%) |")
    return "\n".join(rows) + "\n"


def render() -> str:
    return f"{START}\n{table()}\n{kv_table()}{END}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = ap.parse_args()
    text = render()
    if not args.write:
        print(text)
        return 0
    readme = ROOT / "README.md"
    body = readme.read_text()
    if START not in body or END not in body:
        print("README.md has no accuracy-table markers", file=sys.stderr)
        return 1
    head, rest = body.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + text + tail)
    print("README.md: accuracy table updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
