"""The points measured with the real vLLM 0.25.0 on a lent H100 (tests/data/calibrate_h100, card.json says how):
what calibrate fitted, the loads it did not see, and README's accuracy table made from them."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import ROOT

from trdeploy.calibrate.reports import read_report
from trdeploy.sizing.calibration import Calibration

DATA = ROOT / "tests" / "data" / "calibrate_h100"


def _script():
    spec = importlib.util.spec_from_file_location("accuracy_table", ROOT / "scripts" / "accuracy_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["accuracy_table"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_readme_holds_the_accuracy_table_the_data_gives():
    assert _script().render() in (ROOT / "README.md").read_text(), "run python scripts/accuracy_table.py --write"


def test_the_card_was_calibrated_as_unknown_within_the_budget():
    cal = Calibration.load(DATA / "calibration-h100-bf16.yaml")
    assert cal.prior == "datasheet" and cal.gpu.tier == "h100" and cal.vllm_version == "0.25.0"
    assert cal.sweep["seconds"] <= 10 * 60 and not cal.sweep["interrupted"]
    run = cal.runs[0]
    assert len(run.points) == 10 and all(p.fit and p.failed == 0 and p.prefix_cache_hit_rate == 0 for p in run.points)
    assert {p.load.arrivals for p in run.points} == {"closed", "poisson"}
    assert run.server.kv_cache_size_tokens == 450_336 and run.server.num_gpu_blocks == 28_146


@pytest.mark.parametrize("index", [0, 2], ids=["bf16-other-loads", "awq"])
def test_held_out_loads_meet_the_targets_they_meet(index):
    """TPOT p50, E2E p95 and output throughput within 5%, TTFT p95 within 10% (median over the held-out points).
    TTFT p50 is not asserted: on the bf16 card it missed the 15% target (17.5%, README)."""
    mod = _script()
    label, cal, run = mod.held_out_sets()[index]
    from trdeploy.calibrate.accuracy import point_errors
    from trdeploy.sizing.fit import summarize_errors

    s = summarize_errors([r["error"] for r in point_errors(cal.params, run, "h100")])
    assert s["tpot_p50_ms"]["points"] == 6, label
    for metric, target in (("tpot_p50_ms", 0.05), ("e2e_p95_ms", 0.05), ("output_throughput", 0.05), ("ttft_p95_ms", 0.10)):
        assert s[metric]["median_abs"] <= target, (label, metric, s[metric])


def test_held_out_kv_caches_within_a_tenth_of_a_percent():
    text = _script().kv_table()
    errors = [float(line.split("|")[4].strip().rstrip("%")) for line in text.splitlines()[2:]]
    assert len(errors) == 2 and all(abs(e) <= 0.1 for e in errors)


def test_no_held_out_run_hit_the_prefix_cache_except_the_repeat():
    for path in sorted(DATA.glob("*.json")):
        if path.name == "card.json":
            continue
        report = read_report(path)
        for run in report["runs"]:
            pc = run["server_metrics"]["prefix_cache"]
            assert run["failed"] == 0
            if path.name == "bf16-repeat-3000-100.json":
                assert pc["flagged"] and pc["hit_rate"] > 0.99 and report["prompts"]["salt_given"]
            else:
                assert pc["hit_rate"] == 0 and not pc["flagged"], path.name
    assert json.loads((DATA / "card.json").read_text())["device_minutes"] < 30
