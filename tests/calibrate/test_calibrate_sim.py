"""`trdeploy calibrate` against a simulated continuous-batching vLLM (tests/_sim_vllm.py) with a known step law.

The double schedules like vLLM (max_num_seqs, chunked prefill within max_num_batched_tokens, KV blocks and
preemption, prefix caching), streams SSE in real time, exports /metrics with vllm:cache_config_info, and
answers 401 without the key and 404 for another model name. Its step law is trdeploy's model for Llama-3.2-1B
on an L4 with efficiencies the shipped calibrations do not have (TRUTH); its own HTTP and Python costs are the
API server's. calibrate runs its sweep against it, must recover the law, and then predict loads it did not
measure (held out, through `trdeploy bench` reports and `calibrate --check`) within the issue's targets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _bench_servers import Server, free_port, run_json
from conftest import ROOT, run_cli

from trdeploy.sizing.architectures import PRESETS
from trdeploy.sizing.calibration import Calibration, resolve
from trdeploy.sizing.latency import PRIOR, step_model
from trdeploy.sizing.memory import predict_kv_cache
from trdeploy.sizing.tuning import TuneRequest, tune

KEY = "sk-sim"
TRUTH = PRIOR.with_values(step_overhead_ms=2.0, per_sequence_ms=0.05, weight_read_eff=0.6, kv_read_eff=0.5, gemm_eff=0.3)
# The card has 3% fewer KV blocks than the datasheet memory gives (memory to calibrate).
KV_SHORTFALL = 0.97
# The targets for held-out points (median absolute error).
TARGETS = {"ttft_p50_ms": 0.15, "ttft_p95_ms": 0.10, "tpot_p50_ms": 0.05, "e2e_p95_ms": 0.05, "output_throughput": 0.05}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """The profile (Llama-3.2-1B on an L4, 256 in / 32 out, max_num_seqs 32) and the double serving it."""
    root = tmp_path_factory.mktemp("sim")
    result = tune(TuneRequest(gpu="l4", model="llama-3.2-1b", max_model_len=4096, prompt_tokens=256, output_tokens=32, max_num_seqs=32,
                              served_model_name="m", name="sim-l4"))  # fmt: skip
    profile = root / "profile.yaml"
    result.profile.save(profile)
    ea = result.profile.engine_args
    arch, gpu = PRESETS["llama-3.2-1b"], resolve("l4").gpu
    kv = predict_kv_cache(arch, gpu, max_model_len=ea.max_model_len, max_num_seqs=ea.max_num_seqs, max_num_batched_tokens=ea.max_num_batched_tokens)
    step = step_model(arch, gpu, tp=1, weights_parts=kv.weights_parts, kv_bytes_per_token=kv.kv_bytes_per_token, quantization="none", params=TRUTH)
    blocks = int(kv.num_blocks * KV_SHORTFALL)
    law = {k: getattr(step, k) for k in ("weight_ms", "gemm_ms_per_token", "attn_ms_per_token_ctx", "kv_ms_per_token", "step_overhead_ms", "per_sequence_ms")}
    cfg = {"law": law, "max_num_seqs": ea.max_num_seqs, "max_num_batched_tokens": ea.max_num_batched_tokens, "num_gpu_blocks": blocks,
           "max_model_len": ea.max_model_len, "served_model_name": "m", "api_key": KEY, "gpu_memory_utilization": ea.gpu_memory_utilization}  # fmt: skip
    (root / "cfg.json").write_text(json.dumps(cfg))
    port = free_port()
    log = root / "server.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_sim_vllm.py"), "--port", str(port), "--config", str(root / "cfg.json")],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)  # fmt: skip
    server = Server(proc, port, log)
    server.wait_ready("/health", timeout=30)
    yield {"root": root, "profile": profile, "url": server.url, "step": step, "kv": kv, "blocks": blocks}
    server.stop()


@pytest.fixture(scope="module")
def calibration(sim):
    out = sim["root"] / "calibration.yaml"
    proc = run_cli("calibrate", "--url", sim["url"], "--profile", str(sim["profile"]), "-o", str(out), "--budget-minutes", "0.8",
                   "--prior", "datasheet", "--json", env={"OPENAI_API_KEY": KEY})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/" in proc.stderr and "fitting" in proc.stderr  # progress on stderr
    data = json.loads(proc.stdout)
    assert data["written"] == str(out) and not data["interrupted"]
    return Calibration.load(out), proc


def test_calibrate_measures_the_planned_sweep(calibration, sim):
    cal, _ = calibration
    run = cal.runs[0]
    points = run.points
    assert len(points) >= 6 and all(p.fit for p in points)
    assert {p.load.arrivals for p in points} == {"closed", "poisson"}
    shapes = {(p.prompt_tokens, p.output_tokens) for p in points}
    assert len(shapes) >= 3  # prefill and decode costs separate
    assert {p.load.concurrency for p in points if (p.prompt_tokens, p.output_tokens) == (256, 32) and p.load.arrivals == "closed"} >= {1, 32}
    assert all(p.prefix_cache_hit_rate == 0 for p in points)  # new prompts at every point
    # The double's queue and prefill timers (as vLLM's): every point records them and is fitted with the mean TTFT
    # spent outside the engine they give.
    assert all(p.timings is not None and p.timings.prefill_mean_ms > 0 and p.measured.ttft_outside_engine_mean_ms for p in points)
    assert all("ttft_outside_engine_mean_ms" in p.error_after for p in points)
    assert run.server.num_gpu_blocks == sim["blocks"] and run.server.block_size == 16
    assert cal.sweep["seconds"] < 60 and cal.gpu.tier == "l4" and cal.prior == "datasheet"


def test_calibrate_recovers_the_step_law(calibration, sim):
    cal, _ = calibration
    arch, gpu = PRESETS["llama-3.2-1b"], resolve("l4").gpu
    kv = sim["kv"]
    fitted = step_model(arch, gpu, tp=1, weights_parts=kv.weights_parts, kv_bytes_per_token=kv.kv_bytes_per_token, quantization="none", params=cal.params)
    truth = sim["step"]
    # What the points tell apart: a decode step (overhead and the weight read add up), the cost of a prefill
    # token (GEMM efficiency), and of a sequence in the batch.
    assert fitted.decode_fixed_ms(1) == pytest.approx(truth.decode_fixed_ms(1), rel=0.10)
    assert fitted.decode_step_ms(32, 300) == pytest.approx(truth.decode_step_ms(32, 300), rel=0.10)
    assert cal.latency["gemm_eff"] == pytest.approx(TRUTH.gemm_eff, rel=0.10)
    assert fitted.prefill_chunk_ms(2048, 1024) == pytest.approx(truth.prefill_chunk_ms(2048, 1024), rel=0.10)
    # KV capacity read from vllm:cache_config_info and the memory model fitted to it.
    check = cal.runs[0].kv
    assert check.measured_tokens == sim["blocks"] * 16 and abs(check.error_after()) <= 0.001
    assert check.error_before() == pytest.approx(1 / KV_SHORTFALL - 1, abs=0.002)
    # Leave-one-out errors after calibration, and far better than the datasheet prior.
    after, before = cal.errors["after_leave_one_out"], cal.errors["before"]
    for metric, target in TARGETS.items():
        assert after[metric].median_abs <= target, metric
        assert after[metric].median_abs < before[metric].median_abs, metric


def _bench(sim, out: Path, *args: str) -> dict:
    proc = run_cli("bench", "--url", sim["url"], "--api", "completions", "--ignore-eos", "-o", str(out), "--json", *args, env={"OPENAI_API_KEY": KEY})
    report = run_json(proc)
    assert all(r["failed"] == 0 for r in report["runs"])
    return report


def _check_requests_csv(path: Path, report: dict, *, n: int, output_tokens: int, prompt_tokens: int) -> None:
    """bench --requests: one row per request, whose TTFTs and latencies give the report's statistics."""
    import csv

    import numpy as np

    rows = list(csv.DictReader(path.open()))
    run = report["runs"][0]
    assert len(rows) == n and {r["run"] for r in rows} == {run["label"]}
    assert sorted(int(r["index"]) for r in rows) == list(range(n))
    assert all(r["status"] == "0" and int(r["output_tokens"]) == output_tokens and int(r["prompt_tokens"]) == prompt_tokens for r in rows)
    ttft = np.array([float(r["ttft_s"]) for r in rows]) * 1000
    e2e = np.array([float(r["latency_s"]) for r in rows]) * 1000
    assert float(np.median(ttft)) == pytest.approx(run["median_ttft_ms"], rel=1e-4)
    assert float(np.percentile(e2e, 95)) == pytest.approx(run["p95_e2el_ms"], rel=1e-4)
    starts = np.array([float(r["start_s"]) for r in rows])
    assert starts.min() >= 0 and starts.max() == pytest.approx(run["last_sent_s"], abs=1e-3)


