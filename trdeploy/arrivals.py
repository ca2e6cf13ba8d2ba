"""When requests are sent under a request rate: one schedule for `bench` (which sends them) and the latency
model (which predicts what they see), so a prediction for a measured run uses that run's own arrival times.

As `vllm bench serve --request-rate R --burstiness B` computes them (vllm/benchmarks/serve.py `get_request`):
gaps drawn from a gamma distribution with shape B and mean 1/R (B = 1: Poisson arrivals); with a known
request count the cumulative gaps are rescaled so that the last request is sent at N / R seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def arrival_offsets(rate: float, burstiness: float, num_requests: int | None, rng: np.random.Generator) -> Iterator[float]:
    """Send times in seconds after the start. rate inf: everything at once (offset 0 for ever)."""
    if math.isinf(rate):
        while True:
            yield 0.0
    b = burstiness
    if num_requests is not None:
        if math.isinf(b):
            gaps = np.full(num_requests, 1.0 / rate)
        else:
            gaps = rng.gamma(shape=b, scale=1.0 / (rate * b), size=num_requests)
        cum = np.cumsum(gaps)
        if cum.size and cum[-1] > 0:
            cum *= (num_requests / rate) / cum[-1]
        yield from (float(x) for x in cum)
        return
    t = 0.0
    while True:
        t += (1.0 / rate) if math.isinf(b) else float(rng.gamma(shape=b, scale=1.0 / (rate * b)))
        yield t


def arrival_schedule(rate: float, burstiness: float, num_requests: int, seed: int) -> np.ndarray:
    """The first `num_requests` send times of a seeded run (what `bench --seed SEED` sends)."""
    it = arrival_offsets(rate, burstiness, num_requests, np.random.default_rng(seed))
    return np.fromiter((next(it) for _ in range(num_requests)), dtype=np.float64, count=num_requests)
