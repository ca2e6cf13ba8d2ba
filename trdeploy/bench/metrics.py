"""Serving metrics as `vllm bench serve` defines them, kept in bounded memory.

Definitions (vllm/benchmarks/serve.py `calculate_metrics`, lib/endpoint_request_func.py):

- TTFT: from sending the request to the first streamed chunk that carries a token.
- ITL: the gaps between successive token chunks. A chunk that carries several tokens is one gap, as
  in vLLM (so ITL is per chunk, not per token).
- E2E latency (`e2el`): from sending the request to the last token chunk.
- TPOT, per request with more than one output token: (e2el - ttft) / (output_tokens - 1).
- Output tokens: the server's `usage.completion_tokens` (stream_options.include_usage) when it sends
  one, else the number of token chunks (a lower bound when chunks carry several tokens).
- Percentiles: `numpy.percentile` with its default (linear) method; mean, median, std likewise numpy.
- Request throughput = completed / duration; goodput = requests meeting every SLA target / duration
  (a request with one output token has TPOT 0 for goodput, as in vLLM).

Only successful requests enter the latency statistics; failures are counted by kind. Everything here
is pure computation over compact arrays; nothing keeps response texts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from trdeploy.text.inflation import WORD_PATTERN

# Words are counted as `trdeploy profile` counts them (trdeploy.text.inflation.WORD_PATTERN: runs of letters,
# digits and combining marks, an apostrophe joining suffixes, so "Ankara'ya" is one word).
_WORD_RE = WORD_PATTERN
_MAX_WORD_CARRY = 512

# One request's outcome.
STATUS_OK, STATUS_FAILED, STATUS_CANCELLED = 0, 1, 2

# ITL values are kept exactly (float32 seconds) up to this many; beyond it, a uniform reservoir sample
# of this size (Algorithm R) stands for them. 8M float32 values are 32 MB.
DEFAULT_ITL_CAPACITY = 8_000_000


def count_words(text: str) -> int:
    return len(_WORD_RE.findall(text))


class WordCounter:
    """Counts words across streamed chunks without keeping the text: a word split over two chunks
    ("İstan" + "bul'da") counts once. Only the current unfinished word is carried."""

    __slots__ = ("_carry", "words")

    def __init__(self) -> None:
        self.words = 0
        self._carry = ""

    def feed(self, chunk: str) -> None:
        if not chunk:
            return
        text = self._carry + chunk
        matches = list(_WORD_RE.finditer(text))
        if not matches:
            self._carry = ""
            return
        last = matches[-1]
        tail = text[last.end() :]
        # The last word may go on in the next chunk if the text ends inside it or right after an apostrophe.
        open_end = last.end() == len(text) or tail in ("'", "’")
        if open_end and len(text) - last.start() <= _MAX_WORD_CARRY:
            self.words += len(matches) - 1
            self._carry = text[last.start() :]
        else:
            self.words += len(matches)
            self._carry = ""

    def finish(self) -> int:
        if self._carry:
            self.words += len(_WORD_RE.findall(self._carry))
            self._carry = ""
        return self.words


class ItlBuffer:
    """All inter-token latencies of successful requests, as float32 seconds.

    Exact up to `capacity` values; past it a reservoir sample of `capacity` values (uniform over all
    values seen, Algorithm R), so memory stays bounded whatever the run length. `sampled` says which.
    """

    def __init__(self, capacity: int = DEFAULT_ITL_CAPACITY, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._data = np.empty(min(capacity, 65_536), dtype=np.float32)
        self._size = 0
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    @property
    def sampled(self) -> bool:
        return self.seen > self.capacity

    def extend(self, values: Sequence[float]) -> None:
        n = len(values)
        if n == 0:
            return
        arr = np.asarray(values, dtype=np.float32)
        room = self.capacity - self._size
        take = min(room, n)
        if take > 0:
            self._grow(self._size + take)
            self._data[self._size : self._size + take] = arr[:take]
            self._size += take
        rest = arr[take:]
        if rest.size:
            # Algorithm R for the values past capacity: value number k (1-based) replaces a random slot
            # with probability capacity / k.
            ks = self.seen + take + np.arange(1, rest.size + 1)
            slots = (self._rng.random(rest.size) * ks).astype(np.int64)
            keep = slots < self.capacity
            self._data[slots[keep]] = rest[keep]
        self.seen += n

    def _grow(self, needed: int) -> None:
        if needed <= self._data.size:
            return
        new = min(self.capacity, max(needed, self._data.size * 2))
        data = np.empty(new, dtype=np.float32)
        data[: self._size] = self._data[: self._size]
        self._data = data

    def values(self) -> np.ndarray:
        return self._data[: self._size]

    def nbytes(self) -> int:
        return int(self._data.nbytes)


@dataclass
class RequestResult:
    """What one request produced; the load generator fills it, `ResultStore.add` packs it."""

    start: float = 0.0  # seconds since the run started, when the request was sent
    queue_time: float = 0.0  # seconds spent waiting for a concurrency slot before sending
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0
    usage_tokens: bool = False  # output_tokens came from the server's usage
    prompt_tokens: int = -1  # -1: unknown (no usage and not a token-id prompt)
    chunks: int = 0
    words: int = 0
    status: int = STATUS_OK
    error_kind: str = ""
    error: str = ""
    itl: list[float] = field(default_factory=list)


class ResultStore:
    """Fixed-size per-request records in growable numpy arrays plus the ITL buffer.

    About 50 bytes a request whatever the response length; error messages are kept only as the first
    few samples of each kind.
    """

    _FIELDS: ClassVar[dict[str, Any]] = {
        "start": np.float64,
        "queue_time": np.float64,
        "ttft": np.float64,
        "latency": np.float64,
        "output_tokens": np.int32,
        "prompt_tokens": np.int32,
        "chunks": np.int32,
        "words": np.int32,
        "status": np.int8,
        "usage_tokens": np.bool_,
    }
    ERROR_SAMPLES = 3

    def __init__(self, expected: int | None = None, itl_capacity: int = DEFAULT_ITL_CAPACITY, seed: int = 0) -> None:
        cap = max(16, min(expected or 1024, 1_000_000))
        self._arrays = {name: np.zeros(cap, dtype=dt) for name, dt in self._FIELDS.items()}
        self.size = 0
        self.itl = ItlBuffer(itl_capacity, seed=seed)
        self.errors: dict[str, int] = {}
        self.error_samples: dict[str, list[str]] = {}

    def add(self, r: RequestResult) -> None:
        if self.size == len(self._arrays["start"]):
            for name, arr in self._arrays.items():
                grown = np.zeros(arr.size * 2, dtype=arr.dtype)
                grown[: arr.size] = arr
                self._arrays[name] = grown
        i = self.size
        a = self._arrays
        a["start"][i] = r.start
        a["queue_time"][i] = r.queue_time
        a["ttft"][i] = r.ttft
        a["latency"][i] = r.latency
        a["output_tokens"][i] = r.output_tokens
        a["prompt_tokens"][i] = r.prompt_tokens
        a["chunks"][i] = r.chunks
        a["words"][i] = r.words
        a["status"][i] = r.status
        a["usage_tokens"][i] = r.usage_tokens
        self.size += 1
        if r.status == STATUS_OK:
            self.itl.extend(r.itl)
        elif r.status == STATUS_FAILED:
            kind = r.error_kind or "unknown"
            self.errors[kind] = self.errors.get(kind, 0) + 1
            samples = self.error_samples.setdefault(kind, [])
            if len(samples) < self.ERROR_SAMPLES and r.error:
                samples.append(r.error[:300])

    def column(self, name: str) -> np.ndarray:
        return self._arrays[name][: self.size]

    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self._arrays.values()) + self.itl.nbytes()


@dataclass(frozen=True)
class SlaTargets:
    """Latency targets (ms) and the error budget. None: not checked."""

    ttft_p95_ms: float | None = None
    e2e_p95_ms: float | None = None
    tpot_ms: float | None = None
    max_error_rate: float | None = 0.01

    @property
    def has_latency_targets(self) -> bool:
        return any(v is not None for v in (self.ttft_p95_ms, self.e2e_p95_ms, self.tpot_ms))

    def as_dict(self) -> dict[str, float | None]:
        return {
            "ttft_p95_ms": self.ttft_p95_ms,
            "e2e_p95_ms": self.e2e_p95_ms,
            "tpot_ms": self.tpot_ms,
            "max_error_rate": self.max_error_rate,
        }


def percentile_key(p: float) -> str:
    """vLLM's key spelling: p99, p99.9."""
    return str(int(p)) if int(p) == p else str(p)


