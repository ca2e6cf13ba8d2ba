"""Observability: the PromQL (one builder per signal), the scrape object, the SLA alerts and the Grafana
dashboard. Metric names, labels and buckets come from trdeploy.deploy.vllm_metrics; numbers from the plan.

Every selector is this deployment's own series: `namespace` and `job` are the target labels prometheus-operator
gives every series it scrapes (pkg/prometheus/promcfg.go: a ServiceMonitor's job is the Service's name, a
PodMonitor's "<namespace>/<PodMonitor name>"), so two deployments serving the same model name in one namespace
(the bf16 and the AWQ recipe) never read each other's load; `model_name` is vLLM's own label.
"""

from __future__ import annotations

from typing import Any

from trdeploy.deploy.container import promql_string
from trdeploy.deploy.k8s.common import labels, meta, selector, serving_selector
from trdeploy.deploy.k8s.knobs import JsonText, maximum, merged, text, truncate
from trdeploy.deploy.k8s.plan import Plan
from trdeploy.deploy.vllm_metrics import Histogram
from trdeploy.errors import TrdeployError


def scrape_job(p: Plan) -> str:
    """The `job` label prometheus-operator puts on every series of this deployment's scrape object."""
    return f"{p.namespace}/{p.name}" if p.opts.monitor == "podmonitor" else p.name


def sel(p: Plan, *, model: bool = True, regex: dict[str, str] | None = None, **extra: str) -> str:
    """The one label-matcher builder: this deployment's series (scrape target labels) of its served model (`model=False`:
    metrics without vLLM's model label); `regex` adds =~ matchers. Every value is a quoted PromQL string (a served
    name cannot close the matcher and add an expression of its own)."""
    matchers = {"namespace": p.namespace, "job": scrape_job(p)}
    if model:
        matchers[p.m.model_label] = p.served_model_name
    matchers.update(extra)
    parts = [f"{k}={promql_string(v)}" for k, v in matchers.items()] + [f"{k}=~{promql_string(v)}" for k, v in (regex or {}).items()]
    return "{" + ",".join(parts) + "}"


def in_flight_total(p: Plan) -> str:
    """Requests running + waiting over this deployment's replicas. No `or vector(0)`: with no series (no scrape)
    the result is empty, and KEDA (ignoreNullValues "false") takes that as an error and holds its fallback."""
    s = sel(p)
    return f"sum({p.m.num_requests_running}{s}) + sum({p.m.num_requests_waiting}{s})"


def hpa_metric(p: Plan) -> str:
    """The custom metric (prometheus-adapter) of the HPA alternative: one name per deployment, whose rule reads
    only this deployment's series."""
    return f"{p.name}-vllm-requests-in-flight"


def quantile(p: Plan, h: Histogram, q: float, window: str = "5m") -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({h.bucket}{sel(p)}[{window}])))"


def error_ratio(p: Plan, window: str = "5m") -> str:
    """5xx share of /v1 requests (prometheus-fastapi-instrumentator's counter has no model_name label)."""
    v1 = {"handler": "/v1/.*"}
    return (
        f'sum(rate({p.m.http_requests}{sel(p, model=False, regex=v1, status="5xx")}[{window}])) / '
        f"clamp_min(sum(rate({p.m.http_requests}{sel(p, model=False, regex=v1)}[{window}])), 1e-9)"
    )


def monitoring_meta(p: Plan) -> dict[str, Any]:
    """Metadata of the objects a Prometheus selects by label (kube-prometheus-stack: `release: <its release>`)."""
    m = meta(p)
    m["labels"] = merged(m["labels"], p.monitoring_labels)
    return m


def monitor(p: Plan) -> dict[str, Any]:
    endpoint = {"port": "http", "path": p.m.metrics_path, "interval": "15s", "scrapeTimeout": "10s"}
    if p.opts.monitor == "podmonitor":
        return {
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": monitoring_meta(p),
            "spec": {"selector": {"matchLabels": serving_selector(p)}, "namespaceSelector": {"matchNames": [p.namespace]},
                     "podMetricsEndpoints": [endpoint]},
        }
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": monitoring_meta(p),
        "spec": {"selector": {"matchLabels": selector(p)}, "namespaceSelector": {"matchNames": [p.namespace]},
                 "endpoints": [endpoint]},
    }


