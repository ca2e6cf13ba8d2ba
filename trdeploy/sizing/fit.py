"""Fitting the latency model's free parameters to measured points, and its error on points it did not see.

Each measured point is a load (closed loop or a request rate) of fixed-shape requests with what bench
measured (TTFT p50/p95, median TPOT, p95 end-to-end, output tokens/s). A prediction for it runs the same
load through the model (trdeploy.sizing.latency.predict_latency, with the run's own arrival times).

The fit minimises the squared log-ratios of predicted to measured values over every point and metric
(weights in METRIC_WEIGHTS), plus a weak log-normal prior that keeps each parameter near its starting
value (trdeploy.sizing.latency.PRIOR_SPREAD): the data decide every parameter they can tell apart, the
prior only those they cannot (the step overhead and the weight-read efficiency both add a constant per
step, for example). Levenberg-Marquardt over log(parameters), inside physical bounds. Percentiles of a
finite sample move in small jumps, so the Jacobian takes finite differences of 2%. The cost landscape is
rough and has several valleys (how the per-request overheads split into a part in parallel and a part the
API server does one request at a time is decided by a few points): the fit starts from several places and
polishes the best with a Nelder-Mead simplex, which needs no gradient.

Leave-one-out: each point is predicted by a fit to all the others (warm-started from the full fit); the
errors of those predictions are the held-out errors a calibration reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from trdeploy.sizing.batching import Engine, Load, Mix
from trdeploy.sizing.latency import BOUNDS, PRIOR_SPREAD, LatencyParams, LatencyPrediction, StepModel, predict_latency

# What a point can have measured, and how much each counts in the fit. METRICS are what bench reports and
# the accuracy is stated for; the last is from vLLM's own timers (a point measured with /metrics): the mean of
# TTFT outside the engine, bench's mean TTFT less vLLM's mean queue + prefill time. It splits a request's
# overhead into the API server's serial work, a part in parallel and the engine's own time, which the client's
# percentiles alone leave to the fit's starting point.
METRIC_WEIGHTS = {
    "ttft_p50_ms": 0.6,
    "ttft_p95_ms": 0.8,
    "tpot_p50_ms": 1.0,
    "e2e_p95_ms": 1.0,
    "output_throughput": 1.0,
    "ttft_outside_engine_mean_ms": 0.6,
}
METRICS = ("ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "e2e_p95_ms", "output_throughput")
PRIOR_WEIGHT = 0.05  # of one metric's log-residual per standard deviation of the prior: 1 sd costs what a 5% miss on one metric does
JACOBIAN_STEP = 0.02  # in log(parameter)


StepFactory = Callable[[LatencyParams], StepModel]


@dataclass(frozen=True)
class Observation:
    """One measured point, ready to predict: the request shape, the load, the engine, what was measured, and
    the step law of the server it was measured on as a function of the parameters (points of several
    models or engine settings on one tier are fitted together)."""

    id: str
    mix: Mix
    load: Load
    engine: Engine
    measured: dict[str, float]
    make_step: StepFactory = field(compare=False, repr=False)

    def metrics(self) -> list[str]:
        return [m for m in METRIC_WEIGHTS if self.measured.get(m) is not None and self.measured[m] > 0]

    def predict(self, params: LatencyParams) -> LatencyPrediction:
        return predict_latency(self.make_step(params), self.engine, self.mix, self.load)


def predict_observation(step: StepModel, obs: Observation) -> LatencyPrediction:
    return predict_latency(step, obs.engine, obs.mix, obs.load)


def errors(pred: LatencyPrediction, obs: Observation) -> dict[str, float]:
    """Signed relative error (predicted / measured - 1) per measured metric."""
    return {m: pred.metric(m) / obs.measured[m] - 1.0 for m in obs.metrics()}


@dataclass
class FitResult:
    params: LatencyParams
    fitted: tuple[str, ...]
    iterations: int
    cost: float
    rms_log_error: float  # over the points' metrics, at the optimum (without the prior)
    converged: bool
    history: list[float] = field(default_factory=list)


class _Problem:
    def __init__(self, base: LatencyParams, names: Sequence[str], observations: Sequence[Observation], prior: LatencyParams) -> None:
        self.base, self.names, self.obs = base, tuple(names), list(observations)
        self.prior_log = np.array([math.log(getattr(prior, n)) for n in self.names])
        self.spread = np.array([math.log(PRIOR_SPREAD[n]) for n in self.names])
        self.lo = np.array([math.log(BOUNDS[n][0]) for n in self.names])
        self.hi = np.array([math.log(BOUNDS[n][1]) for n in self.names])
        self.rows = [(k, m) for k, o in enumerate(self.obs) for m in o.metrics()]
        self.w = np.array([math.sqrt(METRIC_WEIGHTS[m]) for _, m in self.rows])

    def params(self, x: np.ndarray) -> LatencyParams:
        return self.base.with_values(**{n: float(math.exp(v)) for n, v in zip(self.names, x, strict=True)})

    def data_residuals(self, x: np.ndarray) -> np.ndarray:
        params = self.params(x)
        steps: dict[int, StepModel] = {}
        preds = []
        for o in self.obs:
            key = id(o.make_step)
            if key not in steps:
                steps[key] = o.make_step(params)
            preds.append(predict_observation(steps[key], o))
        out = np.empty(len(self.rows))
        for r, (k, m) in enumerate(self.rows):
            value = preds[k].metric(m)
            out[r] = math.log(max(value, 1e-9) / self.obs[k].measured[m]) if math.isfinite(value) else 10.0
        return out * self.w

    def residuals(self, x: np.ndarray) -> np.ndarray:
        prior = PRIOR_WEIGHT * (x - self.prior_log) / self.spread
        return np.concatenate([self.data_residuals(x), prior])


def fit(
    start: LatencyParams,
    names: Sequence[str],
    observations: Sequence[Observation],
    *,
    prior: LatencyParams | None = None,
    max_iterations: int = 40,
    tolerance: float = 1e-5,
) -> FitResult:
    """Levenberg-Marquardt over log(parameters named in `names`), the others held at `start`'s values."""
    prob = _Problem(start, names, observations, prior or start)
    x = np.clip(np.array([math.log(getattr(start, n)) for n in prob.names]), prob.lo, prob.hi)
    if not prob.rows:
        return FitResult(params=prob.params(x), fitted=prob.names, iterations=0, cost=0.0, rms_log_error=0.0, converged=True)
    r = prob.residuals(x)
    cost = float(r @ r)
    lam = 1e-2
    history = [cost]
    converged = False
    it = 0
    for it in range(1, max_iterations + 1):  # noqa: B007 (it is reported)
        jac = np.empty((r.size, x.size))
        for j in range(x.size):
            h = JACOBIAN_STEP if x[j] + JACOBIAN_STEP <= prob.hi[j] else -JACOBIAN_STEP
            xj = x.copy()
            xj[j] += h
            jac[:, j] = (prob.residuals(xj) - r) / h
        g = jac.T @ r
        a = jac.T @ jac
        improved = False
        for _ in range(8):
            step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-9), -g)
            x_new = np.clip(x + step, prob.lo, prob.hi)
            r_new = prob.residuals(x_new)
            cost_new = float(r_new @ r_new)
            if cost_new < cost:
                improved = True
                rel = (cost - cost_new) / max(cost, 1e-12)
                x, r, cost = x_new, r_new, cost_new
                lam = max(lam / 3.0, 1e-7)
                history.append(cost)
                if rel < tolerance:
                    converged = True
                break
            lam *= 4.0
        if not improved or converged:
            converged = True
            break
    data = prob.data_residuals(x) / prob.w
    return FitResult(
        params=prob.params(x),
        fitted=prob.names,
        iterations=it,
        cost=cost,
        rms_log_error=float(math.sqrt(np.mean(data**2))) if data.size else 0.0,
        converged=converged,
        history=history,
    )