def _stats(name: str, values_s: np.ndarray, percentiles: Iterable[float]) -> dict[str, float | None]:
    """mean/median/std/pXX in ms, keys as vLLM writes them (mean_ttft_ms, p99_ttft_ms, ...)."""
    out: dict[str, float | None] = {}
    empty = values_s.size == 0
    vals = values_s.astype(np.float64, copy=False)
    out[f"mean_{name}_ms"] = None if empty else float(np.mean(vals) * 1000)
    out[f"median_{name}_ms"] = None if empty else float(np.median(vals) * 1000)
    out[f"std_{name}_ms"] = None if empty else float(np.std(vals) * 1000)
    for p in percentiles:
        out[f"p{percentile_key(p)}_{name}_ms"] = None if empty else float(np.percentile(vals, p) * 1000)
    return out


def peak_concurrency(starts: np.ndarray, ends: np.ndarray) -> int:
    """Most requests in flight at once over half-open [start, end) intervals (vLLM's sweep line)."""
    if starts.size == 0:
        return 0
    times = np.concatenate([starts, ends])
    deltas = np.concatenate([np.ones(starts.size, dtype=np.int64), -np.ones(ends.size, dtype=np.int64)])
    order = np.lexsort((deltas, times))  # departures (-1) before arrivals (+1) at equal times
    return int(np.max(np.cumsum(deltas[order])))


