"""`calibrate(req)`: the whole job of `trdeploy calibrate`, usable without the CLI.

Live (--url): ask the server what it runs and check it against the profile, plan the sweep inside the
budget with the model before calibration, run it (trdeploy.calibrate.measure), fit (trdeploy.sizing.calibration).
Offline (--from-bench): the same fit over bench reports' runs. --check: predict bench reports' runs with a
calibration and report its errors on them, fitting nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trdeploy.bench.plan import check_header_value, normalize_url
from trdeploy.bench.request import DEFAULT_SYNTHETIC_VOCAB
from trdeploy.bench.transport import Endpoint
from trdeploy.calibrate.accuracy import check as accuracy_check
from trdeploy.calibrate.accuracy import run_of_reports
from trdeploy.calibrate.measure import Measurement, measure
from trdeploy.calibrate.reports import points_from_report, read_report
from trdeploy.calibrate.request import CalibrateRequest
from trdeploy.calibrate.server import ServerInfo, check_against_profile, discover
from trdeploy.calibrate.sweep import Sweep, plan_sweep
from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError
from trdeploy.sizing.batching import Engine
from trdeploy.sizing.calibration import (
    Calibration,
    ModelShape,
    Point,
    Run,
    ServerFacts,
    fit_calibration,
    resolve,
    run_engine,
    step_factory,
)
from trdeploy.sizing.latency import PRIOR, LatencyParams

MIN_FIT_POINTS = 2


@dataclass
class CalibrateResult:
    calibration: Calibration | None  # None for --check
    warnings: list[str] = field(default_factory=list)
    sweep: Sweep | None = None
    measurement: Measurement | None = None
    check: dict[str, Any] | None = None  # --check: per point and summary errors

    @property
    def interrupted(self) -> bool:
        return bool(self.measurement and self.measurement.interrupted)


def _served_name(req: CalibrateRequest, profile: DeploymentProfile) -> str:
    return req.model or profile.engine_args.served_model_name or profile.model.id or profile.engine_args.model


def _prior(req: CalibrateRequest, tier: str) -> tuple[LatencyParams, str]:
    if req.prior == "datasheet":
        return PRIOR, "datasheet"
    model = resolve(tier)
    return model.params, f"{model.ref.source} ({'measured on ' + tier if model.ref.measured else 'not measured on ' + tier})"


def _vocab(profile: DeploymentProfile) -> int:
    """Token ids for synthetic prompts: Llama-3's regular tokens (its specials are the top 256 of 128,256)."""
    vocab = profile.model.vocab_size
    return DEFAULT_SYNTHETIC_VOCAB if vocab >= 128_256 else max(2, vocab - 256 if vocab > 1024 else vocab)


def _run(profile: DeploymentProfile, points: list[Point], server: ServerFacts, source: str) -> Run:
    compile_cache = str(profile.prediction.details.get("compile_cache") or "cold")
    return Run(
        id=re.sub(r"[^A-Za-z0-9._-]+", "-", profile.name),
        model=ModelShape.from_profile(profile.model),
        quantization=profile.quantization,
        engine_args=profile.engine_args,
        compile_cache="warm" if compile_cache == "warm" else "cold",
        server=server,
        points=points,
        source=source,
    )


def _name(req: CalibrateRequest, profile: DeploymentProfile) -> str:
    return req.name or f"{profile.gpu.tier}-{profile.model.id.rstrip('/').split('/')[-1]}-{profile.quantization}"


def calibrate(req: CalibrateRequest, *, say: Callable[[str], None] | None = None, handle_sigint: bool = True) -> CalibrateResult:
    """See the module docstring. Raises TrdeployError for anything a user can fix."""
    say = say or (lambda _msg: None)
    modes = [m for m, on in (("--url", req.url is not None), ("--from-bench", bool(req.from_bench))) if on]
    if len(modes) != 1:
        raise TrdeployError(
            "Give either --url (measure a live server) or --from-bench REPORT.json ... (fit bench reports)." if not modes else "Give --url or --from-bench, not both.",
            hint="E.g. trdeploy calibrate --url http://localhost:8000 --profile trdeploy.yaml -o calibration.yaml",
        )
    if req.check is not None and not req.from_bench:
        raise TrdeployError("--check predicts bench reports: give them with --from-bench.", hint="E.g. --check calibration.yaml --from-bench held-out.json")
    profile = DeploymentProfile.load(req.profile)
    if req.check is not None:
        return _check(req, profile)
    if req.from_bench:
        return _from_bench(req, profile, say)
    return _live(req, profile, say, handle_sigint)


def _from_bench(req: CalibrateRequest, profile: DeploymentProfile, say: Callable[[str], None]) -> CalibrateResult:
    points: list[Point] = []
    facts: ServerFacts | None = None
    for path in req.from_bench:
        pts, f = points_from_report(read_report(path), str(path))
        points += pts
        facts = facts or f
    warnings = [f"{p.id}: not fitted ({p.why_not_fit})" for p in points if not p.fit]
    if sum(p.fit for p in points) < MIN_FIT_POINTS:
        raise TrdeployError(
            f"The reports hold {sum(p.fit for p in points)} runs that can be fitted; a calibration needs at least {MIN_FIT_POINTS}.",
            hint="Bench fixed shapes: --api completions --synthetic N --output-tokens O --ignore-eos, at several --sweep levels.",
        )
    if facts is None:
        warnings.append("The reports carry no vllm:cache_config_info: the KV cache is predicted, and memory is not calibrated.")
    prior, prior_name = _prior(req, profile.gpu.tier)
    run = _run(profile, points, facts or ServerFacts(), "trdeploy calibrate --from-bench " + " ".join(str(p) for p in req.from_bench))
    cal = fit_calibration(
        name=_name(req, profile), tier=profile.gpu.tier, runs=[run], prior=prior, prior_name=prior_name,
        vllm_version=profile.vllm_version, leave_one_out_errors=req.leave_one_out, progress=say,
        notes=[f"Fitted from {len(req.from_bench)} bench report(s) against a server running profile {profile.name}."],
    )  # fmt: skip
    return CalibrateResult(calibration=cal, warnings=warnings)