def _bucket_note(h: Histogram, threshold_s: float, what: str, warnings: list[str]) -> str:
    around = h.bucket_around(threshold_s)
    if around is None:
        return f"{threshold_s:g} s is a bucket boundary of {h.name}: the quantile is exact at the threshold."
    lo, hi = around
    if lo is None or hi is None:
        # Below the first bucket histogram_quantile only interpolates from 0; above the last it returns the
        # last bound: the alert could never say whether the SLA holds.
        edge = f"below {h.name}'s smallest bucket ({h.buckets[0]:g} s)" if lo is None else f"above its largest finite bucket ({h.buckets[-1]:g} s)"
        raise TrdeployError(
            f"The SLA's {what} threshold {threshold_s:g} s is {edge}: vLLM's histogram cannot resolve it, so no alert could check it.",
            hint=f"Re-run `trdeploy tune` with an SLA between {h.buckets[0]:g} s and {h.buckets[-1]:g} s for {what}.",
        )
    note = (
        f"{what} threshold {threshold_s:g} s falls between {h.name} buckets {lo:g} s and {hi:g} s: "
        "histogram_quantile interpolates linearly there, so the alert fires on an estimate"
    )
    warnings.append(note + ".")
    return note + "."


def rules(p: Plan, warnings: list[str]) -> tuple[dict[str, Any], list[str]]:
    m = p.m
    out: list[dict[str, Any]] = []

    def alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str) -> None:
        out.append({
            "alert": name, "expr": expr, "for": for_,
            "labels": {"severity": severity, "service": p.name},
            "annotations": {"summary": summary, "description": description},
        })

    if p.sla_ttft_p95_s is not None:
        t = p.sla_ttft_p95_s
        note = _bucket_note(m.ttft, t, "TTFT p95", warnings)
        alert("VllmTTFTp95AboveSLA", f"{quantile(p, m.ttft, 0.95)} > {t:g}", "10m", "warning",
              f"{p.name}: p95 time to first token above the SLA ({t:g} s)", note)
    if p.sla_e2e_p95_s is not None:
        t = p.sla_e2e_p95_s
        note = _bucket_note(m.e2e, t, "end-to-end p95", warnings)
        alert("VllmE2Ep95AboveSLA", f"{quantile(p, m.e2e, 0.95)} > {t:g}", "10m", "warning",
              f"{p.name}: p95 end-to-end latency above the SLA ({t:g} s)", note)
    if p.sla_tpot_s is not None:
        t = p.sla_tpot_s
        note = _bucket_note(m.tpot, t, "TPOT median", warnings)
        # The SLA's TPOT is the median per request (as `trdeploy bench` measures it).
        alert("VllmTPOTAboveSLA", f"{quantile(p, m.tpot, 0.5)} > {t:g}", "10m", "warning",
              f"{p.name}: median time per output token above the SLA ({t:g} s)", note)
    alert("VllmErrorRateHigh", f"{error_ratio(p)} > 0.01", "5m", "critical",
          f"{p.name}: more than 1% of /v1 requests fail with 5xx", "Server errors from vLLM's OpenAI API (prometheus-fastapi-instrumentator counter).")
    alert("VllmKVCacheNearlyFull", f"max({m.kv_cache_usage}{sel(p)}) > 0.9", "10m", "warning",
          f"{p.name}: KV cache above 90% on a replica", f"{m.kv_cache_usage} is a 0-1 fraction; near 1 vLLM preempts requests and latency climbs.")
    queue = maximum(1, p.target)
    alert("VllmQueueBuilding", text("sum({}{}) > {}", m.num_requests_waiting, sel(p), queue), "5m", "warning",
          text("{}: more than {} requests waiting", p.name, queue),
          "A replica's worth of requests queue: autoscaling at its maximum or too slow.")
    alert("VllmMetricsAbsent", f"absent({m.num_requests_running}{sel(p)})", "10m", "critical",
          f"{p.name}: no vLLM metrics scraped",
          "Prometheus has no series of this deployment: the scrape object is not selected (kube-prometheus-stack selects "
          "`release: <its release>`; render-k8s --monitoring-label) or the pods are down. The autoscaler holds its fallback replicas.")
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": monitoring_meta(p),
        "spec": {"groups": [{"name": f"{p.name}.sla", "rules": list(out)}]},
    }
    return obj, [r["expr"] for r in out]


