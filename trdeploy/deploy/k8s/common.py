"""Labels, selectors and metadata every object of one rendering shares."""

from __future__ import annotations

from typing import Any

from trdeploy.deploy.k8s.plan import Plan


def labels(p: Plan) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": p.name,
        "app.kubernetes.io/component": "server",
        "app.kubernetes.io/part-of": "trdeploy",
        "app.kubernetes.io/managed-by": "trdeploy",
    }


def selector(p: Plan) -> dict[str, str]:
    return {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": p.name}


def serving_selector(p: Plan) -> dict[str, str]:
    """The pods that answer requests: every pod of a Deployment, the leaders of a LeaderWorkerSet."""
    return {**selector(p), "trdeploy.io/role": "leader"} if p.nodes > 1 else selector(p)


def meta(p: Plan, name: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name or p.name, "namespace": p.namespace, "labels": labels(p), **extra}