def _check(req: CalibrateRequest, profile: DeploymentProfile) -> CalibrateResult:
    cal = Calibration.load(req.check)  # type: ignore[arg-type]
    if cal.gpu.tier != profile.gpu.tier:
        raise TrdeployError(f"{req.check} was measured on {cal.gpu.tier}; the profile is for {profile.gpu.tier}.", hint="Check a calibration of the profile's tier.")
    run = run_of_reports(_run(profile, [], ServerFacts(), "--check"), req.from_bench)
    return CalibrateResult(calibration=None, check=accuracy_check(cal, run, profile.gpu.tier))


def _live(req: CalibrateRequest, profile: DeploymentProfile, say: Callable[[str], None], handle_sigint: bool) -> CalibrateResult:
    base_url, v1 = normalize_url(req.url or "")
    if req.api_key:
        check_header_value(req.api_key, "--api-key (or OPENAI_API_KEY)")
    model = _served_name(req, profile)
    info: ServerInfo = discover(base_url, v1, req.api_key, model)
    warnings = check_against_profile(info, profile)
    for w in warnings:
        say("warning: " + w)
    facts = info.facts()
    tier = profile.gpu.tier
    prior, prior_name = _prior(req, tier)
    probe = _run(profile, [], facts, "")
    engine: Engine = run_engine(probe, tier)
    step = step_factory(probe, tier)(prior)
    sweep = plan_sweep(profile, step, engine, budget_s=req.budget_minutes * 60, kv_capacity_tokens=int(engine.kv_capacity_tokens or 0), seed=req.seed, max_waves=req.max_waves)
    say(f"sweep: {sweep.describe()}" + (f"; left out for the budget: {', '.join(sweep.dropped)}" if sweep.dropped else ""))
    salt = req.prompt_salt if req.prompt_salt is not None else secrets.randbelow(2**31)
    endpoint = Endpoint(base_url=base_url, api="completions", model=model, api_key=req.api_key or None, timeout_s=req.timeout_s, v1_prefix=v1)
    started = time.monotonic()

    async def main() -> Measurement:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = False
        if handle_sigint:

            def on_signal(signum: int) -> None:
                say("interrupted: keeping the points measured so far (Ctrl-C again to quit at once)")
                stop.set()
                loop.remove_signal_handler(signum)

            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, on_signal, signum)
                installed = True
        try:
            return await measure(endpoint, sweep, vocab_size=_vocab(profile), prompt_salt=salt, deadline=started + req.budget_minutes * 60, stop=stop, say=say)
        finally:
            if installed:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(signum)

    measurement = asyncio.run(main())
    fitted = [p for p in measurement.points if p.fit]
    if len(fitted) < MIN_FIT_POINTS:
        raise TrdeployError(
            f"Only {len(fitted)} point(s) could be fitted ({len(measurement.points)} measured); a calibration needs {MIN_FIT_POINTS}."
            + (" Interrupted." if measurement.interrupted else ""),
            hint="Give it more --budget-minutes, and check the server answers (see the lines above).",
        )
    if measurement.skipped:
        warnings.append(f"Not measured ({'Ctrl-C' if measurement.interrupted else 'the budget ended'}): {', '.join(measurement.skipped)}.")
    run = _run(profile, measurement.points, facts, f"trdeploy calibrate --url {base_url}{v1}")
    cal = fit_calibration(
        name=_name(req, profile),
        tier=tier,
        runs=[run],
        prior=prior,
        prior_name=prior_name,
        vllm_version=info.vllm_version or profile.vllm_version,
        leave_one_out_errors=req.leave_one_out,
        progress=say,
        sweep={
            "budget_minutes": req.budget_minutes,
            "max_waves": req.max_waves,
            "seconds": round(measurement.seconds, 1),
            "planned": [p.id for p in sweep.points],
            "left_out_for_budget": list(sweep.dropped),
            "not_measured": measurement.skipped,
            "interrupted": measurement.interrupted,
            "prompt_salt": salt,
            "profile": profile.name,
        },
        notes=[f"Measured by trdeploy calibrate against a server running profile {profile.name} ({model})."],
    )
    return CalibrateResult(calibration=cal, warnings=warnings, sweep=sweep, measurement=measurement)


def error_table(cal: Calibration) -> list[dict[str, Any]]:
    """Per metric: median and P90 absolute error before and after (leave-one-out), with the point count."""
    rows = []
    for metric in (*cal.errors.get("before", {}),):
        b = cal.errors["before"][metric]
        a = cal.errors.get("after_leave_one_out", {}).get(metric)
        rows.append({"metric": metric, "points": b.points, "before_median": b.median_abs, "before_p90": b.p90_abs,
                     "after_median": a.median_abs if a else None, "after_p90": a.p90_abs if a else None})  # fmt: skip
    return rows
