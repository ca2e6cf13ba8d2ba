"""The server's Prometheus /metrics for `trdeploy bench`: parsing, scrapes around a run, and the deltas.

Names and labels as vLLM 0.25.0 exports them (vllm/v1/metrics/loggers.py in the 0.25.0 wheel): every metric
carries `model_name` and `engine`; counters are exposed with `_total`. `vllm:prefix_cache_queries` and
`vllm:prefix_cache_hits` count prompt tokens looked up in, and served from, the prefix cache.
`vllm:cache_config_info` is a gauge fixed at 1 whose labels are the engine's CacheConfig fields as strings
(CacheConfig.metrics_info: `num_gpu_blocks`, `block_size`, `kv_cache_size_tokens` (what vLLM logs as "GPU KV
cache size"), `gpu_memory_utilization`, `cache_dtype`, `enable_prefix_caching`, ...) plus `engine`, and no
`model_name`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

SERVER_COUNTERS = {
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
    "request_success": ("vllm:request_success_total",),
    "num_preemptions": ("vllm:num_preemptions_total",),
    "prefix_cache_queries": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
}
# A run whose prompt tokens came from the prefix cache more than this share is flagged: its TTFT is what
# prompts seen before get, lower than new prompts see.
PREFIX_CACHE_FLAG = 0.05
CACHE_CONFIG_INFO = "vllm:cache_config_info"
# The cache_config_info labels bench reports (and calibrate reads the KV cache capacity from).
CACHE_CONFIG_KEYS = ("num_gpu_blocks", "block_size", "kv_cache_size_tokens", "gpu_memory_utilization", "cache_dtype", "enable_prefix_caching")
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


def parse_info(text: str, name: str) -> dict[str, str] | None:
    """The labels of an info-style metric (a gauge fixed at 1), e.g. vllm:cache_config_info; None if absent."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            m = _SAMPLE_RE.match(line)
            if m:
                return {k: _unescape(v) for k, v in _LABEL_RE.findall(m.group(2) or "")}
    return None


def _unescape(value: str) -> str:
    """A label value as written, without the exposition format's escapes (\\\\, \\", \\n)."""
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def cache_config(text: str) -> dict[str, Any] | None:
    """vLLM's KV cache facts from /metrics text (typed), or None when the server exports no cache_config_info."""
    labels = parse_info(text, CACHE_CONFIG_INFO)
    if labels is None:
        return None
    out: dict[str, Any] = {}
    for key in CACHE_CONFIG_KEYS:
        raw = labels.get(key)
        if raw is None or raw in ("None", ""):
            out[key] = None
        elif key in ("num_gpu_blocks", "block_size", "kv_cache_size_tokens"):
            out[key] = int(float(raw)) if _is_number(raw) else None
        elif key == "gpu_memory_utilization":
            out[key] = float(raw) if _is_number(raw) else None
        elif key == "enable_prefix_caching":
            out[key] = raw.lower() == "true"
        else:
            out[key] = raw
    return out


def _is_number(raw: str) -> bool:
    try:
        return math.isfinite(float(raw))
    except ValueError:
        return False


def prefix_cache(counters: dict[str, float | None]) -> dict[str, Any]:
    """Prompt tokens looked up in and served from the prefix cache during a run, the hit rate, and the flag."""
    queries, hits = counters.get("prefix_cache_queries"), counters.get("prefix_cache_hits")
    rate = None if queries is None or hits is None or queries <= 0 else hits / queries
    return {"queries": queries, "hits": hits, "hit_rate": rate, "flagged": rate is not None and rate > PREFIX_CACHE_FLAG, "flag_above": PREFIX_CACHE_FLAG}


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
    return {"available": True, "counters": counters, "mean_ms": means, "peak": dict(peaks), "prefix_cache": prefix_cache(counters)}


@dataclass
class Scrape:
    """One read of /metrics: the vllm:* samples summed over labels, and vLLM's KV cache facts."""

    values: dict[str, float]
    cache_config: dict[str, Any] | None = field(default=None)


async def scrape(client: httpx.AsyncClient, base_url: str, headers: dict[str, str], model: str | None) -> Scrape | None:
    """The server's vllm:* samples, or None when it has no Prometheus endpoint (not an error)."""
    try:
        resp = await client.get(base_url + "/metrics", headers=headers, timeout=10.0)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    sample = parse_prometheus(resp.text, model)
    return Scrape(values=sample, cache_config=cache_config(resp.text)) if sample else None
