"""What vLLM's continuous batching does with a stream of requests, simulated step by step.

The engine (vLLM 0.25's V1 scheduler, vllm/v1/core/sched/scheduler.py) runs one forward pass per step. In a
step it first schedules every running request: a decoding request gets one token, a request still in
prefill gets the rest of its prompt or as much of it as the step's token budget (`max_num_batched_tokens`)
still allows (chunked prefill); then it admits waiting requests in arrival order while the budget lasts,
fewer than `max_num_seqs` requests run, and the KV cache has blocks for them. A request's first token comes
at the end of the step that completes its prefill; every later step adds one token. When a decode step
needs KV blocks that are not there, the most recently admitted request is preempted (its blocks freed, its
tokens recomputed later). The time of a step comes from the step law (trdeploy.sizing.latency.StepModel).

vLLM 0.25 schedules asynchronously by default (vllm/config/vllm.py turns `async_scheduling` on unless an
option rules it out; the engine core then keeps two batches in flight, vllm/v1/engine/core.py
`step_with_batch_queue`): it schedules a step while the one before it runs, so a request taken in while a step
runs joins the step after the next, and vLLM's timers count the step before it in its prefill time (from
being scheduled to the first token: two steps). The model schedules synchronously (a request joins the next step) unless
`Engine.async_scheduling` is set: refitted with it, the four H100 sessions' calibrations predicted their
held-out loads no better (scripts/compare_scheduling.py prints both), so the default stays the one measured.

Between the clients and the engine sits the API server, one process that handles every new request
(parsing, tokenizing: `frontend_request_ms`), every streamed token (detokenizing, the SSE chunk:
`frontend_token_ms`) and every finished request after its last token (the closing chunks, its stats:
`frontend_finish_ms`), first come, first served; a request also spends `request_overhead_ms` outside the
engine in parallel with others (HTTP, hand-offs between processes), and a random extra of mean
`request_jitter_ms` (exponential; the n requests of a simulation draw its n quantiles in an order fixed by
the seed, so a prediction is deterministic and moves smoothly with the parameter). While the API server keeps up, it adds a
few milliseconds. When the engine produces tokens faster than it streams them (many sequences per step), it
paces every stream and new requests queue behind the backlog: measured on an H200 serving Llama-3-8B,
TPOT grew as 0.085-0.096 ms x concurrency from 128 to 1,024 requests in flight, output throughput stopped
near 9,300 tokens/s, and a closed loop's clients stayed in step, each wave of requests queueing like
the first (TTFT p50 1.8 s at 256 clients).

Clients are simulated as `trdeploy bench` runs them: a closed loop (C clients, each sends its next request
when its last one ended) or arrivals at a request rate (trdeploy.arrivals, the same schedule bench sends,
optionally capped by a concurrency limit). Every request has the same prompt and output length (what
`bench --synthetic N --output-tokens O --ignore-eos` sends). The result holds each request's TTFT and
end-to-end latency, from which the same statistics bench reports follow.

Stretches of pure decode steps are advanced in one go (the context grows by one token per sequence per
step, so their total time is an arithmetic series, and the API server's backlog after them has a closed
form), so a simulation costs a few operations per request and per prefill step, not per token.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from trdeploy.arrivals import arrival_schedule

if TYPE_CHECKING:
    from trdeploy.sizing.latency import StepModel

Arrivals = Literal["closed", "poisson"]


@dataclass(frozen=True)
class Engine:
    """The engine limits that shape the batches, and how steps are scheduled (`async_scheduling`: one step
    ahead, as vLLM 0.25 does by default; the module docstring says why the model does not)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    kv_capacity_tokens: int | None = None  # num_gpu_blocks x block_size; None: never full
    block_size: int = 16
    async_scheduling: bool = False


@dataclass(frozen=True)
class Mix:
    """The shape of every request: prompt tokens (of which `cached_prompt_tokens` come from the prefix cache)
    and output tokens."""

    prompt_tokens: int
    output_tokens: int
    cached_prompt_tokens: int = 0


