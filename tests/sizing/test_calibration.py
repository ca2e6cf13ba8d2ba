"""The calibration mechanism: the simulated engine, the fit, the shipped files, and `tune --calibration`."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT, run_cli

from trdeploy.arrivals import arrival_schedule
from trdeploy.errors import TrdeployError
from trdeploy.sizing.architectures import PRESETS
from trdeploy.sizing.batching import Engine, Load, Mix, simulate
from trdeploy.sizing.calibration import Calibration, fit_calibration, observations, resolve, shipped, shipped_tiers
from trdeploy.sizing.fit import fit, fit_multistart
from trdeploy.sizing.latency import PRIOR, LatencyParams, StepModel, step_model
from trdeploy.sizing.memory import predict_kv_cache
from trdeploy.sizing.tuning import TuneRequest, tune


def _load_make_calibrations():
    spec = importlib.util.spec_from_file_location("make_calibrations", ROOT / "scripts" / "make_calibrations.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_calibrations"] = mod
    spec.loader.exec_module(mod)
    return mod


def _flat_step(**kw) -> StepModel:
    base = {"weight_ms": 10.0, "gemm_ms_per_token": 0.01, "decode_gemm_ms_per_token": 0.01, "attn_ms_per_token_ctx": 0.0, "kv_ms_per_token": 0.0,
                "step_overhead_ms": 0.0, "per_sequence_ms": 0.0, "request_overhead_ms": 0.0, "frontend_request_ms": 0.0, "frontend_token_ms": 0.0, "frontend_finish_ms": 0.0, "request_jitter_ms": 0.0,
                "allreduce_fixed_ms": 0.0, "allreduce_ms_per_token": 0.0}  # fmt: skip
    return StepModel(**{**base, **kw})


# --- The simulated engine ------------------------------------------------------------------------------------


def test_one_request_takes_its_prefill_and_one_step_per_token():
    # Weight-bound steps of 10 ms: a 100-token prompt is one step, then 9 decode steps for 10 tokens.
    sim = simulate(_flat_step(), Engine(8, 512), Mix(100, 10), Load.closed(1, 3))
    assert np.allclose(sim.ttft_ms, 10.0) and np.allclose(sim.e2e_ms, 100.0) and np.allclose(sim.tpot_ms, 10.0)
    assert sim.duration_ms == pytest.approx(300.0) and sim.steps == 30


def test_chunked_prefill_within_the_token_budget_and_max_num_seqs():
    # 4 clients, 300-token prompts, 512-token budget: the first step prefills one prompt and part of the next.
    step = _flat_step(weight_ms=1.0, gemm_ms_per_token=0.1)
    sim = simulate(step, Engine(8, 512), Mix(300, 5), Load.closed(4, 4))
    ttft = np.sort(sim.ttft_ms)
    assert ttft[0] == pytest.approx(51.2)  # one step of 512 tokens at 0.1 ms each
    # Step 2: the first request's decode token, the rest of the second prompt, the third, and 123 of the fourth;
    # step 3: three decode tokens and the fourth prompt's last 177 tokens.
    assert ttft[-1] == pytest.approx(51.2 + 51.2 + 0.1 * (3 + 177))
    # max_num_seqs 2: the third client waits for a slot; everything still finishes.
    capped = simulate(step, Engine(2, 512), Mix(300, 5), Load.closed(4, 8))
    assert np.isfinite(capped.e2e_ms).all() and capped.e2e_ms.max() > sim.e2e_ms.max()


def test_a_full_kv_cache_preempts_and_still_finishes():
    step = _flat_step(weight_ms=1.0)
    roomy = simulate(step, Engine(16, 2048), Mix(100, 100), Load.closed(8, 16))
    tight = simulate(step, Engine(16, 2048, kv_capacity_tokens=900), Mix(100, 100), Load.closed(8, 16))
    assert roomy.preemptions == 0 and tight.preemptions > 0
    assert np.isfinite(tight.e2e_ms).all() and tight.duration_ms > roomy.duration_ms
    with pytest.raises(ValueError, match="does not fit the KV cache"):
        simulate(step, Engine(16, 2048, kv_capacity_tokens=64), Mix(100, 10), Load.closed(1, 1))


def test_a_random_overhead_spreads_a_lone_clients_ttft():
    """request_jitter_ms: exponential, stratified, fixed by the seed; without it one client's TTFT has no spread."""
    from trdeploy.sizing.batching import jitter_quantiles

    q = jitter_quantiles(400, seed=3)
    assert q.mean() == pytest.approx(1.0, rel=0.02) and np.median(q) == pytest.approx(math.log(2), rel=0.02)
    assert np.array_equal(q, jitter_quantiles(400, seed=3)) and not np.array_equal(q, jitter_quantiles(400, seed=4))
    assert np.array_equal(np.sort(q), np.sort(jitter_quantiles(400, seed=4)))  # the same draws, in another order
    flat = simulate(_flat_step(request_overhead_ms=5.0), Engine(8, 512), Mix(100, 10), Load.closed(1, 40))
    spread = simulate(_flat_step(request_overhead_ms=5.0, request_jitter_ms=4.0), Engine(8, 512), Mix(100, 10), Load.closed(1, 40))
    assert np.ptp(flat.ttft_ms) == pytest.approx(0.0, abs=1e-9)
    assert np.mean(spread.ttft_ms - flat.ttft_ms) == pytest.approx(4.0, rel=0.05)
    assert np.percentile(spread.ttft_ms, 95) - np.percentile(spread.ttft_ms, 50) > 6.0  # 4 x (ln 20 - ln 2) = 9.2 ms


