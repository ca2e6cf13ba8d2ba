"""The server's Prometheus /metrics for `trdeploy bench`: parsing, scrapes around a run, and the deltas."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import httpx

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

SERVER_COUNTERS = {
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
    "request_success": ("vllm:request_success_total",),
    "num_preemptions": ("vllm:num_preemptions_total",),
}
SERVER_HISTOGRAMS = {
    "ttft": ("vllm:time_to_first_token_seconds",),
    "e2el": ("vllm:e2e_request_latency_seconds",),
    "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "queue": ("vllm:request_queue_time_seconds",),
    "prefill": ("vllm:request_prefill_time_seconds",),
    "decode": ("vllm:request_decode_time_seconds",),
}
SERVER_GAUGES = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}


def parse_prometheus(text: str, model: str | None = None) -> dict[str, float]:
    """Sum each vllm:* sample over its labels. When samples carry a model_name label, only those of
    `model` count (if any do)."""
    by_model: dict[str, float] = {}
    everything: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#" or not line.startswith("vllm:"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        if math.isnan(value):
            continue
        name = m.group(1)
        everything[name] = everything.get(name, 0.0) + value
        labels = dict(_LABEL_RE.findall(m.group(2) or ""))
        if model is not None and labels.get("model_name") == model:
            by_model[name] = by_model.get(name, 0.0) + value
    return by_model or everything


def _first(sample: dict[str, float], names: Sequence[str], suffix: str = "") -> float | None:
    for n in names:
        if n + suffix in sample:
            return sample[n + suffix]
    return None


def server_metrics_delta(before: dict[str, float], after: dict[str, float], peaks: dict[str, float]) -> dict[str, Any]:
    """What the server counted during a run: counter deltas, histogram means (ms), sampled gauge peaks."""
    counters: dict[str, float | None] = {}
    for key, names in SERVER_COUNTERS.items():
        a, b = _first(after, names), _first(before, names)
        counters[key] = None if a is None or b is None else a - b
    means: dict[str, float | None] = {}
    for key, names in SERVER_HISTOGRAMS.items():
        sa, sb = _first(after, names, "_sum"), _first(before, names, "_sum")
        ca, cb = _first(after, names, "_count"), _first(before, names, "_count")
        if None in (sa, sb, ca, cb) or ca - cb <= 0:  # type: ignore[operator]
            means[key] = None
        else:
            means[key] = (sa - sb) / (ca - cb) * 1000.0  # type: ignore[operator]
    return {"available": True, "counters": counters, "mean_ms": means, "peak": dict(peaks)}


async def scrape(client: httpx.AsyncClient, base_url: str, headers: dict[str, str], model: str | None) -> dict[str, float] | None:
    """The server's vllm:* samples, or None when it has no Prometheus endpoint (not an error)."""
    try:
        resp = await client.get(base_url + "/metrics", headers=headers, timeout=10.0)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    sample = parse_prometheus(resp.text, model)
    return sample or None
