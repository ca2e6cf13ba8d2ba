"""The one table of vLLM's Prometheus names, labels and histogram buckets, per vLLM version.

Everything `render-k8s` writes that names a metric (autoscaler queries, alerts, the dashboard)
reads it from here. The 0.25 entry follows vllm/v1/metrics/loggers.py (PrometheusStatLogger):
every vLLM series carries the labels `model_name` (the served model name) and `engine`;
`vllm:kv_cache_usage_perc` (a 0-1 fraction) replaced `vllm:gpu_cache_usage_perc`; the per-request
TPOT is `vllm:request_time_per_output_token_seconds` (`vllm:inter_token_latency_seconds` is the
per-token ITL). The HTTP counter comes from prometheus-fastapi-instrumentator, which vLLM's API
server mounts on /metrics (`status` is grouped: 2xx, 4xx, 5xx). With `--api-key`, vLLM guards only
the /v1 routes: /health and /metrics stay open, so probes and scrapes need no key.
"""

from __future__ import annotations

from dataclasses import dataclass

from trdeploy.errors import TrdeployError


@dataclass(frozen=True)
class Histogram:
    name: str  # without the _bucket/_sum/_count suffix
    buckets: tuple[float, ...]  # upper bounds, seconds (+Inf implied)

    @property
    def bucket(self) -> str:
        return self.name + "_bucket"

    def bucket_around(self, value_s: float) -> tuple[float | None, float | None] | None:
        """None when `value_s` is a bucket boundary; else the boundaries on either side."""
        if any(abs(b - value_s) <= 1e-9 * max(1.0, value_s) for b in self.buckets):
            return None
        lower = max((b for b in self.buckets if b < value_s), default=None)
        upper = min((b for b in self.buckets if b > value_s), default=None)
        return lower, upper


@dataclass(frozen=True)
class VllmMetrics:
    vllm_version: str  # major.minor this table was read from
    source: str
    model_label: str
    num_requests_running: str
    num_requests_waiting: str
    kv_cache_usage: str  # 0-1
    num_preemptions: str  # counter, exposed with _total
    request_success: str  # counter, exposed with _total, label finished_reason
    prompt_tokens: str  # counter, exposed with _total
    generation_tokens: str  # counter, exposed with _total
    http_requests: str  # counter from prometheus-fastapi-instrumentator (labels handler, method, status)
    ttft: Histogram
    tpot: Histogram  # per request
    itl: Histogram  # per token
    e2e: Histogram
    queue_time: Histogram
    metrics_path: str = "/metrics"
    # Paths vLLM answers without the API key when started with --api-key (/health: the container contract's
    # HEALTH_PATH, trdeploy.deploy.container).
    open_paths: tuple[str, ...] = ("/health", "/metrics")


_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0)
_REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                            60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)

_TABLES: dict[str, VllmMetrics] = {
    "0.25": VllmMetrics(
        vllm_version="0.25",
        source="vllm-project/vllm vllm/v1/metrics/loggers.py (PrometheusStatLogger)",
        model_label="model_name",
        num_requests_running="vllm:num_requests_running",
        num_requests_waiting="vllm:num_requests_waiting",
        kv_cache_usage="vllm:kv_cache_usage_perc",
        num_preemptions="vllm:num_preemptions_total",
        request_success="vllm:request_success_total",
        prompt_tokens="vllm:prompt_tokens_total",
        generation_tokens="vllm:generation_tokens_total",
        http_requests="http_requests_total",
        ttft=Histogram("vllm:time_to_first_token_seconds", _TTFT_BUCKETS),
        tpot=Histogram("vllm:request_time_per_output_token_seconds", _TPOT_BUCKETS),
        itl=Histogram("vllm:inter_token_latency_seconds", _TPOT_BUCKETS),
        e2e=Histogram("vllm:e2e_request_latency_seconds", _REQUEST_LATENCY_BUCKETS),
        queue_time=Histogram("vllm:request_queue_time_seconds", _REQUEST_LATENCY_BUCKETS),
    ),
}


def metrics_for(vllm_version: str) -> VllmMetrics:
    """The table for a profile's vLLM version (matched on major.minor)."""
    key = ".".join(vllm_version.strip().lstrip("v").split(".")[:2])
    table = _TABLES.get(key)
    if table is None:
        known = ", ".join(sorted(_TABLES))
        raise TrdeployError(
            f"No vLLM metric table for vLLM {vllm_version} (known: {known}).",
            hint="Tune the profile for a known vLLM version, or add its names and buckets to trdeploy/deploy/vllm_metrics.py.",
        )
    return table