def test_the_engine_part_of_ttft_is_what_vllms_queue_and_prefill_timers_count():
    # A lone request: 5 ms before the API server, 2 ms of its serial work, then one 10 ms prefill step.
    sim = simulate(_flat_step(request_overhead_ms=5.0, frontend_request_ms=2.0), Engine(8, 512), Mix(100, 10), Load.closed(1, 3))
    assert np.allclose(sim.engine_ttft_ms, 10.0) and np.allclose(sim.ttft_ms, 17.0)
    # Arriving while a step runs, a request waits for its end outside the engine's timers (vLLM's engine core takes
    # requests in between steps): 8 clients of 300-token prompts, 512-token steps of 51.2 ms.
    step = _flat_step(weight_ms=1.0, gemm_ms_per_token=0.1, request_overhead_ms=3.0)
    from trdeploy.sizing.latency import predict_latency

    pred = predict_latency(step, Engine(8, 512), Mix(300, 5), Load.poisson(30.0, 60, seed=1))
    assert pred.engine_ttft_mean_ms < pred.ttft_mean_ms and pred.ttft_outside_engine_mean_ms >= 3.0
    assert pred.metric("ttft_outside_engine_mean_ms") == pytest.approx(pred.ttft_mean_ms - pred.engine_ttft_mean_ms)


def test_timings_come_from_benchs_report_and_give_the_outside_engine_figure():
    from trdeploy.sizing.calibration import Measured, Timings

    run = {"median_ttft_ms": 50.0, "p95_ttft_ms": 60.0, "mean_ttft_ms": 52.0, "mean_e2el_ms": 900.0,
           "server_metrics": {"mean_ms": {"ttft": 47.0, "queue": 1.5, "prefill": 38.5, "e2el": 895.0, "decode": 850.0}}}  # fmt: skip
    t = Timings.from_bench_run(run)
    assert t.queue_mean_ms == 1.5 and t.ttft_outside_engine_mean_ms == pytest.approx(12.0)
    assert Measured.from_bench_run(run).ttft_outside_engine_mean_ms == pytest.approx(12.0)
    # Without vLLM's timers (another server, --no-server-metrics) there is no such figure, and nothing breaks.
    bare = {"median_ttft_ms": 50.0, "server_metrics": {"available": False}}
    assert Timings.from_bench_run(bare) is None and Measured.from_bench_run(bare).ttft_outside_engine_mean_ms is None
    odd = {**run, "server_metrics": {"mean_ms": {"queue": 10.0, "prefill": 50.0}}}  # the timers exceed bench's TTFT
    assert Timings.from_bench_run(odd).ttft_outside_engine_mean_ms is None