@dataclass(frozen=True)
class Load:
    """How requests arrive: `closed` (concurrency clients, each sends its next request when its last ended) or
    `poisson` (request_rate per second, gamma gaps of shape burstiness, at most `concurrency` in flight if set)."""

    arrivals: Arrivals
    num_requests: int
    concurrency: int | None = None
    request_rate: float | None = None
    burstiness: float = 1.0
    seed: int = 0

    @staticmethod
    def closed(concurrency: int, num_requests: int) -> Load:
        return Load(arrivals="closed", num_requests=int(num_requests), concurrency=int(concurrency))

    @staticmethod
    def poisson(request_rate: float, num_requests: int, *, seed: int = 0, burstiness: float = 1.0, concurrency: int | None = None) -> Load:
        return Load(
            arrivals="poisson", num_requests=int(num_requests), request_rate=float(request_rate), burstiness=burstiness, seed=seed, concurrency=concurrency
        )

    def describe(self) -> str:
        if self.arrivals == "closed":
            return f"closed loop, {self.concurrency} clients, {self.num_requests} requests"
        cap = f", at most {self.concurrency} in flight" if self.concurrency else ""
        shape = "" if self.burstiness == 1.0 else f" (gamma shape {self.burstiness:g})"
        return f"Poisson arrivals{shape} at {self.request_rate:g} requests/s{cap}, {self.num_requests} requests"


@dataclass(frozen=True)
class Simulated:
    """Per request, in ms: when the client sent it, its time to first token and its end-to-end latency."""

    sent_ms: np.ndarray
    ttft_ms: np.ndarray
    e2e_ms: np.ndarray
    output_tokens: int
    engine_ttft_ms: np.ndarray  # from the engine taking the request in (a step boundary) to its first token: vLLM's queue + prefill
    duration_ms: float  # from the start (the first send of a closed loop) to the last response
    steps: int
    preemptions: int
    mean_running: float  # time-weighted mean of the requests the engine ran

    @property
    def tpot_ms(self) -> np.ndarray:
        if self.output_tokens <= 1:
            return np.zeros_like(self.ttft_ms)
        return (self.e2e_ms - self.ttft_ms) / (self.output_tokens - 1)


def simulate(step: StepModel, engine: Engine, mix: Mix, load: Load) -> Simulated:
    """Run the requests of `load` through the API server and the engine; see the module docstring."""
    if int(load.num_requests) < 1:
        raise ValueError("num_requests must be at least 1")
    if load.arrivals != "closed" and not (load.request_rate and load.request_rate > 0):
        raise ValueError("a rate-driven load needs request_rate > 0")
    return _Sim(step, engine, mix, load).run()


