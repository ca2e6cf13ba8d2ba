"""`trdeploy bench`: measure a live OpenAI-compatible endpoint against the SLA.

`run_bench(plan)` runs each load level of a `BenchPlan` (trdeploy.bench.plan) with the scheduler
(trdeploy.bench.scheduler, over trdeploy.bench.transport), scrapes the server's Prometheus /metrics around it (trdeploy.bench.prometheus),
computes the metrics (trdeploy.bench.metrics) and the verdict, and returns the report: a dict with
stable keys, the same one `--json` prints and `-o` writes.

Only the standard library, httpx, numpy, rich, pydantic and pyyaml are imported on this path, so the
command runs from a source checkout on a GPU machine that has nothing else; `datasets` (hub prompts)
and matplotlib (`--plot`) are imported only when asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np

from trdeploy import __version__
from trdeploy.bench.metrics import WORD_PATTERN, RequestResult, ResultStore, evaluate_sla, summarize
from trdeploy.bench.plan import BenchPlan, build_prompts, detect_model
from trdeploy.bench.prometheus import SERVER_GAUGES, _first, scrape, server_metrics_delta
from trdeploy.bench.prompts import ListPrompts, PromptSource
from trdeploy.bench.scheduler import LoadSpec, RunStats, run_load
from trdeploy.bench.transport import make_client
from trdeploy.output import redact_url, scrub, url_secrets

SCHEMA_VERSION = 1
PLOT_SAMPLE = 200_000  # values per metric kept for the plot


@dataclass
class RunOutcome:
    """One load level's report entry plus the samples the plot draws."""

    report: dict[str, Any]
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    requests: dict[str, np.ndarray] = field(default_factory=dict)  # per request, unthinned (REQUEST_COLUMNS)


def _load_dict(spec: LoadSpec) -> dict[str, Any]:
    return {
        "concurrency": spec.concurrency,
        "request_rate": None if spec.closed_loop else spec.request_rate,
        "burstiness": spec.burstiness if not spec.closed_loop else None,
        "num_requests": spec.num_requests,
        "duration_s": spec.duration_s,
        "closed_loop": spec.closed_loop,
        "seed": spec.seed,  # a rate-driven run's arrival times follow from it (trdeploy.arrivals)
    }


def load_label(spec: LoadSpec) -> str:
    if spec.closed_loop:
        return f"concurrency {spec.concurrency}" if spec.concurrency else "all at once"
    label = f"{spec.request_rate:g} req/s"
    if spec.burstiness != 1.0:
        label += f" (burstiness {spec.burstiness:g})"
    if spec.concurrency:
        label += f", max {spec.concurrency} in flight"
    return label


def _thin(values: np.ndarray, n: int = PLOT_SAMPLE) -> np.ndarray:
    if values.size <= n:
        return values.astype(np.float32, copy=True)
    idx = np.linspace(0, values.size - 1, n).astype(np.int64)
    return np.sort(values)[idx].astype(np.float32)


async def _gauge_sampler(client: httpx.AsyncClient, plan: BenchPlan, peaks: dict[str, float], interval: float) -> None:
    """Peaks of the server's running / waiting / KV-use gauges, scraped every `interval` seconds.

    Opt-in (--gauge-interval): each scrape makes vLLM's API server render its whole Prometheus text
    in the process that streams the tokens, and this client download and parse it in the loop that
    times them, so sampling during the run perturbs what the run measures.
    """
    headers = plan.endpoint.headers()
    while True:
        await asyncio.sleep(interval)
        sample = await scrape(client, plan.endpoint.base_url, headers, plan.endpoint.model)
        if sample is None:
            continue
        for key, names in SERVER_GAUGES.items():
            value = _first(sample.values, names)
            if value is not None:
                peaks[key] = max(peaks.get(key, value), value)