def test_the_api_server_paces_streams_when_it_cannot_keep_up():
    # 64 sequences, 10 ms steps: 0.1 ms per streamed token is 6.4 ms per step (keeps up), 0.3 ms is 19.2 ms (paces).
    fast = simulate(_flat_step(frontend_token_ms=0.1), Engine(64, 8192), Mix(10, 50), Load.closed(64, 64))
    slow = simulate(_flat_step(frontend_token_ms=0.3), Engine(64, 8192), Mix(10, 50), Load.closed(64, 64))
    assert np.median(fast.tpot_ms) == pytest.approx(10.0, rel=0.02)
    assert np.median(slow.tpot_ms) == pytest.approx(64 * 0.3, rel=0.05)


def test_the_next_wave_waits_behind_the_api_servers_finish_work():
    # 4 clients, 10 ms steps: all four prompts go in one step and end together at 100 ms. The API server then
    # spends 3 ms on each finished request before it takes the next wave, which reaches the engine at 112 ms.
    plain = simulate(_flat_step(), Engine(8, 512), Mix(100, 10), Load.closed(4, 8))
    slow = simulate(_flat_step(frontend_finish_ms=3.0), Engine(8, 512), Mix(100, 10), Load.closed(4, 8))
    assert np.allclose(plain.ttft_ms, 10.0) and np.allclose(plain.e2e_ms, 100.0)
    assert np.allclose(slow.ttft_ms[:4], 10.0) and np.allclose(slow.e2e_ms[:4], 100.0)  # its own last token is not delayed
    assert np.allclose(slow.sent_ms[4:], 100.0) and np.allclose(slow.ttft_ms[4:], 22.0) and np.allclose(slow.e2e_ms[4:], 112.0)
    assert np.allclose(slow.engine_ttft_ms[4:], 10.0)  # the wait is outside vLLM's engine timers
    # One client: the finish work of its own last request delays its next one by the same 3 ms.
    one = simulate(_flat_step(frontend_finish_ms=3.0), Engine(8, 512), Mix(100, 10), Load.closed(1, 2))
    assert one.ttft_ms[1] == pytest.approx(13.0)


def test_rate_driven_arrivals_follow_benchs_schedule():
    sim = simulate(_flat_step(weight_ms=1.0), Engine(64, 4096), Mix(50, 5), Load.poisson(20.0, 50, seed=3))
    assert np.allclose(sim.sent_ms, arrival_schedule(20.0, 1.0, 50, 3) * 1000)
    # A concurrency cap under a rate holds sends back until a slot frees.
    capped = simulate(_flat_step(weight_ms=50.0), Engine(64, 4096), Mix(50, 5), Load.poisson(200.0, 20, seed=3, concurrency=2))
    assert (np.diff(np.sort(capped.sent_ms))[2:] > 100).any()


