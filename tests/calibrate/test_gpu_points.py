"""The points measured with the real vLLM 0.25.0 on a lent H100 in four sessions (tests/data/calibrate_h100,
calibrate_h100_2, calibrate_h100_3 and calibrate_h100_4, their card.json says how): what calibrate fitted, the
loads it did not see, and README's accuracy table made from them."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
from conftest import ROOT

from trdeploy.calibrate.reports import read_report
from trdeploy.sizing.calibration import Calibration

DATA = ROOT / "tests" / "data" / "calibrate_h100"
DATA2 = ROOT / "tests" / "data" / "calibrate_h100_2"
DATA3 = ROOT / "tests" / "data" / "calibrate_h100_3"
DATA4 = ROOT / "tests" / "data" / "calibrate_h100_4"


def _script(name: str = "accuracy_table"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
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


# The targets (median absolute error over a set's held-out points) and which each held-out set meets
# with the calibration it is checked against; the misses are README's (accuracy table) and the note's.
TARGETS = {"ttft_p50_ms": 0.15, "ttft_p95_ms": 0.10, "tpot_p50_ms": 0.05, "e2e_p95_ms": 0.05, "output_throughput": 0.05}
MET = {
    0: ("ttft_p95_ms", "tpot_p50_ms", "e2e_p95_ms", "output_throughput"),  # first session, bf16: TTFT p50 missed
    1: ("ttft_p95_ms", "tpot_p50_ms", "e2e_p95_ms", "output_throughput"),  # first session, other engine arguments: TTFT p50 missed
    2: ("ttft_p50_ms", "tpot_p50_ms", "e2e_p95_ms", "output_throughput"),  # first session, AWQ: TTFT p95 missed (10.3%)
    3: tuple(TARGETS),  # second session, bf16
    4: ("ttft_p95_ms", "tpot_p50_ms"),  # second session, AWQ (2 points): TTFT p50, E2E p95 and throughput missed
    5: tuple(TARGETS),  # third session, bf16 (measured after the model was chosen)
    6: ("tpot_p50_ms", "e2e_p95_ms"),  # third session, AWQ (3 points): TTFT p50 and p95 and throughput missed
    7: tuple(TARGETS),  # fourth session, AWQ, 2-minute sweeps (at most 3 waves a point), 14 held-out runs each
    8: tuple(TARGETS),
    9: tuple(TARGETS),  # fourth session, AWQ, 6-minute sweeps (at most 8 waves a point)
    10: tuple(TARGETS),
}
IDS = ["bf16-other-loads", "bf16-other-engine-args", "awq", "second-bf16", "second-awq", "third-bf16", "third-awq", "fourth-w3-1", "fourth-w3-2", "fourth-w8-1", "fourth-w8-2"]


@pytest.mark.parametrize("index", sorted(MET), ids=IDS)
def test_held_out_loads_meet_the_targets_they_meet(index):
    mod = _script()
    label, cal, run = mod.held_out_sets()[index]
    from trdeploy.calibrate.accuracy import point_errors
    from trdeploy.sizing.fit import summarize_errors

    s = summarize_errors([r["error"] for r in point_errors(cal.params, run, "h100")])
    assert s["tpot_p50_ms"]["points"] == len(run.points) >= 2, label
    for metric in MET[index]:
        assert s[metric]["median_abs"] <= TARGETS[metric], (label, metric, s[metric])


@pytest.mark.parametrize("data", [DATA2, DATA3], ids=["second", "third"])
def test_the_later_sessions_fitted_vllms_own_timers(data):
    """Every point of the second and third sessions carries vLLM's queue and prefill timers, the fit used the mean
    TTFT outside the engine they give, and bench --requests kept every held-out request."""
    import csv

    for name in ("calibration-h100-bf16.yaml", "calibration-h100-awq.yaml"):
        cal = Calibration.load(data / name)
        assert cal.prior == "datasheet" and cal.sweep["seconds"] <= 10 * 60 and not cal.sweep["interrupted"]
        for p in cal.runs[0].points:
            assert p.fit and p.timings is not None and p.timings.queue_mean_ms is not None
            assert p.measured.ttft_outside_engine_mean_ms == pytest.approx(p.timings.ttft_outside_engine_mean_ms)
            assert 0 < p.measured.ttft_outside_engine_mean_ms < p.measured.ttft_p50_ms * 1.5
            assert "ttft_outside_engine_mean_ms" in p.error_before
        assert "request_jitter_ms" in cal.fitted
    for path in sorted([*data.glob("bf16-*.csv"), *data.glob("awq-*.csv")]):
        report = read_report(path.with_suffix(".json"))
        rows = list(csv.DictReader(path.open()))
        assert len(rows) == sum(r["completed"] for r in report["runs"]) and all(r["status"] == "0" for r in rows), path.name


def test_held_out_kv_caches_within_a_tenth_of_a_percent():
    text = _script().kv_table()
    errors = [float(line.split("|")[4].strip().rstrip("%")) for line in text.splitlines()[2:]]
    assert len(errors) == 2 and all(abs(e) <= 0.1 for e in errors)


def test_no_held_out_run_hit_the_prefix_cache_except_the_repeat():
    for path in sorted([*DATA.glob("*.json"), *DATA2.glob("*.json"), *DATA3.glob("*.json"), *DATA4.glob("*.json")]):
        if path.name == "card.json" or path.name.startswith("device-check-"):
            continue
        report = read_report(path)
        for run in report["runs"]:
            pc = run["server_metrics"]["prefix_cache"]
            assert run["failed"] == 0
            if path.name == "bf16-repeat-3000-100.json" and path.parent != DATA3:
                assert pc["flagged"] and pc["hit_rate"] > 0.99 and report["prompts"]["salt_given"]
            elif path.name == "bf16-repeat-3000-100.json":  # sent after 588,000 other prompt tokens: evicted (card.json)
                assert report["prompts"]["salt_given"] and pc["queries"] == 72_000 and pc["hit_rate"] == 0
            else:
                assert pc["hit_rate"] == 0 and not pc["flagged"], path.name
    assert json.loads((DATA / "card.json").read_text())["device_minutes"] < 30
    assert json.loads((DATA2 / "card.json").read_text())["device_seconds"] < 30 * 60
    assert json.loads((DATA3 / "card.json").read_text())["device_seconds"] < 30 * 60
    assert json.loads((DATA4 / "card.json").read_text())["device_seconds"] < 30 * 60


def test_the_third_session_was_measured_by_the_model_it_did_not_choose():
    """The third session's device printed the previous model's held-out errors (device-check-*.json) on the same
    points the README table predicts with this model: the same held-out loads, every one with a result."""
    mod = _script()
    sets = mod.session_sets(*mod.LATER_SESSIONS[1])
    for (label, _cal, run), name in zip(sets, ("device-check-bf16.json", "device-check-awq.json"), strict=True):
        check = json.loads((DATA3 / name).read_text())
        assert len(check["points"]) == len(run.points) >= 3, label
        assert check["kv_cache_tokens"]["error"] == 0.0
        assert {(p["prompt_tokens"], p["output_tokens"], p["load"]) for p in check["points"]} == {(p.prompt_tokens, p.output_tokens, p.load.label()) for p in run.points}


FOURTH = ("w3-1", "w3-2", "w8-1", "w8-2")


def test_the_fourth_session_errors_are_the_devices_own():
    """The fourth session ran this latency model: the held-out errors recomputed here from its files are the ones
    `calibrate --check` printed on the device, for every calibration and both measurements of the 7 loads."""
    from trdeploy.calibrate.accuracy import point_errors, run_of_reports

    salts = set()
    for held in ("held1", "held2"):
        files = sorted(DATA4.glob(f"{held}-*.json"))
        assert len(files) == 7
        salts |= {read_report(f)["prompts"]["salt"] for f in files}
        for tag in FOURTH:
            cal = Calibration.load(DATA4 / f"calibration-h100-awq-{tag}.yaml")
            assert cal.prior == "datasheet" and cal.gpu.tier == "h100" and not cal.sweep["interrupted"]
            rows = point_errors(cal.params, run_of_reports(cal.runs[0], files), "h100")
            device = json.loads((DATA4 / f"device-check-{tag}-{held}.json").read_text())
            assert device["sha256"] == cal.sha256() and len(device["points"]) == len(rows) == 7
            by_load = {(p["prompt_tokens"], p["output_tokens"], p["load"]): p["error"] for p in device["points"]}
            for r in rows:
                theirs = by_load[(r["prompt_tokens"], r["output_tokens"], r["load"])]
                assert r["error"].keys() == theirs.keys()
                for metric, value in r["error"].items():
                    assert value == pytest.approx(theirs[metric], abs=1e-9), (tag, held, r["id"], metric)
    assert len(salts) == 14  # new prompts in every run


def test_max_waves_makes_the_plans_the_fourth_session_ran():
    """`calibrate --max-waves W` plans what the device ran (its copy read W from the environment): the same points
    and requests; the 8-wave plans send at most 8 waves a closed-loop point, the 3-wave ones at most 3."""
    from trdeploy.calibrate.request import DEFAULT_MAX_WAVES
    from trdeploy.calibrate.sweep import plan_sweep
    from trdeploy.deployment import DeploymentProfile
    from trdeploy.sizing.calibration import run_engine, step_factory
    from trdeploy.sizing.latency import PRIOR

    profile = DeploymentProfile.load(DATA4 / "profile-h100-awq.yaml")
    assert DEFAULT_MAX_WAVES == 8
    for tag in FOURTH:
        cal = Calibration.load(DATA4 / f"calibration-h100-awq-{tag}.yaml")
        run = cal.runs[0]
        waves = int(tag[1])
        engine = run_engine(run, "h100")
        sweep = plan_sweep(profile, step_factory(run, "h100")(PRIOR), engine, budget_s=cal.sweep["budget_minutes"] * 60,
                           kv_capacity_tokens=int(engine.kv_capacity_tokens or 0), max_waves=waves)  # fmt: skip
        assert [(p.id, p.load.num_requests) for p in sweep.points] == [(p.id, p.load.num_requests) for p in run.points], tag
        closed = [p for p in run.points if p.load.arrivals == "closed"]
        assert all(p.load.num_requests <= waves * max(p.load.concurrency, 4) for p in closed)
        assert cal.sweep["seconds"] <= cal.sweep["budget_minutes"] * 60
    top = next(p for p in Calibration.load(DATA4 / "calibration-h100-awq-w8-1.yaml").runs[0].points if p.id == "typical-c72")
    assert top.load.num_requests == 8 * 72


def test_compare_scheduling_refits_with_async_scheduling_and_predicts_with_it():
    """scripts/compare_scheduling.py on the second session's AWQ set: the synchronous column is README's (the
    calibration as shipped); the asynchronous one is a refit that fits its own points better with the engine
    scheduling one step ahead than without, so it was fitted and is predicted with asynchronous scheduling."""
    mod = _script("compare_scheduling")
    from trdeploy.calibrate.accuracy import point_errors
    from trdeploy.sizing.calibration import observations
    from trdeploy.sizing.fit import errors, summarize_errors

    index, (label, cal, run) = next((k, s) for k, s in enumerate(_script().held_out_sets()) if "second session, AWQ" in s[0])
    result = mod.compare([index])
    (entry,) = result["sets"]
    assert entry["label"] == label and entry["points"] == len(run.points) == 2
    readme = summarize_errors([r["error"] for r in point_errors(cal.params, run, "h100")])
    assert entry["sync"]["summary"].keys() == readme.keys()
    for metric, summary in entry["sync"]["summary"].items():
        assert summary["median_abs"] == pytest.approx(readme[metric]["median_abs"], abs=1e-12)
    refit = cal.params.with_values(**entry["async_latency"])
    assert refit != cal.params

    def rms(async_scheduling: bool) -> float:
        obs = [o for _, _, o in observations(cal.runs, "h100", async_scheduling=async_scheduling)]
        return math.sqrt(sum(math.log1p(e) ** 2 for o in obs for e in errors(o.predict(refit), o).values()) / len(obs))

    assert rms(True) < rms(False)
    assert result["pooled"]["async"]["summary"] == entry["async"]["summary"]
    assert "all sets pooled" in mod.render(result)