def request_tpots(ttft: np.ndarray, latency: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
    """Per-request TPOT in seconds; 0 where a request has at most one output token (vLLM's goodput rule)."""
    tpot = np.zeros(ttft.size, dtype=np.float64)
    many = output_tokens > 1
    tpot[many] = (latency[many] - ttft[many]) / (output_tokens[many] - 1)
    return tpot


def summarize(store: ResultStore, duration_s: float, *, percentiles: Sequence[float], sla: SlaTargets) -> dict[str, Any]:
    """The metrics of one run, keys as `vllm bench serve --save-result` names them where vLLM has them."""
    status = store.column("status")
    ok = status == STATUS_OK
    failed_mask = status == STATUS_FAILED
    completed = int(ok.sum())
    failed = int(failed_mask.sum())
    cancelled = int((status == STATUS_CANCELLED).sum())
    ttft = store.column("ttft")[ok]
    latency = store.column("latency")[ok]
    out_tokens = store.column("output_tokens")[ok].astype(np.int64)
    prompt_tokens = store.column("prompt_tokens")[ok].astype(np.int64)
    words = store.column("words")[ok].astype(np.int64)
    usage = store.column("usage_tokens")[ok]
    starts = store.column("start")[ok]
    queue = store.column("queue_time")[ok]

    all_tpots = request_tpots(ttft, latency, out_tokens)
    tpots = all_tpots[out_tokens > 1]
    itls = store.itl.values()

    total_output = int(out_tokens.sum())
    known_prompt = prompt_tokens >= 0
    total_input = int(prompt_tokens[known_prompt].sum())
    total_words = int(words.sum())
    dur = duration_s if duration_s > 0 else float("nan")

    good = np.ones(completed, dtype=bool)
    if sla.ttft_p95_ms is not None:
        good &= ttft * 1000 <= sla.ttft_p95_ms
    if sla.tpot_ms is not None:
        good &= all_tpots * 1000 <= sla.tpot_ms
    if sla.e2e_p95_ms is not None:
        good &= latency * 1000 <= sla.e2e_p95_ms
    finished = completed + failed

    result: dict[str, Any] = {
        "duration": duration_s,
        "completed": completed,
        "failed": failed,
        "cancelled": cancelled,
        "error_rate": (failed / finished) if finished else None,
        "errors": dict(sorted(store.errors.items())),
        "error_samples": {k: list(v) for k, v in sorted(store.error_samples.items())},
        "total_input_tokens": total_input,
        "input_tokens_known": int(known_prompt.sum()),
        "total_output_tokens": total_output,
        "output_tokens_from_usage": int(usage.sum()),
        "total_output_words": total_words,
        "tokens_per_word": (total_output / total_words) if total_words else None,
        "request_throughput": completed / dur if completed else 0.0,
        "request_goodput": (int(good.sum()) / dur) if sla.has_latency_targets and completed else None,
        "output_throughput": total_output / dur if completed else 0.0,
        "total_token_throughput": (total_input + total_output) / dur if completed else 0.0,
        "output_words_per_s": total_words / dur if completed else 0.0,
        "max_concurrent_requests": peak_concurrency(starts, starts + latency),
        "itl_values": int(store.itl.seen),
        "itl_sampled": bool(store.itl.sampled),
    }
    for name, values in (("ttft", ttft), ("tpot", tpots), ("itl", itls), ("e2el", latency)):
        result.update(_stats(name, values, percentiles))
    result.update(_stats("client_queue_time", queue, percentiles))
    for key in ("duration", "request_throughput", "output_throughput", "total_token_throughput", "output_words_per_s"):
        if isinstance(result[key], float) and math.isnan(result[key]):
            result[key] = None
    return result


def evaluate_sla(summary: dict[str, Any], sla: SlaTargets) -> dict[str, Any]:
    """The verdict: each target against its statistic. TPOT is checked on the median (p50) TPOT;
    TTFT and E2E on their p95. A run with no completed request fails."""
    checks: list[dict[str, Any]] = []

    def check(name: str, target: float | None, metric: str) -> None:
        if target is None:
            return
        measured = summary.get(metric)
        checks.append(
            {
                "name": name,
                "metric": metric,
                "target": target,
                "measured": measured,
                "passed": measured is not None and measured <= target,
            }
        )

    check("ttft_p95_ms", sla.ttft_p95_ms, "p95_ttft_ms")
    check("e2e_p95_ms", sla.e2e_p95_ms, "p95_e2el_ms")
    check("tpot_ms", sla.tpot_ms, "median_tpot_ms")
    check("max_error_rate", sla.max_error_rate, "error_rate")
    checks.append(
        {"name": "completed", "metric": "completed", "target": 1, "measured": summary["completed"],
         "passed": summary["completed"] >= 1}
    )  # fmt: skip
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