async def _run_one(
    plan: BenchPlan,
    spec: LoadSpec,
    prompts: PromptSource,
    stop: asyncio.Event,
    on_done: Callable[[RequestResult], None] | None,
) -> RunOutcome:
    store = ResultStore(expected=spec.num_requests, seed=spec.seed)
    client = make_client(plan.endpoint, spec.concurrency, plan.http_client)
    side = httpx.AsyncClient(timeout=10.0, trust_env=True)  # scrapes never queue behind the load's connections
    headers = plan.endpoint.headers()
    before = after = None
    peaks: dict[str, float] = {}
    sampler = None
    try:
        if plan.server_metrics:
            before = await scrape(side, plan.endpoint.base_url, headers, plan.endpoint.model)
            if before is not None and plan.gauge_interval_s > 0:
                sampler = asyncio.create_task(_gauge_sampler(side, plan, peaks, plan.gauge_interval_s))
        stats: RunStats = await run_load(plan.endpoint, plan.sampling, prompts, spec, store, stop=stop, on_done=on_done, client=client)
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        if before is not None:
            await asyncio.sleep(0.25)  # let the server's counters take in the last responses
            after = await scrape(side, plan.endpoint.base_url, headers, plan.endpoint.model)
    finally:
        if sampler is not None and not sampler.done():
            sampler.cancel()
        await client.aclose()
        await side.aclose()

    summary = summarize(store, stats.duration_s, percentiles=plan.percentiles, sla=plan.sla)
    if before is not None and after is not None:
        server = server_metrics_delta(before.values, after.values, peaks)
        server["cache_config"] = after.cache_config
        gen = server["counters"].get("generation_tokens")
        server["client"] = {
            "completed": summary["completed"],
            "prompt_tokens": summary["total_input_tokens"],
            "generation_tokens": summary["total_output_tokens"],
        }
        server["generation_tokens_diff"] = None if gen is None else gen - summary["total_output_tokens"]
    else:
        reason = "disabled (--no-server-metrics)" if not plan.server_metrics else "no Prometheus vllm:* metrics at /metrics"
        server = {"available": False, "reason": reason}
    verdict = evaluate_sla(summary, plan.sla)
    report = {
        "label": load_label(spec),
        "load": _load_dict(spec),
        "sent": stats.sent,
        "dispatch_span_s": stats.dispatch_span_s,
        "last_sent_s": stats.last_sent_s,
        "interrupted": stats.interrupted,
        **summary,
        "server_metrics": server,
        "verdict": verdict,
    }
    ok = store.column("status") == 0
    ttft, lat = store.column("ttft")[ok], store.column("latency")[ok]
    out = store.column("output_tokens")[ok]
    many = out > 1
    samples = {
        "ttft": _thin(ttft * 1000),
        "tpot": _thin((lat[many] - ttft[many]) / (out[many] - 1) * 1000),
        "itl": _thin(store.itl.values().astype(np.float64) * 1000),
        "e2el": _thin(lat * 1000),
    }
    requests = {name: store.column(name).copy() for name in REQUEST_COLUMNS}
    return RunOutcome(report=report, samples=samples, requests=requests)


# Per request, for `bench --requests` (seconds since the run started; ttft and latency from the send).
REQUEST_COLUMNS = ("start", "queue_time", "ttft", "latency", "output_tokens", "prompt_tokens", "status")


