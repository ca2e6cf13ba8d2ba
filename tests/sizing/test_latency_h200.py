"""The latency model against vLLM 0.25.0 on one H200, from concurrency 1 to the KV limit.

tests/data/vllm_measurements_h200.json holds every measured point with its card (hardware, versions,
commands); the shipped H200 calibration (trdeploy/data/calibrations/h200.yaml) is fitted to them. This checks
each point as the calibration predicts it (in the fit: TPOT p50 and E2E p95 within 15%, output throughput
within 16%, TTFT p95 within 25%), the leave-one-out errors the file records, and the KV predictions for those two start-ups.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trdeploy.sizing.calibration import observations, resolve, shipped

DATA = json.loads((Path(__file__).resolve().parents[1] / "data" / "vllm_measurements_h200.json").read_text())
CAL = shipped("h200")
OBS = observations(CAL.runs, "h200")


def test_the_sweep_reaches_high_concurrency():
    points = [(run.model.name, p.load.concurrency) for run in CAL.runs for p in run.points]
    assert {c for m, c in points if m == "llama-3-8b"} >= {1, 16, 64, 128, 256, 384, 512, 1024}
    assert {c for m, c in points if m == "llama-3-70b"} >= {1, 8, 32, 64, 128, 256}
    assert len(OBS) == sum(len(s["benchmarks"]) for s in DATA["starts"]) + len(DATA["calibration_points"]) == 16
    assert all(p.failed == 0 for _, p in CAL.all_points())


@pytest.mark.parametrize("index", range(len(OBS)), ids=[o.id for _, _, o in OBS])
def test_each_point_within_15_percent(index):
    _, _, obs = OBS[index]
    lat = obs.predict(CAL.params)
    m = obs.measured
    assert lat.tpot_p50_ms == pytest.approx(m["tpot_p50_ms"], rel=0.15)
    # TTFT p95 within 25%: the one fit serves both models with one per-request overhead, and the 70B AWQ point at
    # concurrency 1 (5 requests) is predicted 20.6% high (18.2% before the random overhead, request_jitter_ms).
    assert lat.ttft_p95_ms == pytest.approx(m["ttft_p95_ms"], rel=0.25)
    assert lat.e2e_p95_ms == pytest.approx(m["e2e_p95_ms"], rel=0.15)
    assert lat.output_tokens_per_s == pytest.approx(m["output_throughput"], rel=0.16)


def test_held_out_errors_are_recorded_and_better_than_the_datasheet():
    before, after = CAL.errors["before"], CAL.errors["after_leave_one_out"]
    for metric in ("ttft_p50_ms", "tpot_p50_ms", "e2e_p95_ms", "output_throughput"):
        assert after[metric].points == 16
        assert after[metric].median_abs < before[metric].median_abs
    # The targets where this sweep meets them (TTFT p50 does not: see README's accuracy table).
    assert after["tpot_p50_ms"].median_abs <= 0.05 and after["e2e_p95_ms"].median_abs <= 0.05
    assert after["output_throughput"].median_abs <= 0.05 and after["ttft_p95_ms"].median_abs <= 0.10


@pytest.mark.parametrize("run", CAL.runs, ids=lambda r: r.id)
def test_kv_prediction_for_these_starts(run):
    start = next(s for s in DATA["starts"] if s["id"] == run.id)
    assert run.kv is not None and run.kv.measured_tokens == start["memory"]["kv_cache_tokens"]
    assert abs(run.kv.error_after()) <= 0.001  # predicted from the other start's memory fit
    assert resolve("h200").gpu.cuda_total_bytes == CAL.cuda_total_bytes