class _Sim:
    def __init__(self, step: StepModel, engine: Engine, mix: Mix, load: Load) -> None:
        self.step, self.load = step, load
        n = self.n = int(load.num_requests)
        self.prompt, self.out = int(mix.prompt_tokens), max(1, int(mix.output_tokens))
        self.cached = min(max(0, int(mix.cached_prompt_tokens)), self.prompt - 1)
        self.seqs_cap = max(1, int(engine.max_num_seqs))
        self.budget_cap = max(1, int(engine.max_num_batched_tokens))
        self.waste = engine.block_size / 2  # a request's last block is half empty on average
        self.kv_cap = math.inf if engine.kv_capacity_tokens is None else float(engine.kv_capacity_tokens)
        self.latency_in = step.request_overhead_ms  # a request's time outside the engine, in parallel with others
        self.req_cost = step.frontend_request_ms  # API server work per new request
        self.tok_cost = step.frontend_token_ms  # API server work per streamed token
        self.fin_cost = step.frontend_finish_ms  # API server work per finished request, after its last token
        self.unbilled = 0  # requests finished in the step just ended whose finish work the API server has still to do
        self.jitter = jitter_quantiles(n, load.seed) * float(step.request_jitter_ms)

        self.sent = np.full(n, np.nan)
        self.first = np.full(n, np.nan)
        self.end = np.full(n, np.nan)
        self.queued = np.full(n, np.nan)  # when the engine took it in (the step boundary after it arrived)
        self.eng_first = np.full(n, np.nan)  # the end of the step that made its first token
        self.rem = [0] * n  # prompt (or recompute) tokens still to process
        self.done = [0] * n  # tokens in the KV cache while prefilling; at decode start, its context
        self.emitted = [0] * n  # output tokens produced so far
        self.s0 = [0] * n  # step at which the request's decode started
        self.ver = [0] * n  # lazy deletion of preempted decoders from the heap

        self.sends: list[tuple[float, int]] = []  # (client send ms, request): not yet through the API server
        self.pending: list[tuple[float, int]] = []  # (engine arrival ms, request)
        self.front = 0.0  # when the API server is free again
        self.client_queue: deque[int] = deque()  # rate-driven sends waiting for a concurrency slot
        self.in_flight = 0
        self.next_index = 0
        self.rate_times: np.ndarray | None = None
        self.rate_ptr = 0
        if load.arrivals == "closed":
            for _ in range(min(max(1, int(load.concurrency or 1)), n)):
                self.send(self.next_index, 0.0)
                self.next_index += 1
        else:
            self.rate_times = arrival_schedule(float(load.request_rate), load.burstiness, n, load.seed) * 1000.0  # type: ignore[arg-type]

        self.waiting: deque[int] = deque()
        self.prefilling: list[int] = []  # admitted, prompt not done, in admission order
        self.running: list[int] = []  # admitted requests in admission order (preemption takes the last)
        self.dec_heap: list[tuple[int, int, int]] = []  # (step of its last token, request, version)
        self.n_dec = 0
        self.s0_sum = 0  # sum over decoders of (context at decode start - s0): context at step s = s0_sum + n_dec x s
        self.kv_used = 0.0
        self.step_idx = 0
        self.t = 0.0
        self.one_ahead = bool(engine.async_scheduling)
        # With async scheduling a step admits only the requests taken in by the start of the step before it (it
        # was scheduled then); None: the engine was idle, and schedules as soon as a request is in.
        self.prev_start: float | None = None
        self.preemptions = 0
        self.busy = 0.0
        self.finished = 0

    # --- clients and the API server ------------------------------------------------------------------
    def send(self, i: int, when: float) -> None:
        self.sent[i] = when
        self.in_flight += 1
        heapq.heappush(self.sends, (when, i))

    def release_rate_sends(self, now: float) -> None:
        """Rate-driven sends due by `now`, within the concurrency cap."""
        rt = self.rate_times
        if rt is None:
            return
        cap = self.load.concurrency
        while self.rate_ptr < self.n and rt[self.rate_ptr] <= now:
            i = self.rate_ptr
            self.rate_ptr += 1
            if cap and self.in_flight >= cap:
                self.client_queue.append(i)
            else:
                self.send(i, float(rt[i]))

    def next_send(self) -> float:
        nxt = self.sends[0][0] if self.sends else math.inf
        if self.rate_times is not None and self.rate_ptr < self.n and not (self.load.concurrency and self.in_flight >= self.load.concurrency):
            nxt = min(nxt, float(self.rate_times[self.rate_ptr]))
        return nxt

    def front_requests(self, until: float) -> None:
        """The API server takes the requests sent by `until`, in order, after the work queued before them."""
        self.release_rate_sends(until)
        while self.sends and self.sends[0][0] <= until:
            when, i = heapq.heappop(self.sends)
            self.front = max(self.front, when) + self.req_cost
            heapq.heappush(self.pending, (self.front + self.latency_in + self.jitter[i], i))

    def deliver(self, i: int, first: bool, last: bool) -> None:
        """Request i's token of the step just ended reaches the client when the API server has streamed it."""
        if first and np.isnan(self.first[i]):
            self.first[i] = self.front
        if last:
            self.end[i] = self.front
            self.finished += 1
            self.unbilled += 1
            self.in_flight -= 1
            if self.load.arrivals == "closed":
                if self.next_index < self.n:
                    self.send(self.next_index, self.front)
                    self.next_index += 1
            else:
                if self.client_queue:
                    self.send(self.client_queue.popleft(), self.front)

    def next_arrival(self) -> float:
        return self.pending[0][0] if self.pending else math.inf

    def take_arrivals(self) -> None:
        while self.pending and self.pending[0][0] <= self.t:
            _, i = heapq.heappop(self.pending)
            self.queued[i] = self.t
            self.rem[i] = self.prompt - self.cached
            self.done[i] = self.cached
            self.waiting.append(i)

    # --- engine ----------------------------------------------------------------------------------------
    def release(self, i: int, ctx: int) -> None:
        self.kv_used -= ctx + self.waste
        self.running.remove(i)

    def preempt(self) -> None:
        """Free the most recently admitted request; it recomputes its tokens when admitted again."""
        i = self.running[-1]
        self.preemptions += 1
        if i in self.prefilling:
            self.prefilling.remove(i)
            ctx = self.done[i]
            todo = ctx + self.rem[i]
        else:
            ctx = self.done[i] + (self.step_idx - self.s0[i])
            self.emitted[i] += self.step_idx - self.s0[i]
            self.n_dec -= 1
            self.s0_sum -= self.done[i] - self.s0[i]
            self.ver[i] += 1
            todo = ctx
        self.release(i, ctx)
        self.rem[i] = todo  # vLLM resets its computed tokens: prompt and generated tokens are computed again
        self.done[i] = 0
        self.waiting.appendleft(i)

    def finishing_decoders(self) -> list[int]:
        """The decoders whose last token came in the step just ended, removed from the engine."""
        heap, ver = self.dec_heap, self.ver
        out: list[int] = []
        while heap and heap[0][0] <= self.step_idx:
            _, i, v = heapq.heappop(heap)
            if v != ver[i]:
                continue
            ctx = self.done[i] + (self.step_idx - self.s0[i])
            self.n_dec -= 1
            self.s0_sum -= self.done[i] - self.s0[i]
            self.emitted[i] += self.step_idx - self.s0[i]
            self.release(i, ctx)
            out.append(i)
        return out

    def decode_leap(self, single: bool = False) -> None:
        """Pure decode steps until the next finish, a request the engine could take, a request reaching the
        API server, or a full KV cache (one step only if `single`: a waiting request is admitted in the next)."""
        b = self.n_dec
        heap, ver = self.dec_heap, self.ver
        while heap and heap[0][2] != ver[heap[0][1]]:
            heapq.heappop(heap)
        k = heap[0][0] - self.step_idx
        if math.isfinite(self.kv_cap):
            k = min(k, int((self.kv_cap - self.kv_used) // b))
        step = self.step
        base = step.decode_fixed_ms(b) + step.kv_ms_per_token * (self.s0_sum + b * (self.step_idx + 1))
        slope = step.kv_ms_per_token * b
        t0 = self.t
        ts = self.next_send()
        if ts < math.inf:
            k = min(k, _steps_until(ts - t0, base, slope))
        if len(self.running) < self.seqs_cap and not self.waiting:  # else arrivals could not be admitted anyway
            ta = self.next_arrival()
            if ta < math.inf:
                k = min(k, _steps_until(ta - t0, base, slope))
        k = 1 if single else max(1, k)
        dt = k * base + slope * k * (k - 1) / 2.0
        self.prev_start = t0 + dt - (base + slope * (k - 1))
        # The API server's backlog after k bursts of b tokens at the step ends T_1..T_k (first come, first
        # served): F_k = max(F_0 + k w, T_1 + k w, T_k + w), since T_j - j w is convex in j. Requests sent
        # during the last step go in before its burst.
        w = b * self.tok_cost
        if k > 1:
            t1 = t0 + base
            tk1 = t0 + (k - 1) * base + slope * (k - 1) * (k - 2) / 2.0
            self.front = max(self.front + (k - 1) * w, t1 + (k - 1) * w, tk1 + w)
        self.busy += dt * len(self.running)
        self.t = t0 + dt
        self.step_idx += k
        self.kv_used += b * k
        self.front_requests(self.t)
        self.front = max(self.front, self.t) + w
        for i in self.finishing_decoders():
            self.deliver(i, first=False, last=True)
        self.bill_finishes()

    def admission_horizon(self) -> float:
        """The latest time at which a request taken in can join the step starting now."""
        if self.one_ahead and self.prev_start is not None:
            return self.prev_start
        return self.t

    def mixed_step(self) -> None:
        """One step with prefill work: decodes first, then running prefills, then admissions."""
        budget = self.budget_cap - self.n_dec
        n_dec = self.n_dec
        tokens = seqs = n_dec
        kvctx = self.s0_sum + n_dec * (self.step_idx + 1) if n_dec else 0
        attn = 0.0
        chunks: list[tuple[int, int]] = []
        for i in self.prefilling:
            if budget <= 0:
                break
            c = min(self.rem[i], budget)
            d = self.done[i]
            attn += c * (d + c / 2.0)
            kvctx += d
            tokens += c
            seqs += 1
            budget -= c
            chunks.append((i, c))
        new_tokens = tokens - n_dec
        horizon = self.admission_horizon()
        while self.waiting and budget > 0 and len(self.running) < self.seqs_cap:
            i = self.waiting[0]
            if self.queued[i] > horizon:
                break
            c = min(self.rem[i], budget)
            if self.kv_used + new_tokens + n_dec + c + self.waste > self.kv_cap:
                break
            self.waiting.popleft()
            self.prefilling.append(i)
            self.running.append(i)
            d = self.done[i]
            self.kv_used += self.waste + d
            attn += c * (d + c / 2.0)
            kvctx += d
            tokens += c
            new_tokens += c
            seqs += 1
            budget -= c
            chunks.append((i, c))
        if not chunks:  # nothing fits in the KV cache: decode (or preempt) instead
            if n_dec:
                self.decode_leap()
            elif self.running:
                self.preempt()
            else:
                raise ValueError(f"one request ({self.prompt} prompt tokens) does not fit the KV cache ({self.kv_cap:.0f} tokens)")
            return
        if self.kv_used + n_dec + new_tokens > self.kv_cap and n_dec:
            self.preempt()
            return
        dt = self.step.step_ms(tokens=tokens, seqs=seqs, kv_context=kvctx, attn_token_ctx=attn, decode_only=False)
        self.busy += dt * len(self.running)
        self.prev_start = self.t
        self.t += dt
        self.step_idx += 1
        self.kv_used += n_dec + new_tokens
        finishing = self.finishing_decoders()
        completed: list[int] = []
        for i, c in chunks:
            self.rem[i] -= c
            self.done[i] += c
            if self.rem[i] == 0:
                self.prefilling.remove(i)
                completed.append(i)
        self.front_requests(self.t)
        self.front = max(self.front, self.t) + (n_dec + len(completed)) * self.tok_cost
        for i in finishing:
            self.deliver(i, first=False, last=True)
        for i in completed:
            self.prefill_complete(i)
        self.bill_finishes()

    def bill_finishes(self) -> None:
        """After the step's tokens are streamed, the API server's work on the requests that finished in it."""
        self.front += self.unbilled * self.fin_cost
        self.unbilled = 0

    def prefill_complete(self, i: int) -> None:
        """Request i's prompt is in the KV cache at the end of this step: a token is out; it decodes the rest."""
        if np.isnan(self.eng_first[i]):
            self.eng_first[i] = self.t
        self.emitted[i] += 1
        if self.emitted[i] >= self.out:
            self.release(i, self.done[i])
            self.deliver(i, first=True, last=True)
            return
        self.deliver(i, first=True, last=False)
        self.s0[i] = self.step_idx
        self.n_dec += 1
        self.s0_sum += self.done[i] - self.step_idx
        heapq.heappush(self.dec_heap, (self.step_idx + self.out - self.emitted[i], i, self.ver[i]))

    def run(self) -> Simulated:
        while self.finished < self.n:
            self.front_requests(self.t)
            self.take_arrivals()
            if not self.running and not self.waiting:
                nxt = min(self.next_arrival(), self.next_send())
                if math.isinf(nxt):
                    break
                self.t = max(self.t, nxt)
                continue
            if not self.running:
                self.prev_start = None  # an idle engine schedules a step as soon as a request is in
            can_admit = bool(self.waiting) and len(self.running) < self.seqs_cap
            ready = can_admit and self.queued[self.waiting[0]] <= self.admission_horizon()
            if self.prefilling or ready:
                self.mixed_step()
            elif self.n_dec:
                if self.kv_used + self.n_dec > self.kv_cap:
                    self.preempt()
                else:
                    self.decode_leap(single=can_admit and self.one_ahead)
            else:  # waiting requests the engine cannot take and nothing running: cannot happen
                break
        return Simulated(
            sent_ms=self.sent,
            ttft_ms=self.first - self.sent,
            e2e_ms=self.end - self.sent,
            output_tokens=self.out,
            engine_ttft_ms=self.eng_first - self.queued,
            duration_ms=float(np.nanmax(self.end)) if self.finished else 0.0,
            steps=self.step_idx,
            preemptions=self.preemptions,
            mean_running=self.busy / self.t if self.t > 0 else 0.0,
        )


def jitter_quantiles(n: int, seed: int = 0) -> np.ndarray:
    """n draws of an exponential distribution of mean 1, stratified (its quantiles at (k + 1/2) / n) and put in
    an order fixed by the seed: the sample's spread is the distribution's at any n, and the same n and seed
    give the same draws."""
    q = (np.arange(n) + 0.5) / n
    return np.random.default_rng(0x5EED + int(seed)).permutation(-np.log1p(-q))


def _steps_until(gap: float, base: float, slope: float) -> int:
    """Fewest steps whose summed time (base, base + slope, base + 2 slope, ...) reaches `gap` (at least 1)."""
    if gap <= 0:
        return 1
    if slope <= 1e-12:
        return max(1, math.ceil(gap / base - 1e-9))
    a, b = slope / 2.0, base - slope / 2.0
    m = (-b + math.sqrt(b * b + 4 * a * gap)) / (2 * a)
    return max(1, math.ceil(m - 1e-9))