def test_held_out_loads_within_the_targets(calibration, sim):
    """Loads calibrate never ran (other shapes, other concurrencies, another rate), measured with bench."""
    cal, _ = calibration
    root = sim["root"]
    _bench(sim, root / "h0.json", "--synthetic", "512", "--output-tokens", "24", "-c", "2", "-n", "8")
    _bench(sim, root / "h1.json", "--synthetic", "512", "--output-tokens", "24", "-c", "12", "-n", "24")
    h2 = _bench(sim, root / "h2.json", "--synthetic", "128", "--output-tokens", "48", "-c", "24", "-n", "48", "--requests", str(root / "h2.csv"))
    _check_requests_csv(root / "h2.csv", h2, n=48, output_tokens=48, prompt_tokens=128)
    _bench(sim, root / "h3.json", "--synthetic", "256", "--output-tokens", "32", "--request-rate", "12", "-n", "72")
    proc = run_cli("calibrate", "--check", str(root / "calibration.yaml"), "--from-bench", *(str(root / f"h{k}.json") for k in range(4)),
                   "--profile", str(sim["profile"]), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    check = json.loads(proc.stdout)
    assert len(check["points"]) == 4 and check["sha256"] == cal.sha256()
    for metric, target in TARGETS.items():
        s = check["summary"][metric]
        assert s["points"] == 4 and s["median_abs"] <= target, (metric, s, check["points"])
        assert s["p90_abs"] <= 2 * target + 0.05, (metric, s)
    assert check["kv_cache_tokens"]["error"] == 0.0


def test_tune_predicts_with_the_calibration(calibration, sim, tmp_path):
    out = tmp_path / "p.yaml"
    proc = run_cli("tune", "--gpu", "l4", "--model", "llama-3.2-1b", "--max-model-len", "4096", "--prompt-tokens", "256", "--output-tokens", "32",
                   "--calibration", str(sim["root"] / "calibration.yaml"), "-o", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    prof = yaml.safe_load(out.read_text())
    ref = prof["prediction"]["calibration"]
    assert ref["source"] == str(sim["root"] / "calibration.yaml") and ref["measured"] and ref["tier"] == "l4"
    # The KV cache the card really has (its calibrated memory), not the datasheet's 3% more.
    assert prof["prediction"]["kv_cache_tokens"] == pytest.approx(sim["blocks"] * 16, rel=0.001)


def test_from_bench_fits_the_same_kind_of_calibration(calibration, sim, tmp_path):
    """Bench reports a user already has, fitted offline. A prefill-heavy report (1024-token prompts, 8 tokens out)
    pins the GEMM efficiency: from the other three points alone the fit put it at 0.31-0.37 against the double's
    0.30 (9 runs), with it at 0.30-0.35 (8 runs)."""
    root = sim["root"]
    _bench(sim, root / "fb.json", "--synthetic", "256", "--output-tokens", "32", "--sweep", "concurrency=8,32", "-n", "32")
    _bench(sim, root / "pf.json", "--synthetic", "1024", "--output-tokens", "8", "--sweep", "concurrency=1,8", "-n", "16")
    out = tmp_path / "fb.yaml"
    proc = run_cli("calibrate", "--from-bench", str(root / "fb.json"), str(root / "h2.json"), str(root / "pf.json"), "--profile", str(sim["profile"]),
                   "-o", str(out), "--no-leave-one-out")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cal = Calibration.load(out)
    assert len(cal.runs[0].points) == 5 and cal.runs[0].server.num_gpu_blocks == sim["blocks"]
    assert cal.latency["gemm_eff"] == pytest.approx(TRUTH.gemm_eff, rel=0.2)
    # Bench reports of natural-length prompts are kept but not fitted; fewer than two fittable runs is one line.
    bad = run_cli("calibrate", "--from-bench", str(root / "h2.json"), "--profile", str(sim["profile"]))
    assert bad.returncode == 2 and "at least 2" in bad.stderr and "Traceback" not in bad.stderr


def test_ctrl_c_keeps_what_was_measured(sim, tmp_path):
    out = tmp_path / "partial.yaml"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "trdeploy", "calibrate", "--url", sim["url"], "--profile", str(sim["profile"]), "-o", str(out),
                             "--budget-minutes", "1", "--no-leave-one-out"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    seen = ""
    while time.monotonic() < deadline and "[3/" not in seen:  # two points measured, the third under way
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + stderr
    cal = Calibration.load(out)
    assert cal.sweep["interrupted"] and 2 <= len(cal.runs[0].points) <= 3 and cal.sweep["not_measured"]
    cut = [p for p in cal.runs[0].points if not p.fit]
    assert all("Ctrl-C" in (p.why_not_fit or "") for p in cut)


def test_the_server_is_checked_before_measuring(sim, tmp_path):
    base = ("calibrate", "--url", sim["url"], "--profile", str(sim["profile"]), "-o", str(tmp_path / "x.yaml"))
    no_key = run_cli(*base, env={"OPENAI_API_KEY": ""})
    assert no_key.returncode == 2 and "401" in no_key.stderr and "--api-key" in no_key.stderr and "Traceback" not in no_key.stderr
    other = run_cli(*base, "--model", "llama", env={"OPENAI_API_KEY": KEY})
    assert other.returncode == 2 and "does not serve 'llama'" in other.stderr and "serves m" in other.stderr
    prof = yaml.safe_load(sim["profile"].read_text())
    prof["engine_args"]["max_model_len"] = 8192
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(prof))
    wrong = run_cli("calibrate", "--url", sim["url"], "--profile", str(tmp_path / "p.yaml"), env={"OPENAI_API_KEY": KEY})
    assert wrong.returncode == 2 and "max_model_len 4096" in wrong.stderr
    assert not (tmp_path / "x.yaml").exists()
    both = run_cli("calibrate", "--url", sim["url"], "--from-bench", str(tmp_path / "p.yaml"), "--profile", str(sim["profile"]))
    assert both.returncode == 2 and "not both" in both.stderr


def test_bench_prompts_never_repeat_unless_asked(sim, tmp_path):
    """Two runs (and two sweep levels) send new prompts; --prompt-salt sends a run's prompts again, which the
    prefix cache then serves: bench reports the hit rate and flags the run."""
    first = _bench(sim, tmp_path / "a.json", "--synthetic", "256", "--output-tokens", "4", "--sweep", "concurrency=4,8", "-n", "16")
    again = _bench(sim, tmp_path / "b.json", "--synthetic", "256", "--output-tokens", "4", "--sweep", "concurrency=4,8", "-n", "16")
    for report in (first, again):
        for run in report["runs"]:
            pc = run["server_metrics"]["prefix_cache"]
            assert pc["hit_rate"] == 0 and not pc["flagged"] and pc["queries"] == 16 * 256
        assert report["prompts"]["unique"] and not report["prompts"]["salt_given"]
    assert first["prompts"]["salt"] != again["prompts"]["salt"]
    salt = str(first["prompts"]["salt"])
    repeat = run_cli("bench", "--url", sim["url"], "--api", "completions", "--ignore-eos", "--synthetic", "256", "--output-tokens", "4",
                     "--sweep", "concurrency=4,8", "-n", "16", "--prompt-salt", salt, "--json", env={"OPENAI_API_KEY": KEY})  # fmt: skip
    report = run_json(repeat)
    for run in report["runs"]:
        pc = run["server_metrics"]["prefix_cache"]
        assert pc["flagged"] and pc["hit_rate"] == pytest.approx(240 / 256)  # every block but the last token's
    assert "came from vLLM's prefix cache" in repeat.stderr
    assert report["runs"][0]["server_metrics"]["cache_config"]["num_gpu_blocks"] == sim["blocks"]
    # Text prompts too: the embedded Turkish corpus, sent twice in one run (cycled), never hits.
    text = run_cli("bench", "--url", sim["url"], "--api", "completions", "--output-tokens", "2", "-c", "8", "-n", "600", "--json",
                   env={"OPENAI_API_KEY": KEY})  # fmt: skip
    tr = run_json(text)["runs"][0]["server_metrics"]["prefix_cache"]
    assert tr["hit_rate"] < 0.01
