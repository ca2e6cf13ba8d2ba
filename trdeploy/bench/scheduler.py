"""The scheduler: when requests are sent (what guidellm calls its scheduler), over the transport.

Arrivals: a closed loop at a fixed concurrency (request rate inf), or arrivals at a request rate with
gamma-distributed gaps (burstiness 1 = Poisson), optionally capped by a concurrency limit, exactly as
`vllm bench serve --request-rate R --burstiness B --max-concurrency C` schedules them (including its
rescaling of the gaps so N requests span N / R seconds; the schedule itself is trdeploy.arrivals, which
the latency model uses too). `run_load` drives one load level; bench (trdeploy.bench.run) and calibrate
(trdeploy.calibrate) both call it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from trdeploy import arrivals
from trdeploy.bench.metrics import STATUS_CANCELLED, RequestResult, ResultStore
from trdeploy.bench.prompts import PromptSource
from trdeploy.bench.transport import Endpoint, Sampling, Transport, build_body, make_client, send_request


@dataclass(frozen=True)
class LoadSpec:
    """One load level. concurrency None: no cap. request_rate inf: all at once (a closed loop under a cap)."""

    concurrency: int | None = 1
    request_rate: float = math.inf
    burstiness: float = 1.0
    num_requests: int | None = 100
    duration_s: float | None = None
    seed: int = 0

    @property
    def closed_loop(self) -> bool:
        return math.isinf(self.request_rate)


def arrival_offsets(spec: LoadSpec, rng: np.random.Generator) -> Iterator[float]:
    """Send times (seconds after the start) for a request-rate run (trdeploy.arrivals: as vLLM computes them)."""
    return arrivals.arrival_offsets(spec.request_rate, spec.burstiness, spec.num_requests, rng)


@dataclass
class RunStats:
    """What a run did besides the per-request results."""

    duration_s: float = 0.0
    sent: int = 0
    dispatch_span_s: float = 0.0  # from the first request sent to the last
    last_sent_s: float = 0.0  # when the last request was sent, seconds after the start
    interrupted: bool = False


async def run_load(
    endpoint: Endpoint,
    sampling: Sampling,
    prompts: PromptSource,
    spec: LoadSpec,
    store: ResultStore,
    *,
    stop: asyncio.Event | None = None,
    on_done: Callable[[RequestResult], None] | None = None,
    client: Transport | None = None,
) -> RunStats:
    """Run one load level to completion (or until `stop` is set, which cancels requests in flight).

    A closed loop with a concurrency cap runs one worker per slot: a worker sends its next request
    as soon as its previous one ended, in the same task. (Handing freed slots back to one dispatch
    loop refills them one event-loop turn after another; the requests of a vLLM batch end within
    tens of milliseconds of each other, and in H100 runs with such a serial refill vLLM's engine
    went idle between the first and the second wave: a lighter load than the one asked for.)
    Open loops (a request rate) and uncapped closed loops are dispatched by one loop on their
    arrival schedule.
    """
    stop = stop or asyncio.Event()
    own_client = client is None
    if client is None:
        client = make_client(endpoint, spec.concurrency)
    rng = np.random.default_rng(spec.seed)
    sem = asyncio.Semaphore(spec.concurrency) if spec.concurrency else None
    tasks: set[asyncio.Task] = set()
    stats = RunStats()
    t0 = time.perf_counter()
    first_sent: float | None = None
    last_sent = t0
    index = 0

    def may_send() -> bool:
        if stop.is_set() or (spec.num_requests is not None and index >= spec.num_requests):
            return False
        return spec.duration_s is None or time.perf_counter() - t0 < spec.duration_s

    async def one(i: int, arrival: float, use_sem: bool) -> None:
        result = RequestResult()
        holds_slot = False
        try:
            if use_sem and sem is not None:
                await sem.acquire()
                holds_slot = True
            result.queue_time = time.perf_counter() - arrival
            fields, prompt_len = prompts.body(i)
            await send_request(client, endpoint, build_body(endpoint, sampling, fields), prompt_len, result, t0)
        except asyncio.CancelledError:
            result.status = STATUS_CANCELLED
            result.itl.clear()
        finally:
            if holds_slot and sem is not None:
                sem.release()
            store.add(result)
            if on_done is not None:
                on_done(result)

    def claim() -> tuple[int, float]:
        """The next request's index and its send time, recorded for the dispatch span."""
        nonlocal index, first_sent, last_sent
        i, arrival = index, time.perf_counter()
        index += 1
        first_sent = arrival if first_sent is None else first_sent
        last_sent = arrival
        return i, arrival

    def spawn(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def worker() -> None:
        while may_send():
            await one(*claim(), use_sem=False)

    async def wait_stop(seconds: float) -> bool:
        """Sleep `seconds` unless stopped first; True when stopped."""
        if seconds <= 0:
            return stop.is_set()
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    try:
        if spec.closed_loop and spec.concurrency:
            slots = spec.concurrency if spec.num_requests is None else min(spec.concurrency, spec.num_requests)
            for _ in range(slots):
                spawn(worker())
        else:
            offsets = arrival_offsets(spec, rng)
            while may_send():
                if not spec.closed_loop:
                    target = next(offsets)
                    if spec.duration_s is not None and target >= spec.duration_s:
                        await wait_stop(spec.duration_s - (time.perf_counter() - t0))
                        break
                    if await wait_stop(target - (time.perf_counter() - t0)):
                        break
                spawn(one(*claim(), use_sem=True))
        # Let the requests in flight (and the workers) finish, unless stopped: then cancel them.
        while tasks:
            if stop.is_set():
                for task in list(tasks):
                    task.cancel()
                await asyncio.gather(*list(tasks), return_exceptions=True)
                break
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
    finally:
        stats.sent = index
        stats.interrupted = stop.is_set()
        stats.duration_s = time.perf_counter() - t0
        stats.dispatch_span_s = (last_sent - first_sent) if first_sent is not None else 0.0
        stats.last_sent_s = (last_sent - t0) if first_sent is not None else 0.0
        if own_client:
            await client.aclose()
    return stats