def _reference(step: StepModel, budget: int, mix: Mix, clients: int, n: int, *, one_ahead: bool = False) -> np.ndarray:
    """The same engine, one step at a time and nothing summed (closed loop, no KV limit, no prefix cache): the
    end-to-end latencies, sorted. The API server serves, first come first served, each request sent before a
    step ends, then that step's tokens. `one_ahead` (async scheduling): a step takes in only the requests that
    were in by the start of the step before it, unless nothing was running."""
    t = front = 0.0
    prev_start = None  # the start of the step before, while the engine is busy
    sent, end, queue, running = {}, {}, [], []  # running: [request, prompt left, context, tokens out]
    sends = [(0.0, i) for i in range(min(clients, n))]
    nxt = len(sends)

    def serve_requests(until: float) -> None:
        nonlocal front
        for when, i in sorted(s for s in sends if s[0] <= until):
            sends.remove((when, i))
            sent[i], front = when, max(front, when) + step.frontend_request_ms
            queue.append((front + step.request_overhead_ms, i))

    while len(end) < n:
        serve_requests(t)
        if not running:
            prev_start = None
        horizon = prev_start if one_ahead and prev_start is not None else t
        for q in sorted(q for q in queue if q[0] <= horizon):
            queue.remove(q)
            running.append([q[1], mix.prompt_tokens, 0, 0])
        if not running:
            t = min([q[0] for q in queue] + [s[0] for s in sends])
            continue
        left, tokens, seqs, kvctx, attn, outs = budget, 0, 0, 0, 0.0, []
        for r in running:
            c = 1 if r[1] == 0 else min(r[1], left)
            if c <= 0:
                continue
            if r[1]:
                attn += c * (r[2] + c / 2.0)
                kvctx += r[2]
            else:
                kvctx += r[2] + 1  # a decode step attends over the context and the token it processes
            tokens, seqs, left = tokens + c, seqs + 1, left - c
            outs.append((r, c))
        prev_start = t
        t += step.step_ms(tokens=tokens, seqs=seqs, kv_context=kvctx, attn_token_ctx=attn, decode_only=False)
        emitted = []
        for r, c in outs:
            r[2] += c
            if r[1]:
                r[1] -= c
                if r[1] == 0:
                    r[3] = 1
                    emitted.append(r)
            else:
                r[3] += 1
                emitted.append(r)
        serve_requests(t)
        front = max(front, t) + len(emitted) * step.frontend_token_ms
        for r in emitted:
            if r[3] == mix.output_tokens:
                running.remove(r)
                end[r[0]] = front
                if nxt < n:
                    sends.append((front, nxt))
                    nxt += 1
    return np.sort([end[i] - sent[i] for i in range(n)])