def requests_csv(outcomes: list[tuple[str, dict[str, np.ndarray]]]) -> str:
    """Every request of every run, one CSV row each: run label, index, send time, client queue time, TTFT, end-to-end
    latency (s), output and prompt tokens, status (0: ok)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "index", "start_s", "queue_time_s", "ttft_s", "latency_s", "output_tokens", "prompt_tokens", "status"])
    for label, cols in outcomes:
        n = len(cols["start"]) if cols else 0
        for i in range(n):
            w.writerow([label, i, *(f"{float(cols[c][i]):.6f}" for c in ("start", "queue_time", "ttft", "latency")), *(int(cols[c][i]) for c in ("output_tokens", "prompt_tokens", "status"))])
    return buf.getvalue()


async def _warmup(plan: BenchPlan, prompts: PromptSource, stop: asyncio.Event) -> dict[str, Any]:
    store = ResultStore(expected=plan.warmup)
    spec = LoadSpec(concurrency=min(plan.warmup, plan.loads[0].concurrency or plan.warmup), num_requests=plan.warmup, seed=plan.seed + 7919)
    client = make_client(plan.endpoint, spec.concurrency, plan.http_client)
    try:
        await run_load(plan.endpoint, plan.sampling, prompts, spec, store, stop=stop, client=client)
    finally:
        await client.aclose()
    status = store.column("status")
    return {"requests": plan.warmup, "failed": int((status == 1).sum()), "errors": dict(store.errors)}


@dataclass
class BenchResult:
    report: dict[str, Any]
    samples: list[tuple[str, dict[str, np.ndarray]]]
    requests: list[tuple[str, dict[str, np.ndarray]]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.report["interrupted"]:
            return 130
        return 0 if self.report["verdict"]["passed"] else 1


def run_bench(
    plan: BenchPlan,
    *,
    on_start: Callable[[int, LoadSpec], None] | None = None,
    on_done: Callable[[RequestResult], None] | None = None,
    handle_sigint: bool = True,
) -> BenchResult:
    """Run every load level of the plan and build the report. Ctrl-C (SIGINT) stops sending, cancels
    the requests in flight and returns the partial report (`interrupted: true`)."""
    if not plan.endpoint.model:
        plan = replace(plan, endpoint=replace(plan.endpoint, model=detect_model(plan.endpoint.base_url, plan.endpoint.v1_prefix, plan.endpoint.api_key)))
    prompts = build_prompts(plan)
    started = datetime.now(UTC).isoformat(timespec="seconds")

    async def main() -> tuple[list[RunOutcome], dict[str, Any] | None, bool]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = False
        if handle_sigint:
            def on_signal(signum: int) -> None:
                stop.set()
                loop.remove_signal_handler(signum)  # a second Ctrl-C (or SIGTERM) interrupts for good

            # SIGTERM (kill, a CI job's timeout, a Kubernetes pod ending) keeps the partial report too.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, on_signal, signum)
                installed = True
        outcomes: list[RunOutcome] = []
        warm = None
        try:
            # Each load level (and the warm-up) sends its own prompts: none repeats another's (trdeploy.bench.prompts).
            if plan.warmup:
                warm = await _warmup(plan, prompts.stream((plan.prompt_salt, 0)), stop)
            for i, spec in enumerate(plan.loads):
                if stop.is_set():
                    break
                if on_start is not None:
                    on_start(i, spec)
                outcomes.append(await _run_one(plan, spec, prompts.stream((plan.prompt_salt, i + 1)), stop, on_done))
        finally:
            if installed:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(signum)
        return outcomes, warm, stop.is_set()

    t0 = time.perf_counter()
    outcomes, warm, interrupted = asyncio.run(main())
    runs = [o.report for o in outcomes]
    report = assemble_report(plan, prompts, runs, warm, interrupted, started, time.perf_counter() - t0)
    # Credentials in --url (user:password@) are written nowhere: not in the endpoint, not in an error sample.
    report = scrub(report, url_secrets(plan.endpoint.base_url))
    labels = [(o.report["label"], o.samples) for o in outcomes]
    return BenchResult(report=report, samples=labels, requests=[(o.report["label"], o.requests) for o in outcomes])


def assemble_report(
    plan: BenchPlan,
    prompts: PromptSource,
    runs: list[dict[str, Any]],
    warmup: dict[str, Any] | None,
    interrupted: bool,
    started: str,
    wall_s: float,
) -> dict[str, Any]:
    failed_runs = [i for i, r in enumerate(runs) if not r["verdict"]["passed"]]
    passing = None
    if plan.sweep_parameter and runs:
        key = plan.sweep_parameter
        ok_values = [r["load"][key] for r in runs if r["verdict"]["passed"] and r["load"][key] is not None]
        passing = max(ok_values) if ok_values else None
    passed = bool(runs) and not failed_runs and not interrupted
    ep = plan.endpoint
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": f"trdeploy {__version__} bench",
        "started_at": started,
        "wall_s": wall_s,
        "interrupted": interrupted,
        "endpoint": {"url": redact_url(ep.base_url + ep.v1_prefix), "api": ep.api, "model": ep.model, "model_source": plan.model_source},
        "prompts": {
            "source": plan.prompt_spec["kind"],
            "description": getattr(prompts, "description", ""),
            "distinct": len(prompts) if isinstance(prompts, ListPrompts) else None,
            "salt": plan.prompt_salt,
            "salt_given": plan.prompt_salt_given,
            "unique": prompts.can_be_unique,
        },
        "sampling": {
            "max_tokens": plan.sampling.max_tokens,
            "ignore_eos": plan.sampling.ignore_eos,
            "min_tokens": plan.sampling.min_tokens,
            "temperature": plan.sampling.temperature,
            "extra_body": plan.sampling.extra_body,
        },
        "timeout_s": ep.timeout_s,
        "http_client": plan.http_client,
        "sla": {**plan.sla.as_dict(), "source": plan.sla_source},
        "percentiles": list(plan.percentiles),
        "word_pattern": WORD_PATTERN.pattern,
        "profile_defaults": list(plan.profile_defaults),
        # The load every run used and where it came from (each run's own level is runs[i].load).
        "load": {"source": plan.load_source, "levels": [load_label(spec) for spec in plan.loads]},
        "warmup": warmup,
        "sweep": {"parameter": plan.sweep_parameter, "values": [r["load"][plan.sweep_parameter] for r in runs]}
        if plan.sweep_parameter
        else None,
        "runs": runs,
        "verdict": {"passed": passed, "failed_runs": failed_runs, "max_passing": passing},
    }
