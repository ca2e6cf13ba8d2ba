"""Per-replica SLA capacity, max_num_seqs, the capacity plan, start-up, `tune --gpu all` and GPU provenance."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import run_cli

from trdeploy.deployment import SCHEMA_VERSION, DeploymentProfile
from trdeploy.errors import TrdeployError
from trdeploy.sizing import startup as st
from trdeploy.sizing.architectures import PRESETS
from trdeploy.sizing.batching import Engine, Load, Mix
from trdeploy.sizing.calibration import resolve
from trdeploy.sizing.compare import compare
from trdeploy.sizing.gpus import GPUS, GiB
from trdeploy.sizing.latency import predict_latency, step_model
from trdeploy.sizing.memory import KV_BLOCK_SIZE, predict_kv_cache
from trdeploy.sizing.request import DEFAULT_SLA_TPOT_MS, DEFAULT_SLA_TTFT_P95_MS
from trdeploy.sizing.tuning import TuneRequest, tune


def _latency_from_profile(p: DeploymentProfile, c: int):
    """Recompute the closed-loop latency at concurrency c from the profile alone (the public memory and latency
    models with the tier's calibration), with max_num_seqs admitting every client (the SLA capacity's definition)."""
    ea = p.engine_args
    arch = PRESETS[p.name.split("-bf16")[0].split("-awq")[0]]
    tier = resolve(p.gpu.tier)
    assert p.prediction.calibration is not None and p.prediction.calibration.sha256 == tier.ref.sha256  # the profile names what it used
    kv = predict_kv_cache(
        arch, tier.gpu, tp=ea.tensor_parallel_size, max_model_len=ea.max_model_len, max_num_seqs=ea.max_num_seqs,
        max_num_batched_tokens=ea.max_num_batched_tokens, gpu_memory_utilization=ea.gpu_memory_utilization,
        kv_cache_dtype=ea.kv_cache_dtype, quantization=p.quantization,
    )
    step = step_model(
        arch, tier.gpu, tp=ea.tensor_parallel_size, weights_parts=kv.weights_parts, kv_bytes_per_token=kv.kv_bytes_per_token,
        quantization=p.quantization, params=tier.params,
    )
    seqs = max(ea.max_num_seqs, c)
    engine = Engine(max_num_seqs=seqs, max_num_batched_tokens=max(ea.max_num_batched_tokens, seqs), kv_capacity_tokens=kv.num_blocks * KV_BLOCK_SIZE)
    return predict_latency(step, engine, Mix(p.workload.prompt_tokens, p.workload.output_tokens), Load.closed(c, max(3 * c, 100)))


def _meets(p: DeploymentProfile, lat) -> bool:
    s = p.sla
    return (s.ttft_p95_ms is None or lat.ttft_p95_ms <= s.ttft_p95_ms) and (s.tpot_ms is None or lat.tpot_p50_ms <= s.tpot_ms) and (
        s.e2e_p95_ms is None or lat.e2e_p95_ms <= s.e2e_p95_ms
    )


CASES = [
    {"gpu": "h100", "model": "llama-3-8b", "max_model_len": 8192},
    {"gpu": "h100", "model": "llama-3-8b", "quantization": "awq", "max_model_len": 8192, "ttft_p95_ms": 1000.0},
    {"gpu": "a100-80gb", "model": "llama-3-8b", "max_model_len": 8192, "tpot_ms": 30.0},
    {"gpu": "l40s", "model": "llama-3-8b", "quantization": "awq", "max_model_len": 8192, "concurrency": 200},
    {"gpu": "rtx4090", "model": "llama-3-8b", "quantization": "awq", "max_model_len": 4096, "requests_per_day": 300_000},
    {"gpu": "h200", "model": "llama-3-8b", "max_model_len": 8192, "e2e_p95_ms": 20_000.0, "concurrency": 400},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_max_num_seqs_admits_the_sla_capacity_and_the_sla_fails_one_above(case):
    r = tune(TuneRequest(**case))
    p = r.profile
    pred = p.prediction
    cap = pred.sla_capacity_per_replica
    assert cap is not None and cap >= 1
    assert p.engine_args.max_num_seqs >= cap  # a replica admits the load the SLA allows
    assert pred.sla_max_concurrency == cap  # tune sized max_num_seqs, so the capped and uncapped capacities agree
    assert _meets(p, _latency_from_profile(p, cap))
    kv_bound = pred.details["kv_capacity_typical_requests"]
    if cap < kv_bound:  # the SLA, not the KV cache, is what stops it
        assert not _meets(p, _latency_from_profile(p, cap + 1))
    # The planned load per replica is within the capacity, and the capacity plan serves the traffic.
    plan = pred.capacity
    assert plan is not None and plan.per_replica_concurrency == cap
    assert pred.details["concurrency_per_replica"] <= cap
    assert 1 <= plan.replicas_min <= plan.replicas_max == pred.replicas
    if p.workload.requests_per_day:
        peak = p.workload.requests_per_day / 86400 * p.workload.peak_factor
        assert plan.peak_requests_per_s == pytest.approx(peak, rel=1e-3)
        assert plan.replicas_max * plan.requests_per_s_per_replica >= peak * 0.999
        assert plan.replicas_min == max(1, math.ceil(peak / p.workload.peak_factor / plan.requests_per_s_per_replica - 1e-6))
    else:
        assert plan.replicas_max * cap >= p.workload.concurrency


def test_the_planning_default_no_longer_caps_max_num_seqs():
    # The issue: 32 planned requests set max_num_seqs 32, which hid a replica's real capacity.
    p = tune(TuneRequest(gpu="h100", max_model_len=8192)).profile
    assert p.workload.concurrency == 32
    assert p.prediction.sla_capacity_per_replica > 32
    assert p.engine_args.max_num_seqs >= p.prediction.sla_capacity_per_replica


def test_sla_capacity_is_independent_of_a_given_max_num_seqs():
    free = tune(TuneRequest(gpu="h100", max_model_len=8192)).profile.prediction
    capped = tune(TuneRequest(gpu="h100", max_model_len=8192, max_num_seqs=8))
    assert capped.profile.engine_args.max_num_seqs == 8
    assert capped.profile.prediction.sla_capacity_per_replica == free.sla_capacity_per_replica > 8
    assert capped.profile.prediction.sla_max_concurrency == 8  # what this configuration admits
    assert capped.profile.prediction.capacity.per_replica_concurrency == 8  # replicas are planned for what it admits
    assert any("max_num_seqs 8 admits fewer" in w for w in capped.warnings)


def test_default_sla_is_used_and_named():
    p = tune(TuneRequest(gpu="h100", max_model_len=8192)).profile
    assert (p.sla.ttft_p95_ms, p.sla.tpot_ms, p.sla.e2e_p95_ms) == (DEFAULT_SLA_TTFT_P95_MS, DEFAULT_SLA_TPOT_MS, None)
    assert p.prediction.sla_met is True and p.prediction.details["sla_source"] == "default"
    assert any(a.startswith("SLA: none given, so the default interactive SLA") for a in p.assumptions)
    given = tune(TuneRequest(gpu="h100", max_model_len=8192, e2e_p95_ms=5000.0)).profile
    assert (given.sla.ttft_p95_ms, given.sla.tpot_ms, given.sla.e2e_p95_ms) == (None, None, 5000.0)
    assert given.prediction.details["sla_source"] == "given"
    assert not any("default interactive SLA" in a for a in given.assumptions)


# --- Start-up -------------------------------------------------------------------------------------------------


# Measured first starts of vLLM 0.25.0 (tests/data/vllm_measurements_h200.json `starts`; tests/data/vllm-0.25.0-h100.md):
# (GB read, layers, read GB/s of that run, bare machine, /health seconds)
MEASURED_STARTS = [
    ("h200 8B bf16, bare machine", 16.06, 32, 16.06 / 2.32, True, 228.6),
    ("h200 70B AWQ, kernel caches warm", 39.77, 80, 39.77 / 6.14, False, 146.4),
    ("h100 8B bf16", 16.06, 32, 16.06 / 2.32, True, 229.0),  # read time not logged there: the H200's local disk assumed
]


@pytest.mark.parametrize("what, gb, layers, read, bare, measured", MEASURED_STARTS, ids=[m[0] for m in MEASURED_STARTS])
def test_startup_phases_reproduce_the_measured_starts(what, gb, layers, read, bare, measured):
    inputs = st.StartupInputs(weights_bytes=gb * 1e9, num_layers=layers, gpu_tier="h200", tp=1)
    assert sum(st.phases(inputs, bare_machine=bare, compile_cache_warm=False, read_gb_per_s=read).values()) == pytest.approx(measured, rel=0.03)


def test_startup_in_the_profile_scales_with_the_storage_and_the_model():
    default = tune(TuneRequest(gpu="h100", max_model_len=8192)).profile.prediction.startup
    slow = tune(TuneRequest(gpu="h100", max_model_len=8192, weights_read_gbps=0.25)).profile.prediction.startup
    for s in (default, slow):
        assert s.cold_s == pytest.approx(s.warm_s + s.compile_s, abs=0.2)
        assert s.warm_s == pytest.approx(s.weights_load_s + s.engine_init_s, abs=0.2)
        assert s.warm_s < s.cold_s
        assert s.basis.startswith("measured: vLLM 0.25.0 first starts") and "; assumed: weights 16.1 GB" in s.basis
    assert default.read_gb_per_s == st.DEFAULT_READ_GB_PER_S and "at 1 GB/s (default, --weights-read-gbps)" in default.basis
    assert slow.weights_load_s == pytest.approx(4 * default.weights_load_s, rel=0.01)
    assert slow.cold_s - default.cold_s == pytest.approx(3 * default.weights_load_s, abs=0.5)
    assert "at 0.25 GB/s (--weights-read-gbps)" in slow.basis
    # 70B AWQ on 2 GPUs: more bytes and more layers to compile; the basis says 2x h100 is not measured.
    big = tune(TuneRequest(gpu="h100", model="llama-3-70b", quantization="awq", gpus=2, max_model_len=8192)).profile
    assert big.prediction.startup.weights_load_s == pytest.approx(big.prediction.weights_gib * 2 * GiB / 1e9, rel=0.01)
    assert big.prediction.startup.cold_s > default.cold_s + 30
    assert "not yet measured on 2x h100" in big.prediction.startup.basis


def test_the_profile_is_complete_and_older_schemas_are_refused_in_one_line(tmp_path):
    profile = tune(TuneRequest(gpu="rtx4090", max_model_len=8192, concurrency=32)).profile
    # Everything the commands after tune read is written by tune, never defaulted downstream.
    assert profile.schema_version == SCHEMA_VERSION == 3
    assert profile.engine_args.served_model_name == profile.model.id
    assert (profile.gpu.gpus_per_node, profile.gpu.cuda, profile.gpu.min_driver) == (8, "12.9", "575.51.03")
    assert profile.prediction.startup.budget_s == math.ceil((profile.prediction.startup.cold_s * 1.5 + 60) / 10) * 10
    # The load the user asked for is kept; rounding to whole replicas is the capacity plan's.
    assert profile.workload.concurrency == 32
    plan = profile.prediction.capacity
    assert plan.peak_concurrency == 32 and plan.replicas_max * plan.per_replica_concurrency >= 32
    assert profile.prediction.details["concurrency_per_replica"] * plan.replicas_max != 32  # 11 x 3: only the plan rounds
    data = yaml.safe_load(profile.to_yaml())
    for version in (1, 2, 999, "2"):
        path = tmp_path / f"v{version}.yaml"
        path.write_text(yaml.safe_dump({**data, "schema_version": version}), encoding="utf-8")
        with pytest.raises(TrdeployError) as err:
            DeploymentProfile.load(path)
        assert "\n" not in err.value.one_line()
        assert ("Re-run `trdeploy tune`" in err.value.one_line()) == (version in (1, 2))
    for key in ("capacity", "startup"):
        broken = yaml.safe_load(profile.to_yaml())
        broken["prediction"].pop(key)
        path = tmp_path / f"no-{key}.yaml"
        path.write_text(yaml.safe_dump(broken), encoding="utf-8")
        with pytest.raises(TrdeployError, match=f"prediction.{key}: Field required"):
            DeploymentProfile.load(path)


# --- GPU provenance and `tune --gpu all` --------------------------------------------------------------------------


def test_catalog_says_what_was_measured():
    assert GPUS["h100"].memory_measured and GPUS["h100"].speed_measured and GPUS["h100"].startup_measured
    assert GPUS["h200"].memory_measured and GPUS["h200"].speed_measured
    for tier in ("a100-80gb", "a100-40gb", "l40s", "l4", "a10g", "rtx4090"):
        g = GPUS[tier]
        assert not g.memory_measured and not g.speed_measured
        assert g.provenance()["speed"].startswith("not measured")
    assert GPUS["h100"].provenance()["memory"].startswith("measured: tests/data/vllm_measurements.json")


def test_compare_every_tier_with_cost_per_word():
    c = compare(TuneRequest(gpu="all", max_model_len=8192, tokens_per_word=2.5, requests_per_day=200_000))
    tiers = [r.tier for r in c.rows]
    assert set(tiers) == set(GPUS)
    assert c.tokens_per_word == 2.5 and c.sla_default
    for r in c.rows:
        assert r.measured == (GPUS[r.tier].memory_measured and GPUS[r.tier].speed_measured)
        if not r.fits:
            assert "does not fit" in (r.why or "")
            continue
        # The row is exactly `tune --gpu TIER --gpus N`.
        p = tune(TuneRequest(gpu=r.tier, gpus=r.gpus, max_model_len=8192, tokens_per_word=2.5, requests_per_day=200_000)).profile
        assert (r.kv_cache_tokens, r.sla_capacity_per_replica, r.replicas, r.hourly_usd) == (
            p.prediction.kv_cache_tokens, p.prediction.sla_capacity_per_replica, p.prediction.replicas, p.prediction.hourly_cost_usd,
        )
        assert r.hourly_usd == pytest.approx(r.replicas * r.gpus * GPUS[r.tier].hourly_usd, abs=0.01)
        if r.sla_capacity_per_replica:
            tok_s = p.prediction.capacity.requests_per_s_per_replica * p.workload.output_tokens
            words_per_hour = tok_s * 3600 / 2.5
            assert r.usd_per_million_words == pytest.approx(r.gpus * GPUS[r.tier].hourly_usd / words_per_hour * 1e6, rel=1e-3)
        else:
            assert r.usd_per_million_words is None and "SLA" in r.why
    # The H100 is measured and cheaper per word than the A100 80GB for this 8B bf16 service (more bandwidth per dollar).
    row = {r.tier: r for r in c.rows if r.fits}
    assert row["h100"].usd_per_million_words < row["a100-80gb"].usd_per_million_words


def test_compare_lists_the_gpu_counts_that_do_not_fit():
    c = compare(TuneRequest(gpu="all", model="llama-3-70b", max_model_len=8192, tokens_per_word=2.5), tiers=["h100", "a100-40gb"])
    h100 = [r for r in c.rows if r.tier == "h100"]
    assert [(r.gpus, r.fits) for r in h100] == [(1, False), (2, True)]
    assert "does not fit one h100" in h100[0].why
    assert [(r.gpus, r.fits) for r in c.rows if r.tier == "a100-40gb"][-1] == (4, True)


def test_cli_gpu_all_json_and_table():
    proc = run_cli("tune", "--gpu", "all", "--max-model-len", "8192", "--tokens-per-word", "2.5", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"model", "max_model_len", "tokens_per_word", "sla", "sla_default", "rows", "notes"} <= set(data)
    keys = {"tier", "gpus", "fits", "why", "kv_cache_tokens", "sla_capacity_per_replica", "replicas", "hourly_usd", "usd_per_million_words", "memory_measured", "speed_measured", "measured"}
    assert all(keys <= set(r) for r in data["rows"])
    table = run_cli("tune", "--gpu", "all", "--max-model-len", "8192", "--tokens-per-word", "2.5", env={"COLUMNS": "200"})
    assert table.returncode == 0 and "$/M words" in table.stdout and "rtx4090" in table.stdout
    refused = run_cli("tune", "--gpu", "all", "-o", "x.yaml")
    assert refused.returncode == 2 and "writes no profile" in refused.stderr
    # An error that is no tier's fault is one line once, not a row per tier.
    both = run_cli("tune", "--gpu", "all", "--concurrency", "8", "--requests-per-day", "1000", "--json")
    assert both.returncode == 2 and both.stdout == "" and "--concurrency and --requests-per-day" in both.stderr
    too_long = run_cli("tune", "--gpu", "all", "--max-model-len", "65536")
    assert too_long.returncode == 2 and "exceeds llama-3-8b's 8192 positions" in too_long.stderr