@pytest.mark.parametrize("one_ahead", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("clients, n", [(1, 3), (8, 24), (24, 40)])
def test_decode_leaps_match_a_step_by_step_reference(clients, n, one_ahead):
    """Decode stretches are summed in closed form (times and the API server's backlog): the same latencies as
    a plain step-by-step simulation, with steps scheduled when they start or one step ahead."""
    step = _flat_step(weight_ms=5.0, kv_ms_per_token=0.001, per_sequence_ms=0.01, frontend_token_ms=0.3, frontend_request_ms=0.5,
                      request_overhead_ms=3.0)  # fmt: skip
    mix = Mix(64, 40)
    sim = simulate(step, Engine(64, 1024, async_scheduling=one_ahead), mix, Load.closed(clients, n))
    assert np.allclose(np.sort(sim.e2e_ms), _reference(step, 1024, mix, clients, n, one_ahead=one_ahead), rtol=1e-9)


def test_async_scheduling_admits_a_request_that_arrives_mid_step_into_the_step_after_the_next():
    """vLLM 0.25 schedules a step while the one before it runs (trdeploy.sizing.batching's docstring)."""
    step = _flat_step(weight_ms=1.0, gemm_ms_per_token=0.1)  # a 300-token prefill is 30 ms, a decode step 1 ms
    rate = Load.poisson(1000.0, 2, seed=0)
    s0, s1 = arrival_schedule(1000.0, 1.0, 2, 0) * 1000  # the second request arrives while the first one's prefill runs
    assert 0 < s1 - s0 < 30.0
    sync = simulate(step, Engine(8, 512), Mix(300, 5), rate)
    ahead = simulate(step, Engine(8, 512, async_scheduling=True), Mix(300, 5), rate)
    # An idle engine schedules the first request at once either way: one 30 ms step.
    assert sync.ttft_ms[0] == pytest.approx(30.0) and ahead.ttft_ms[0] == pytest.approx(30.0)
    # Synchronous: the second is taken in when that step ends and prefilled in the next (30 ms and the first's decode token).
    assert sync.ttft_ms[1] == pytest.approx(s0 + 30.0 + 30.1 - s1)
    # One step ahead: the step after the first was scheduled when the first started (the first's decode alone, 1 ms),
    # so the second waits for the step after it; vLLM's timers count it from when it was taken in to its first token.
    assert ahead.ttft_ms[1] == pytest.approx(s0 + 30.0 + 1.0 + 30.1 - s1)
    assert ahead.engine_ttft_ms[1] == pytest.approx(1.0 + 30.1) and sync.engine_ttft_ms[1] == pytest.approx(30.1)
    # Synchronous is the default.
    assert Engine(8, 512).async_scheduling is False


# --- The fit -----------------------------------------------------------------------------------------------------


def test_the_fit_recovers_known_parameters_from_simulated_points():
    arch, tier = PRESETS["llama-3-8b"], resolve("h100")
    kv = predict_kv_cache(arch, tier.gpu, max_model_len=8192, max_num_seqs=256, max_num_batched_tokens=8192)
    truth = PRIOR.with_values(step_overhead_ms=2.5, kv_read_eff=0.6, gemm_eff=0.35, request_overhead_ms=25.0, frontend_token_ms=0.02)

    def make(p: LatencyParams):
        return step_model(arch, tier.gpu, tp=1, weights_parts=kv.weights_parts, kv_bytes_per_token=kv.kv_bytes_per_token, quantization="none", params=p)

    from trdeploy.sizing.fit import Observation

    eng = Engine(256, 8192, kv.num_blocks * 16)
    obs = []
    for mix, c in [(Mix(512, 128), 1), (Mix(512, 128), 16), (Mix(512, 128), 64), (Mix(3000, 128), 32), (Mix(128, 256), 32)]:
        lat = make(truth)
        from trdeploy.sizing.latency import predict_latency

        pred = predict_latency(lat, eng, mix, Load.closed(c, 3 * c))
        measured = {m: pred.metric(m) for m in ("ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "e2e_p95_ms", "output_throughput")}
        obs.append(Observation(id=f"c{c}", mix=mix, load=Load.closed(c, 3 * c), engine=eng, measured=measured, make_step=make))
    names = ["step_overhead_ms", "kv_read_eff", "gemm_eff", "request_overhead_ms", "frontend_token_ms"]
    res = fit_multistart(PRIOR, names, obs, prior=PRIOR, starts=[{"frontend_token_ms": 0.02}, {"frontend_token_ms": 0.08}])
    assert res.rms_log_error < 0.02  # the prior keeps a little pull towards the datasheet values
    # The API server keeps up at these loads, so its per-token cost barely shows: the prior keeps it.
    for n in ("step_overhead_ms", "kv_read_eff", "gemm_eff", "request_overhead_ms"):
        assert getattr(res.params, n) == pytest.approx(getattr(truth, n), rel=0.1), n


def test_the_simplex_polish_never_ends_above_where_it_starts_and_finds_a_lower_valley():
    """The fit's Nelder-Mead polish: from a Levenberg-Marquardt result stopped early (2 iterations), a lower cost on
    the same residuals; from an optimum, no worse."""
    from trdeploy.sizing.fit import Observation, polish
    from trdeploy.sizing.latency import predict_latency

    arch, tier = PRESETS["llama-3-8b"], resolve("h100")
    kv = predict_kv_cache(arch, tier.gpu, max_model_len=8192, max_num_seqs=64, max_num_batched_tokens=8192)
    # Without the API server's finish cost: with PRIOR's 1 ms in the law and the fit alike, the fit from PRIOR stops
    # in another valley of the overhead/jitter split (rms 3.6%, overhead 21.7 ms, jitter 8.7 ms): a limit of the
    # optimiser the note reports, not what this test is about.
    start = PRIOR.with_values(frontend_finish_ms=0.0)
    truth = start.with_values(step_overhead_ms=2.5, gemm_eff=0.35, request_overhead_ms=25.0, request_jitter_ms=6.0)

    def make(p: LatencyParams):
        return step_model(arch, tier.gpu, tp=1, weights_parts=kv.weights_parts, kv_bytes_per_token=kv.kv_bytes_per_token, quantization="none", params=p)

    eng = Engine(64, 8192, kv.num_blocks * 16)
    obs = []
    for mix, c in [(Mix(1024, 128), 1), (Mix(1024, 128), 16), (Mix(2048, 64), 8), (Mix(256, 256), 32)]:
        pred = predict_latency(make(truth), eng, mix, Load.closed(c, 3 * c))
        measured = {m: pred.metric(m) for m in ("ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "e2e_p95_ms", "output_throughput", "ttft_outside_engine_mean_ms")}
        obs.append(Observation(id=f"c{c}", mix=mix, load=Load.closed(c, 3 * c), engine=eng, measured=measured, make_step=make))
    names = ["step_overhead_ms", "gemm_eff", "request_overhead_ms", "request_jitter_ms"]
    early = fit(start, names, obs, prior=start, max_iterations=2)
    polished = polish(early, obs, prior=start, max_evaluations=300)
    assert polished.cost < early.cost and polished.fitted == early.fitted
    again = polish(polished, obs, prior=start, max_evaluations=60)
    assert again.cost <= polished.cost
    full = fit_multistart(start, names, obs, prior=start)
    assert full.rms_log_error < 0.03
    assert full.params.request_overhead_ms == pytest.approx(25.0, rel=0.15) and full.params.request_jitter_ms == pytest.approx(6.0, rel=0.3)


# --- Shipped calibrations ------------------------------------------------------------------------------------------


def test_shipped_calibrations_hold_the_points_in_tests_data():
    mk = _load_make_calibrations()
    assert shipped_tiers() == ["h100", "h200"]
    for tier, runs in (("h100", mk.h100_runs()), ("h200", mk.h200_runs())):
        cal = shipped(tier)
        assert cal.gpu.tier == tier and cal.prior == "datasheet"
        strip = lambda p: p.model_dump(exclude={"error_before", "error_after"})  # noqa: E731
        assert [[strip(p) for p in r.points] for r in cal.runs] == [[strip(p) for p in r.points] for r in runs]
        assert [r.server for r in cal.runs] == [r.server for r in runs]


@pytest.mark.parametrize("tier", ["h100", "h200"])
def test_shipped_parameters_are_what_the_fit_finds(tier):
    """A fit started from the shipped parameters stays there (the file is the fit's optimum for its points)."""
    cal = shipped(tier)
    obs = [o for _, _, o in observations(cal.runs, tier)]
    res = fit(cal.params, cal.fitted, obs, prior=PRIOR, max_iterations=3)
    for name in cal.fitted:
        assert getattr(res.params, name) == pytest.approx(cal.latency[name], rel=0.03), name


@pytest.mark.slow
def test_make_calibrations_reproduces_the_shipped_files():
    """The whole script (fits and leave-one-out refits) gives the shipped files again (floating-point noise aside)."""
    mk = _load_make_calibrations()
    for tier in ("h100", "h200"):
        made, cal = mk.make(tier), shipped(tier)
        for name, value in cal.latency.items():
            assert made.latency[name] == pytest.approx(value, rel=0.01), name
        for key, stats in cal.errors.items():
            for metric, s in stats.items():
                assert made.errors[key][metric].median_abs == pytest.approx(s.median_abs, abs=0.005), (key, metric)


def test_unmeasured_tiers_use_the_h100_parameters_on_their_datasheet():
    a100 = resolve("a100-80gb")
    assert a100.params == shipped("h100").params and not a100.ref.measured and "not calibrated" in a100.ref.basis
    assert resolve("h200").ref.measured and resolve("h200").gpu.cuda_total_bytes == shipped("h200").cuda_total_bytes


# --- tune --calibration ----------------------------------------------------------------------------------------------


def _a_calibration(tier: str = "l40s", slower: float = 2.0) -> Calibration:
    """A calibration of `tier` whose card reads its weights `slower` times slower than the H100's parameters say."""
    h100 = shipped("h100")
    params = h100.params.with_values(weight_read_eff=h100.params.weight_read_eff / slower)
    return Calibration(name=f"{tier}-test", gpu={"tier": tier}, latency=params.as_dict(), fitted=["weight_read_eff"], runs=[], prior="datasheet")


def test_tune_predicts_with_a_given_calibration_and_names_it(tmp_path):
    path = tmp_path / "cal.yaml"
    _a_calibration().save(path)
    plain = tune(TuneRequest(gpu="l40s", max_model_len=8192))
    calibrated = tune(TuneRequest(gpu="l40s", max_model_len=8192, calibration=path))
    ref = calibrated.profile.prediction.calibration
    assert ref.source == str(path) and ref.measured and ref.sha256 == Calibration.load(path).sha256()
    assert not plain.profile.prediction.calibration.measured
    assert calibrated.profile.prediction.tpot_ms > 1.5 * plain.profile.prediction.tpot_ms  # weight-bound decode, half the bandwidth
    # The wrong tier is one line, exit 2.
    with pytest.raises(TrdeployError, match="measured on l40s, not h100"):
        tune(TuneRequest(gpu="h100", calibration=path, max_model_len=8192))


def test_tune_gpu_all_applies_a_calibration_to_its_tier_only(tmp_path):
    path = tmp_path / "cal.yaml"
    _a_calibration("a100-80gb").save(path)
    proc = run_cli("tune", "--gpu", "all", "--max-model-len", "8192", "--tokens-per-word", "3", "--calibration", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {(r["tier"], r["gpus"]): r for r in json.loads(proc.stdout)["rows"]}
    assert rows[("a100-80gb", 1)]["speed_measured"] and not rows[("l40s", 1)]["speed_measured"]


def test_bad_calibration_files_are_one_line(tmp_path):
    for text, what in (("a: [1", "not valid YAML"), ("kind: other", "not a trdeploy calibration"), ("kind: trdeploy-calibration\nschema_version: 7", "schema_version 7")):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        proc = run_cli("tune", "--gpu", "h100", "--calibration", str(path))
        assert proc.returncode == 2 and what in proc.stderr and "Traceback" not in proc.stderr
    data = yaml.safe_load(_a_calibration().to_yaml())
    data["latency"]["gemm_eff"] = -1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    proc = run_cli("tune", "--gpu", "l40s", "--calibration", str(tmp_path / "c.yaml"))
    assert proc.returncode == 2 and "positive" in proc.stderr
    missing = run_cli("tune", "--gpu", "h100", "--calibration", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2 and "trdeploy calibrate" in missing.stderr


def test_request_rate_predicts_poisson_arrivals():
    r = tune(TuneRequest(gpu="h100", max_model_len=8192, request_rate=20.0))
    lat = r.profile.prediction.details["latency_per_replica"]
    assert lat["arrivals"] == "poisson" and math.isclose(lat["request_rate"] * r.profile.prediction.replicas, 20.0, rel_tol=0.01)
    assert r.profile.prediction.sla_met
    with pytest.raises(TrdeployError, match="--concurrency and --request-rate"):
        tune(TuneRequest(gpu="h100", concurrency=4, request_rate=2.0))


def test_a_fitted_calibration_round_trips_through_yaml(tmp_path):
    mk = _load_make_calibrations()
    runs = [r for r in mk.h100_runs() if r.points][:1]
    cal = fit_calibration(name="t", tier="h100", runs=runs, leave_one_out_errors=False, created_at="2026-01-01T00:00:00+00:00")
    path = cal.save(tmp_path / "c.yaml")
    again = Calibration.load(path)
    assert again == cal and again.sha256() == cal.sha256()
    assert set(again.fitted) >= {"weight_read_eff", "gemm_eff", "frontend_token_ms"}
    assert again.runs[0].kv is not None and abs(again.runs[0].kv.error_after()) < 0.001