def polish(result: FitResult, observations: Sequence[Observation], *, prior: LatencyParams, max_evaluations: int = 400, tolerance: float = 1e-4) -> FitResult:
    """A Nelder-Mead simplex over the fitted log(parameters) from `result`, on the same cost (data and prior),
    inside the bounds; `result` itself when the simplex finds nothing lower."""
    prob = _Problem(result.params, result.fitted, observations, prior)
    if not prob.rows or not prob.names:
        return result

    def cost(x: np.ndarray) -> float:
        r = prob.residuals(np.clip(x, prob.lo, prob.hi))
        return float(r @ r)

    x0 = np.clip(np.array([math.log(getattr(result.params, n)) for n in prob.names]), prob.lo, prob.hi)
    dim = x0.size
    simplex = [x0] + [x0 + np.eye(dim)[j] * 0.15 for j in range(dim)]
    values = [cost(x) for x in simplex]
    evaluations = len(values)
    while evaluations < max_evaluations:
        order = np.argsort(values)
        simplex, values = [simplex[k] for k in order], [values[k] for k in order]
        if values[-1] - values[0] <= tolerance * max(values[0], 1e-12):
            break
        centroid = np.mean(simplex[:-1], axis=0)
        worst = simplex[-1]
        xr = centroid + (centroid - worst)
        fr = cost(xr)
        evaluations += 1
        if fr < values[0]:
            xe = centroid + 2.0 * (centroid - worst)
            fe = cost(xe)
            evaluations += 1
            simplex[-1], values[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = xr, fr
        else:
            xc = centroid + 0.5 * (worst - centroid) if fr >= values[-1] else centroid + 0.5 * (xr - centroid)
            fc = cost(xc)
            evaluations += 1
            if fc < min(fr, values[-1]):
                simplex[-1], values[-1] = xc, fc
            else:  # shrink towards the best
                simplex = [simplex[0]] + [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex[1:]]
                values = [values[0]] + [cost(x) for x in simplex[1:]]
                evaluations += dim
    best = int(np.argmin(values))
    if values[best] >= result.cost:
        return result
    x = np.clip(simplex[best], prob.lo, prob.hi)
    data = prob.data_residuals(x) / prob.w
    return FitResult(
        params=prob.params(x),
        fitted=prob.names,
        iterations=result.iterations + evaluations,
        cost=float(values[best]),
        rms_log_error=float(math.sqrt(np.mean(data**2))) if data.size else 0.0,
        converged=result.converged,
        history=[*result.history, float(values[best])],
    )


def fit_multistart(
    start: LatencyParams,
    names: Sequence[str],
    observations: Sequence[Observation],
    *,
    prior: LatencyParams,
    starts: Sequence[dict[str, float]] = (),
    max_iterations: int = 40,
    polish_evaluations: int = 600,
) -> FitResult:
    """The best of fits from `start` and from `start` with each of `starts` applied (a cost landscape with
    several valleys: one where the API server keeps up, one where it paces the streams; one where a request's
    overhead is mostly in parallel, one where the API server serialises it), polished by a simplex."""
    best: FitResult | None = None
    for override in ({}, *starts):
        first = start.with_values(**{k: v for k, v in override.items() if k in names})
        res = fit(first, names, observations, prior=prior, max_iterations=max_iterations)
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    return polish(best, observations, prior=prior, max_evaluations=polish_evaluations) if polish_evaluations else best


def leave_one_out(full: FitResult, observations: Sequence[Observation], *, prior: LatencyParams, max_iterations: int = 12, polish_evaluations: int = 150) -> list[dict[str, float]]:
    """For each point, its errors as predicted by a fit to all the other points (started from the full fit)."""
    out: list[dict[str, float]] = []
    for k, obs in enumerate(observations):
        rest = [o for j, o in enumerate(observations) if j != k]
        if not rest:
            out.append(errors(obs.predict(prior), obs))
            continue
        res = fit(full.params, full.fitted, rest, prior=prior, max_iterations=max_iterations)
        if polish_evaluations:
            res = polish(res, rest, prior=prior, max_evaluations=polish_evaluations)
        out.append(errors(obs.predict(res.params), obs))
    return out


def summarize_errors(per_point: Sequence[dict[str, float]]) -> dict[str, dict[str, float | int]]:
    """Median and 90th percentile of the absolute relative errors per metric, with the number of points."""
    out: dict[str, dict[str, float | int]] = {}
    for m in METRICS:
        vals = np.array([abs(e[m]) for e in per_point if m in e], dtype=float)
        if vals.size:
            out[m] = {"median_abs": float(np.median(vals)), "p90_abs": float(np.percentile(vals, 90)), "points": int(vals.size)}
    return out
