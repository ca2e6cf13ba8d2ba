"""Running the sweep against the live server with bench's scheduler and transport, as a library.

Each point sends synthetic token-id prompts of its shape (exact lengths, no tokenizer) to /v1/completions
with `ignore_eos`, its own stream of the run's prompt salt (trdeploy.bench.prompts: no point's prompts repeat
another's or an earlier run's), and reads /metrics before and after it (prefix-cache hits, preemptions).
A short warm-up goes first. The sweep stops at the budget's end (the point in flight is cancelled and kept,
not fitted) or at Ctrl-C, keeping every point measured so far.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from trdeploy.bench.metrics import ResultStore, SlaTargets, summarize
from trdeploy.bench.prometheus import scrape, server_metrics_delta
from trdeploy.bench.prompts import SyntheticPrompts
from trdeploy.bench.scheduler import LoadSpec, run_load
from trdeploy.bench.transport import Endpoint, Sampling, make_client
from trdeploy.calibrate.sweep import Sweep, SweepPoint
from trdeploy.sizing.calibration import Measured, Point, PointLoad, Timings

WARMUP_REQUESTS = 4
WARMUP_OUTPUT_TOKENS = 16


@dataclass
class Measurement:
    points: list[Point] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # planned but not run: the budget ran out, or Ctrl-C
    interrupted: bool = False  # Ctrl-C
    out_of_time: bool = False
    seconds: float = 0.0


def _spec(load) -> LoadSpec:
    if load.arrivals == "closed":
        return LoadSpec(concurrency=load.concurrency, num_requests=load.num_requests, seed=load.seed)
    return LoadSpec(concurrency=load.concurrency, request_rate=load.request_rate, burstiness=load.burstiness, num_requests=load.num_requests, seed=load.seed)


def _point(sp: SweepPoint, summary: dict[str, Any], server: dict[str, Any] | None, *, cut: str | None) -> Point:
    pc = (server or {}).get("prefix_cache") or {}
    counters = (server or {}).get("counters") or {}
    completed, failed = summary["completed"], summary["failed"]
    why = cut
    if why is None and failed:
        why = f"{failed} of {completed + failed} requests failed ({', '.join(summary['errors'])})"
    if why is None and pc.get("flagged"):
        why = f"{pc['hit_rate']:.0%} of the prompt tokens came from the prefix cache"
    if why is None and completed < sp.load.num_requests:
        why = f"{completed} of {sp.load.num_requests} requests completed"
    run = {**summary, "server_metrics": server or {}}
    timings = Timings.from_bench_run(run)
    measured = Measured.from_bench_run(run, timings)
    load = sp.load
    return Point(
        id=sp.id,
        prompt_tokens=sp.mix.prompt_tokens,
        output_tokens=sp.mix.output_tokens,
        load=PointLoad(arrivals=load.arrivals, concurrency=load.concurrency, request_rate=load.request_rate, burstiness=load.burstiness, num_requests=load.num_requests, seed=load.seed),
        measured=measured,
        timings=timings,
        completed=completed,
        failed=failed,
        duration_s=summary.get("duration"),
        prefix_cache_hit_rate=pc.get("hit_rate"),
        preemptions=counters.get("num_preemptions"),
        fit=why is None,
        why_not_fit=why,
        source="trdeploy calibrate",
    )


async def measure(
    endpoint: Endpoint,
    sweep: Sweep,
    *,
    vocab_size: int,
    prompt_salt: int,
    deadline: float,
    stop: asyncio.Event,
    say: Callable[[str], None],
    http_client: str = "auto",
) -> Measurement:
    """Run the sweep's points in order until done, the deadline (time.monotonic) or `stop`."""
    out = Measurement()
    t0 = time.monotonic()
    side = httpx.AsyncClient(timeout=10.0, trust_env=True)
    headers = endpoint.headers()
    try:
        first = sweep.points[0] if sweep.points else None
        if first is not None:
            say(f"warm-up: {WARMUP_REQUESTS} requests")
            prompts = SyntheticPrompts(first.mix.prompt_tokens, vocab_size, seed=0).stream((prompt_salt, 0))
            sampling = Sampling(max_tokens=WARMUP_OUTPUT_TOKENS, ignore_eos=True)
            client = make_client(endpoint, WARMUP_REQUESTS, http_client)
            try:
                await run_load(endpoint, sampling, prompts, LoadSpec(concurrency=WARMUP_REQUESTS, num_requests=WARMUP_REQUESTS), ResultStore(), stop=stop, client=client)
            finally:
                await client.aclose()
        for k, sp in enumerate(sweep.points, 1):
            if stop.is_set():
                out.interrupted = True
                out.skipped += [p.id for p in sweep.points[k - 1 :]]
                break
            left = deadline - time.monotonic()
            if left <= 0:
                out.out_of_time = True
                out.skipped += [p.id for p in sweep.points[k - 1 :]]
                break
            say(f"[{k}/{len(sweep.points)}] {sp.label} (about {sp.predicted_s:.0f} s)")
            point_stop = asyncio.Event()

            async def watch(point_stop: asyncio.Event = point_stop, left: float = left) -> None:
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({stopper}, timeout=left)
                finally:
                    stopper.cancel()
                point_stop.set()

            watcher = asyncio.create_task(watch())
            before = await scrape(side, endpoint.base_url, headers, endpoint.model)
            store = ResultStore(expected=sp.load.num_requests)
            prompts = SyntheticPrompts(sp.mix.prompt_tokens, vocab_size, seed=0).stream((prompt_salt, k))
            client = make_client(endpoint, sp.load.concurrency, http_client)
            try:
                stats = await run_load(endpoint, Sampling(max_tokens=sp.mix.output_tokens, ignore_eos=True), prompts, _spec(sp.load), store, stop=point_stop, client=client)
            finally:
                await client.aclose()
                watcher.cancel()
            cut = None
            if stats.interrupted:
                cut = "stopped by Ctrl-C" if stop.is_set() else "stopped at the end of the budget"
                out.interrupted |= stop.is_set()
                out.out_of_time |= not stop.is_set()
            after = await scrape(side, endpoint.base_url, headers, endpoint.model) if before is not None else None
            summary = summarize(store, stats.duration_s, percentiles=(50.0, 95.0), sla=SlaTargets())
            server = server_metrics_delta(before.values, after.values, {}) if before is not None and after is not None else None
            point = _point(sp, summary, server, cut=cut)
            out.points.append(point)
            m = point.measured
            say(
                f"[{k}/{len(sweep.points)}] {stats.duration_s:.0f} s: TTFT p50 {_ms(m.ttft_p50_ms)} / p95 {_ms(m.ttft_p95_ms)} ms, "
                f"TPOT p50 {_ms(m.tpot_p50_ms, 2)} ms, {_ms(m.output_throughput)} tok/s"
                + (f", prefix cache {point.prefix_cache_hit_rate:.0%}" if point.prefix_cache_hit_rate else "")
                + (f" -- not fitted: {point.why_not_fit}" if not point.fit else "")
            )
            if cut is not None:
                out.skipped += [p.id for p in sweep.points[k:]]
                break
    finally:
        await side.aclose()
        out.seconds = time.monotonic() - t0
    return out


def _ms(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"