def dashboard(p: Plan) -> tuple[dict[str, Any], list[str]]:
    m = p.m
    s = sel(p)
    panels_spec: list[tuple[str, str, list[tuple[str, str]], float | None]] = [
        ("Time to first token (s)", "s", [(quantile(p, m.ttft, 0.5), "p50"), (quantile(p, m.ttft, 0.95), "p95")], p.sla_ttft_p95_s),
        ("Time per output token, per request (s)", "s", [(quantile(p, m.tpot, 0.5), "p50"), (quantile(p, m.tpot, 0.95), "p95")], p.sla_tpot_s),
        ("End-to-end latency (s)", "s", [(quantile(p, m.e2e, 0.5), "p50"), (quantile(p, m.e2e, 0.95), "p95")], p.sla_e2e_p95_s),
        ("Requests running / waiting", "short", [(f"sum by (pod) ({m.num_requests_running}{s})", "running {{pod}}"),
                                                 (f"sum by (pod) ({m.num_requests_waiting}{s})", "waiting {{pod}}")], p.target),
        ("KV cache usage (0-1)", "percentunit", [(f"max by (pod) ({m.kv_cache_usage}{s})", "{{pod}}")], 0.9),
        ("Tokens per second", "short", [(f"sum(rate({m.prompt_tokens}{s}[5m]))", "prompt"),
                                         (f"sum(rate({m.generation_tokens}{s}[5m]))", "generation")], None),
        ("5xx ratio on /v1", "percentunit", [(error_ratio(p), "errors")], 0.01),
        ("Preemptions per second", "short", [(f"sum(rate({m.num_preemptions}{s}[5m]))", "preemptions")], None),
    ]
    panels = []
    exprs = []
    for i, (title, unit, targets, threshold) in enumerate(panels_spec):
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
        if threshold is not None:
            steps.append({"color": "red", "value": threshold})
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                                         "custom": {"thresholdsStyle": {"mode": "line"}}}, "overrides": []},
            "targets": [{"refId": chr(65 + j), "expr": e, "legendFormat": legend} for j, (e, legend) in enumerate(targets)],
        })
        exprs.extend(e for e, _ in targets)
    board = {
        "title": f"vLLM {p.name}", "uid": truncate(text("trdeploy-{}", p.name), 40), "schemaVersion": 39, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "tags": ["vllm", "trdeploy"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
        "panels": panels,
    }
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**meta(p, f"{p.name}-dashboard"), "labels": {**labels(p), "grafana_dashboard": "1"}},
        "data": {f"{p.name}.json": JsonText(board)},
    }
    return cm, exprs


def hpa_adapter_rule(p: Plan) -> dict[str, Any]:
    """The prometheus-adapter rule that gives the HPA alternative its per-pod metric, from this deployment's series
    only (the same target labels as the KEDA query)."""
    m = p.m
    own = sel(p)[1:-1]
    return {
        "seriesQuery": f"{m.num_requests_running}{{{own}}}",
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"as": hpa_metric(p)},
        "metricsQuery": (
            f"sum by (<<.GroupBy>>) ({m.num_requests_running}{{<<.LabelMatchers>>,{own}}}) + "
            f"sum by (<<.GroupBy>>) ({m.num_requests_waiting}{{<<.LabelMatchers>>,{own}}})"
        ),
    }
