"""The sweep `trdeploy calibrate` runs: which loads, in which order, how many requests, within the budget.

Three request shapes separate what each part of the step law costs: the profile's typical request, one with a
long prompt and a short answer (prefill), and one with a short prompt and a long answer (decode, at a context
that grows). The typical shape is measured at concurrencies from 1 to the limit (the KV cache at that shape,
max_num_seqs, and twice the SLA capacity the profile predicts, whichever is lowest), the other two at one low
and one high concurrency, and the typical shape once more as Poisson arrivals at about 60% of what the highest
concurrency carries. Each closed-loop point sends 2 x C requests (at least 8), so its first wave arrives at
once and the second spread out, as in a bench run; the rate-driven point sends requests for 12% of the
budget (8 to 40 s).

Every point's duration is predicted with the model before calibration (the prior); points are run most
informative first, and those that would not finish inside the budget (90% of it, the rest for the warm-up and
the scrapes) get fewer requests, then are dropped from the end. A budget the points leave unused buys the
closed-loop points more requests (up to DEFAULT_MAX_WAVES waves each, `--max-waves`), which lowers the noise of what
they measure: a closed loop's first wave arrives at once, and its TTFT p50 depends on how the next waves
spread. Measured on an H100 with Llama-3-8B AWQ (tests/data/calibrate_h100_4): two sweeps of at most 8 waves
(6-minute budget, 221 and 222 s) against two of at most 3 (2-minute budget, ~80 s), each checked on 7 held-out
loads measured twice (28 errors per plan): median error 9.7 / 6.5 / 2.2 / 2.6 / 1.4% against 10.6 / 8.4 /
2.8 / 3.5 / 2.8% (TTFT p50, TTFT p95, TPOT p50, E2E p95, output tokens/s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from trdeploy.calibrate.request import DEFAULT_MAX_WAVES
from trdeploy.deployment import DeploymentProfile
from trdeploy.sizing.batching import Engine, Load, Mix
from trdeploy.sizing.latency import StepModel, predict_latency
from trdeploy.sizing.memory import KV_BLOCK_SIZE, cdiv

MIN_REQUESTS = 8
POISSON_SECONDS = (8.0, 40.0)  # at least, at most
POISSON_BUDGET_SHARE = 0.12
POISSON_SHARE = 0.6
BUDGET_SHARE = 0.9
# What the server needs besides the sweep: the warm-up requests and a /metrics read around each point.
FIXED_OVERHEAD_S = 15.0
PER_POINT_OVERHEAD_S = 1.5


@dataclass(frozen=True)
class SweepPoint:
    id: str
    mix: Mix
    load: Load
    predicted_s: float  # duration with the prior parameters

    @property
    def label(self) -> str:
        where = f"c={self.load.concurrency}" if self.load.arrivals == "closed" else f"{self.load.request_rate:.3g} req/s (Poisson)"
        return f"{where}, {self.mix.prompt_tokens} in / {self.mix.output_tokens} out, {self.load.num_requests} requests"


@dataclass(frozen=True)
class Sweep:
    points: tuple[SweepPoint, ...]
    dropped: tuple[str, ...]  # points that did not fit the budget
    budget_s: float
    predicted_s: float
    limit: int  # the highest concurrency of the typical shape

    def describe(self) -> str:
        return f"{len(self.points)} points, predicted {self.predicted_s / 60:.1f} of {self.budget_s / 60:.1f} minutes"


def shapes(profile: DeploymentProfile) -> dict[str, Mix]:
    """The typical request, a long prompt with a short answer, a short prompt with a long answer (all within
    max_model_len)."""
    mml = profile.engine_args.max_model_len
    p, o = profile.workload.prompt_tokens, profile.workload.output_tokens
    typical = Mix(p, o)
    long_p = min(max(2 * p, 1024), mml - 64 - 16)
    prefill = Mix(long_p, max(16, min(64, o // 4)))
    short_p = max(32, min(256, p // 4))
    decode = Mix(short_p, max(64, min(mml - short_p - 16, int(1.5 * o))))
    return {"typical": typical, "prefill": prefill, "decode": decode}


def concurrency_limit(profile: DeploymentProfile, mix: Mix, kv_capacity_tokens: int) -> int:
    """The highest concurrency worth measuring at a shape: KV cache, max_num_seqs, twice the SLA capacity."""
    per_request = cdiv(mix.prompt_tokens + mix.output_tokens, KV_BLOCK_SIZE) * KV_BLOCK_SIZE
    kv_limit = max(1, int(0.95 * kv_capacity_tokens // per_request))
    limit = min(kv_limit, profile.engine_args.max_num_seqs)
    sla_cap = profile.prediction.sla_capacity_per_replica
    if sla_cap:
        limit = min(limit, max(8, 2 * sla_cap))
    return max(1, limit)


def _levels(limit: int) -> list[int]:
    """1, 4, 16, ... below the limit, and the limit."""
    out, c = [], 1
    while c < limit:
        out.append(c)
        c *= 4
    return [*out, limit]


def plan_sweep(
    profile: DeploymentProfile, step: StepModel, engine: Engine, *, budget_s: float, kv_capacity_tokens: int, seed: int = 0, max_waves: int = DEFAULT_MAX_WAVES
) -> Sweep:
    """The points, in the order they run, and what the budget could not hold."""
    mixes = shapes(profile)
    limit = concurrency_limit(profile, mixes["typical"], kv_capacity_tokens)
    wanted: list[tuple[str, Mix, Load]] = []

    def closed(name: str, mix: Mix, c: int) -> None:
        wanted.append((f"{name}-c{c}", mix, Load.closed(c, max(MIN_REQUESTS, 2 * c))))

    levels = _levels(limit)
    typical = mixes["typical"]
    closed("typical", typical, 1)
    closed("typical", typical, limit)
    p_lim = concurrency_limit(profile, mixes["prefill"], kv_capacity_tokens)
    d_lim = concurrency_limit(profile, mixes["decode"], kv_capacity_tokens)
    top = predict_latency(step, engine, typical, Load.closed(limit, max(MIN_REQUESTS, 2 * limit)))
    rate = max(0.05, POISSON_SHARE * top.requests_per_s)
    seconds = min(POISSON_SECONDS[1], max(POISSON_SECONDS[0], POISSON_BUDGET_SHARE * budget_s))
    wanted.append(("typical-poisson", typical, Load.poisson(round(rate, 3), max(MIN_REQUESTS, round(rate * seconds)), seed=seed)))
    closed("prefill", mixes["prefill"], 1)
    closed("decode", mixes["decode"], max(1, d_lim // 2))
    for c in levels[1:-1][::-1]:
        closed("typical", typical, c)
    closed("prefill", mixes["prefill"], max(2, p_lim // 4))
    closed("decode", mixes["decode"], 4)

    seen: set[str] = set()
    points: list[SweepPoint] = []
    for pid, mix, load in wanted:
        if pid in seen:
            continue
        seen.add(pid)
        points.append(SweepPoint(pid, mix, load, _duration(step, engine, mix, load)))
    usable = BUDGET_SHARE * budget_s - FIXED_OVERHEAD_S
    kept, dropped, total = [], [], 0.0
    for planned in points:
        pt = planned
        cost = pt.predicted_s + PER_POINT_OVERHEAD_S
        if total + cost > usable and pt.load.arrivals == "closed" and pt.load.num_requests > max(MIN_REQUESTS, pt.load.concurrency or 1):
            # Fewer requests: one wave (at least MIN_REQUESTS) instead of two.
            smaller = replace(pt.load, num_requests=max(MIN_REQUESTS, pt.load.concurrency or 1))
            pt = SweepPoint(pt.id, pt.mix, smaller, _duration(step, engine, pt.mix, smaller))
            cost = pt.predicted_s + PER_POINT_OVERHEAD_S
        if total + cost > usable:
            dropped.append(pt.id)
            continue
        kept.append(pt)
        total += cost
    if not dropped and kept and total < usable:
        kept, total = _fill(kept, total, usable, step, engine, max_waves)
    return Sweep(points=tuple(kept), dropped=tuple(dropped), budget_s=budget_s, predicted_s=total + FIXED_OVERHEAD_S, limit=limit)


def _fill(points: list[SweepPoint], total: float, usable: float, step: StepModel, engine: Engine, max_waves: int) -> tuple[list[SweepPoint], float]:
    """More requests per closed-loop point (at most `max_waves` waves) while the budget holds them."""
    closed = sum(p.predicted_s for p in points if p.load.arrivals == "closed")
    scale = min(max_waves / 2, 1 + (usable - total) / closed) if closed > 0 else 1.0
    out: list[SweepPoint] = []
    new_total = total
    for pt in points:
        chosen = pt
        if pt.load.arrivals == "closed" and scale > 1.05:
            c = pt.load.concurrency or 1
            n = min(max_waves * max(c, MIN_REQUESTS // 2), int(pt.load.num_requests * scale))
            if n > pt.load.num_requests:
                load = replace(pt.load, num_requests=n)
                bigger = SweepPoint(pt.id, pt.mix, load, _duration(step, engine, pt.mix, load))
                if new_total - pt.predicted_s + bigger.predicted_s <= usable:
                    new_total += bigger.predicted_s - pt.predicted_s
                    chosen = bigger
        out.append(chosen)
    return out, new_total


def _duration(step: StepModel, engine: Engine, mix: Mix, load: Load) -> float:
    lat = predict_latency(step, engine, mix, load)
    return lat.num_requests / lat.requests_per_s if lat.requests_per_s > 0 else math.inf
