"""Kubernetes manifests for a DeploymentProfile: pure functions from the profile to plain dicts.

Reads the profile only (never re-derives what `tune` decided). Metric names, labels and buckets come
from `vllm_metrics`; how many GPUs a node of each tier has is the one table kept here.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal

import yaml

from trdeploy import hub
from trdeploy.args import Args, arg
from trdeploy.deploy.vllm_metrics import Histogram, VllmMetrics, metrics_for
from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError

GiB = 1024**3

# GPUs in the largest common node of each tier (HGX/DGX boards and the cloud shapes built on them:
# p5/a3 for H100, p4d for A100, g6e for L40S, g6/g2 for L4, g5.48xlarge for A10G, 8-way 4090 servers).
NODE_GPUS: dict[str, int] = {
    "h100": 8, "h200": 8, "a100-80gb": 8, "a100-40gb": 8, "l40s": 8, "l4": 8, "a10g": 8, "rtx4090": 8,
}

# Storage bandwidth assumed for the weights when the profile carries no start-up prediction:
# a network-attached ReadWriteMany volume (NFS/Filestore/EFS class), conservatively.
FALLBACK_READ_GB_PER_S = 0.5
FALLBACK_ENGINE_INIT_S = 180.0  # process start, profile run, KV allocation, CUDA graph capture
FALLBACK_COMPILE_S = 240.0  # torch.compile on an empty cache
STARTUP_MARGIN = 1.5  # budget = predicted cold start x 1.5 + 60 s
STARTUP_MARGIN_S = 60.0
PROBE_PERIOD_S = 10
ENDPOINT_PROPAGATION_S = 10  # time for kube-proxy/ingress to drop a terminating pod
UID = 10001

SECRET_API_KEY_KEY = "api-key"
SECRET_HF_TOKEN_KEY = "token"
MODEL_MOUNT = "/models"
CACHE_MOUNT = "/cache"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class RenderOptions(Args):
    """The knobs operators turn; each overrides what is derived from the profile (None = derived)."""

    command: ClassVar[str] = "render-k8s"

    name: str | None = arg(None, help="Object name (at most 40 of a-z, 0-9, '-').", default_note="the profile's name")
    namespace: str = arg("llm", help="Namespace for every object.")
    image: str | None = arg(None, help="Serving image (e.g. what `trdeploy build` tagged).",
                            default_note="vllm/vllm-openai at the profile's vLLM, in the CUDA build for the tier's driver")
    replicas_min: int | None = arg(None, ge=1, help="Fewest replicas (also the PDB floor).", default_note="planned replicas / peak factor")
    replicas_max: int | None = arg(None, ge=1, help="Most replicas.", default_note="the profile's planned replicas at peak")
    target_concurrency: int | None = arg(None, ge=1, help="Requests in flight (running + waiting) per replica to scale at.",
                                         default_note="where the profile's SLA holds")
    gpus_per_node: int | None = arg(None, ge=1, help="GPUs in one node of the tier.", default_note="8 for the known tiers")
    multi_node: bool = arg(False, help="Allow a replica across nodes (LeaderWorkerSet, vLLM over Ray).")
    runtime_class: str | None = arg(None, help="runtimeClassName for the pods (e.g. nvidia).")
    model_source: Literal["pvc", "download"] = arg(
        "pvc", help="pvc: a ReadWriteMany cache volume shared by the replicas; download: each pod fetches into an emptyDir.")
    storage_class: str | None = arg(None, help="storageClassName of the cache PVC (one that offers ReadWriteMany).")
    cache_size_gi: int | None = arg(None, ge=1, help="Cache volume size in GiB.", default_note="1.25 x the weights + 20")
    api_key: bool = arg(True, flag="--api-key/--no-api-key", help="Require an API key on /v1 (VLLM_API_KEY from a Secret).")
    api_key_secret: str | None = arg(None, help="Secret holding key 'api-key'.", default_note="NAME-api-key")
    hf_token_secret: str | None = arg(None, help="Secret holding key 'token' (optional, for gated models).", default_note="NAME-hf-token")
    autoscaler: Literal["keda", "hpa", "none"] = arg("keda", help="keda (ScaledObject on Prometheus), hpa (custom metric via prometheus-adapter) or none.")
    monitor: Literal["servicemonitor", "podmonitor"] = arg("servicemonitor", help="prometheus-operator scrape object.")
    prometheus_url: str = arg("http://prometheus-operated.monitoring.svc:9090", help="Prometheus the KEDA trigger queries.")
    monitoring_namespace: str = arg("monitoring", help="Namespace allowed to scrape (NetworkPolicy).")
    port: int = arg(8000, ge=1, le=65535, help="vLLM's HTTP port.")


@dataclass
class Rendered:
    """The objects, grouped by the file each goes to (kustomization.yaml lists the files in order)."""

    files: dict[str, list[dict[str, Any]]]
    kustomization: dict[str, Any]
    facts: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    promql: list[str] = field(default_factory=list)  # every PromQL expression written anywhere

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [obj for name in self.kustomization["resources"] for obj in self.files[name]]


@dataclass(frozen=True)
class _Plan:
    name: str
    namespace: str
    image: str
    gpus: int
    nodes: int  # pods per replica (LeaderWorkerSet group size), 1 for a Deployment
    gpus_per_pod: int
    served_model_name: str
    replicas_min: int
    replicas_max: int
    target: int
    target_basis: str
    startup_s: float
    startup_basis: str
    startup_budget_s: int
    scale_up_window_s: int
    drain_s: int
    grace_s: int
    shm_gi: int
    cpu: int
    memory_gi: int
    cache_gi: int
    m: VllmMetrics


# ---------------------------------------------------------------------------------------------
# Derivations (each fact decided once)


def _name(profile: DeploymentProfile, opts: RenderOptions) -> str:
    raw = opts.name or profile.name
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[:40].rstrip("-")
    if not name or not _DNS_LABEL.match(name):
        raise TrdeployError(f"Cannot make a Kubernetes name from {raw!r}.", hint="Pass --name with lowercase letters, digits and dashes, starting with a letter.")
    if opts.name and name != opts.name:
        raise TrdeployError(f"--name {opts.name!r} is not a valid Kubernetes name (at most 40 of a-z, 0-9, '-', starting with a letter).", hint=f"Use e.g. --name {name}.")
    return name


def _startup(profile: DeploymentProfile) -> tuple[float, float, str]:
    """(cold seconds, warm seconds, basis): the profile's prediction, else a stated conservative default."""
    st = profile.prediction.startup
    if st is not None:
        return st.cold_s, st.warm_s, f"profile prediction.startup ({st.basis or 'tune'})"
    weights_gb = profile.prediction.weights_gib * profile.gpu.count * GiB / 1e9
    load = weights_gb / FALLBACK_READ_GB_PER_S
    warm = load + FALLBACK_ENGINE_INIT_S
    cold = warm + FALLBACK_COMPILE_S
    basis = (
        f"conservative default (profile has no prediction.startup): {weights_gb:.1f} GB of weights at "
        f"{FALLBACK_READ_GB_PER_S} GB/s + {FALLBACK_ENGINE_INIT_S:.0f} s engine init + {FALLBACK_COMPILE_S:.0f} s torch.compile"
    )
    return cold, warm, basis


def _target(profile: DeploymentProfile, opts: RenderOptions) -> tuple[int, str]:
    """Requests in flight per replica (running + waiting) at which the SLA still holds."""
    if opts.target_concurrency:
        return opts.target_concurrency, "--target-concurrency"
    pred = profile.prediction
    plan = pred.capacity  # tune's capacity plan (profiles written before it have none)
    if plan is not None:
        return int(plan.per_replica_concurrency), f"profile prediction.capacity.per_replica_concurrency ({plan.basis or 'tune'})"
    uncapped = pred.sla_capacity_per_replica
    if uncapped is not None and uncapped >= 1:
        return uncapped, "profile prediction.sla_capacity_per_replica (highest per-replica concurrency meeting the SLA)"
    if pred.sla_max_concurrency:
        return int(pred.sla_max_concurrency), "profile prediction.sla_max_concurrency (highest per-replica concurrency meeting the SLA, capped at the planned load)"
    fallback = max(1, profile.engine_args.max_num_seqs // 2)
    return fallback, f"conservative default (the profile predicts no SLA capacity): half of max_num_seqs ({profile.engine_args.max_num_seqs})"


def _plan(profile: DeploymentProfile, opts: RenderOptions) -> _Plan:
    tier = profile.gpu.tier
    if not profile.gpu.node_labels:
        raise TrdeployError(
            f"GPU tier {tier!r} has no nvidia.com/gpu.product node labels in the profile.",
            hint="Re-run `trdeploy tune --gpu TIER` with a known tier (h100, h200, a100-80gb, a100-40gb, l40s, l4, a10g, rtx4090).",
        )
    per_node = opts.gpus_per_node or NODE_GPUS.get(tier)
    if per_node is None:
        raise TrdeployError(
            f"Unknown GPU tier {tier!r}: how many GPUs its nodes have is not known.",
            hint=f"Pass --gpus-per-node N, or tune for a known tier ({', '.join(NODE_GPUS)}).",
        )
    sla = profile.sla
    if sla.ttft_p95_ms is None and sla.e2e_p95_ms is None and sla.tpot_ms is None:
        raise TrdeployError(
            f"Profile {profile.name} has no SLA: the autoscaling target and the alerts derive from it.",
            hint="Re-run `trdeploy tune` with --sla-ttft-p95-ms, --sla-e2e-p95-ms or --sla-tpot-ms.",
        )
    gpus = profile.gpu.count
    if gpus > per_node:
        if not opts.multi_node:
            raise TrdeployError(
                f"{profile.name} needs {gpus} GPUs per replica but a {tier} node has {per_node}.",
                hint="Pass --multi-node for a LeaderWorkerSet across nodes, or tune for fewer GPUs (--quantization awq, a larger GPU tier).",
            )
        nodes = math.ceil(gpus / per_node)
        if gpus % nodes:
            raise TrdeployError(f"{gpus} GPUs do not split evenly over {nodes} nodes of {per_node}.", hint="Tune for a GPU count that is a multiple of the node size.")
    else:
        nodes = 1
    gpus_per_pod = gpus // nodes
    m = metrics_for(profile.vllm_version)
    name = _name(profile, opts)

    target, target_basis = _target(profile, opts)
    plan = profile.prediction.capacity
    if plan is not None:
        planned, floor = plan.replicas_max, plan.replicas_min
    else:  # older profiles: the peak plan, and the average hour for the floor
        planned = max(1, profile.prediction.replicas)
        floor = max(1, math.ceil(planned / profile.workload.peak_factor))
    replicas_min = opts.replicas_min or floor
    replicas_max = opts.replicas_max or max(planned, replicas_min)
    if replicas_max < replicas_min:
        raise TrdeployError(f"--replicas-max {replicas_max} is below --replicas-min {replicas_min}.", hint="Raise --replicas-max or lower --replicas-min.")

    cold, warm, startup_basis = _startup(profile)
    budget = int(math.ceil((cold * STARTUP_MARGIN + STARTUP_MARGIN_S) / PROBE_PERIOD_S) * PROBE_PERIOD_S)
    # A new replica starts warm when the compile cache lives on the shared volume, cold otherwise.
    new_replica_s = warm if opts.model_source == "pvc" else cold
    scale_up_window = int(min(3600, max(30, round(new_replica_s))))

    # Drain: in-flight requests finish before SIGTERM; the longest typical one is the p95 end-to-end.
    drain = int(max(30, math.ceil(2 * profile.prediction.e2e_ms / 1000) + ENDPOINT_PROPAGATION_S))
    grace = drain + 30

    weights_total_gi = profile.prediction.weights_gib * gpus
    shm_gi = 2 if gpus_per_pod == 1 else 4 * gpus_per_pod  # NCCL and vLLM's shared-memory broadcast
    cpu = 4 + 2 * gpus_per_pod
    # Host memory: the rank's weights pass through page cache/pinned buffers once, plus the process,
    # tokenizer workers and the /dev/shm emptyDir (it counts against the memory limit).
    memory_gi = math.ceil(weights_total_gi / nodes * 1.2 + 8 + 2 * gpus_per_pod + shm_gi)
    cache_gi = opts.cache_size_gi or math.ceil(weights_total_gi * 1.25 + 20)

    served = profile.engine_args.served_model_name or profile.model.id
    image = opts.image or _default_image(profile)
    return _Plan(
        name=name, namespace=opts.namespace, image=image, gpus=gpus, nodes=nodes, gpus_per_pod=gpus_per_pod,
        served_model_name=served, replicas_min=replicas_min, replicas_max=replicas_max, target=target,
        target_basis=target_basis, startup_s=cold, startup_basis=startup_basis, startup_budget_s=budget,
        scale_up_window_s=scale_up_window, drain_s=drain, grace_s=grace, shm_gi=shm_gi, cpu=cpu,
        memory_gi=memory_gi, cache_gi=cache_gi, m=m,
    )


def _default_image(profile: DeploymentProfile) -> str:
    """vllm/vllm-openai at the profile's vLLM version, in the CUDA build `trdeploy build` would base on
    for the tier's driver (one place decides that); the plain release tag when no driver is known."""
    from trdeploy.deploy.image import BuildOptions, choose_base

    try:
        return choose_base(profile, BuildOptions())[0]
    except TrdeployError:
        return f"vllm/vllm-openai:v{profile.vllm_version.lstrip('v')}"


# ---------------------------------------------------------------------------------------------
# PromQL (one builder per signal; alerts, autoscaler and dashboard share them)


def _sel(p: _Plan, **extra: str) -> str:
    labels = {"namespace": p.namespace, p.m.model_label: p.served_model_name, **extra}
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _in_flight_total(p: _Plan) -> str:
    s = _sel(p)
    return f"(sum({p.m.num_requests_running}{s}) + sum({p.m.num_requests_waiting}{s})) or vector(0)"


def _quantile(p: _Plan, h: Histogram, q: float, window: str = "5m") -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({h.bucket}{_sel(p)}[{window}])))"


def _error_ratio(p: _Plan, window: str = "5m") -> str:
    sel = f'namespace="{p.namespace}",pod=~"{p.name}-.*",handler=~"/v1/.*"'
    return (
        f'sum(rate({p.m.http_requests}{{{sel},status="5xx"}}[{window}])) / '
        f"clamp_min(sum(rate({p.m.http_requests}{{{sel}}}[{window}])), 1e-9)"
    )


# ---------------------------------------------------------------------------------------------
# Objects


def _labels(p: _Plan) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": p.name,
        "app.kubernetes.io/component": "server",
        "app.kubernetes.io/part-of": "trdeploy",
        "app.kubernetes.io/managed-by": "trdeploy",
    }


def _selector(p: _Plan) -> dict[str, str]:
    return {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": p.name}


def _meta(p: _Plan, name: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name or p.name, "namespace": p.namespace, "labels": _labels(p), **extra}


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _serve_args(profile: DeploymentProfile, p: _Plan, opts: RenderOptions) -> list[str]:
    # The metrics' model_name label and the name clients send: the model's id, not a local path
    # (as `trdeploy build` names it).
    engine = profile.engine_args.model_copy(update={"model": model_argument(profile), "served_model_name": p.served_model_name})
    args = [engine.model, *engine.to_cli_args()]
    args += ["--host", "0.0.0.0", "--port", str(opts.port)]
    if p.nodes > 1:
        args += ["--distributed-executor-backend", "ray"]
    return args


def _env(p: _Plan, opts: RenderOptions) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp/home"},
        {"name": "HF_HOME", "value": f"{MODEL_MOUNT}/hf"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},  # the init container fetched the weights
        {"name": "VLLM_CACHE_ROOT", "value": f"{CACHE_MOUNT}/vllm"},  # torch.compile cache: warm restarts
        {"name": "TRITON_CACHE_DIR", "value": f"{CACHE_MOUNT}/triton"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": f"{CACHE_MOUNT}/inductor"},
        {"name": "FLASHINFER_WORKSPACE_BASE", "value": f"{CACHE_MOUNT}/flashinfer"},
        {"name": "XDG_CACHE_HOME", "value": f"{CACHE_MOUNT}/xdg"},
        # torch calls getpass.getuser(), which fails for a UID without a passwd entry unless these are set.
        {"name": "USER", "value": "vllm"},
        {"name": "LOGNAME", "value": "vllm"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
    ]
    if opts.api_key:
        env.append({
            "name": "VLLM_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": opts.api_key_secret or f"{p.name}-api-key", "key": SECRET_API_KEY_KEY}},
        })
    return env


def _drain_script(p: _Plan, opts: RenderOptions) -> str:
    """preStop: wait for endpoint removal, then until no request is running or waiting (or the budget ends)."""
    names = (p.m.num_requests_running, p.m.num_requests_waiting)
    return (
        "import time,urllib.request\n"
        f"time.sleep({ENDPOINT_PROPAGATION_S})\n"
        f"end=time.time()+{p.drain_s - ENDPOINT_PROPAGATION_S}\n"
        "while time.time()<end:\n"
        "    try:\n"
        f"        t=urllib.request.urlopen('http://127.0.0.1:{opts.port}{p.m.metrics_path}',timeout=5).read().decode()\n"
        f"        n=sum(float(l.rsplit(' ',1)[1]) for l in t.splitlines() if l.startswith({names!r}))\n"
        "    except Exception:\n"
        "        break\n"
        "    if n==0:\n"
        "        break\n"
        "    time.sleep(2)\n"
    )


def _probes(p: _Plan, opts: RenderOptions) -> dict[str, Any]:
    get = {"path": p.m.health_path, "port": "http"}
    return {
        "startupProbe": {
            "httpGet": get, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 5,
            "failureThreshold": p.startup_budget_s // PROBE_PERIOD_S,
        },
        "readinessProbe": {"httpGet": get, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": get, "periodSeconds": 10, "timeoutSeconds": 10, "failureThreshold": 6},
    }


def _resources(p: _Plan) -> dict[str, Any]:
    amounts = {"cpu": str(p.cpu), "memory": f"{p.memory_gi}Gi", "nvidia.com/gpu": str(p.gpus_per_pod)}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _volumes(p: _Plan, opts: RenderOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{p.shm_gi}Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "8Gi"}},
    ]
    mounts = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "model-cache", "mountPath": MODEL_MOUNT},
    ]
    if opts.model_source == "pvc":
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": f"{p.name}-cache"}})
        mounts.append({"name": "model-cache", "mountPath": CACHE_MOUNT, "subPath": "compile-cache"})
    else:
        volumes.append({"name": "model-cache", "emptyDir": {"sizeLimit": f"{p.cache_gi}Gi"}})
        # Survives container restarts (warm), not rescheduling.
        volumes.append({"name": "compile-cache", "emptyDir": {"sizeLimit": "20Gi"}})
        mounts.append({"name": "compile-cache", "mountPath": CACHE_MOUNT})
    return volumes, mounts


def _fetch_container(profile: DeploymentProfile, p: _Plan, opts: RenderOptions, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    script = (
        "from huggingface_hub import snapshot_download\n"
        f"snapshot_download({profile.engine_args.model!r}, "
        "allow_patterns=['*.json', '*.safetensors', '*.model', '*.txt', '*.jinja'])\n"
    )
    env = [
        {"name": "HOME", "value": "/tmp/home"},
        {"name": "HF_HOME", "value": f"{MODEL_MOUNT}/hf"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": opts.hf_token_secret or f"{p.name}-hf-token", "key": SECRET_HF_TOKEN_KEY, "optional": True}}},
    ]
    return {
        "name": "fetch-model",
        "image": p.image,
        "imagePullPolicy": "Always",
        "command": ["python3", "-c", script],
        "env": env,
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
        "securityContext": _security_context(),
        "volumeMounts": [mm for mm in mounts if mm["name"] in ("model-cache", "tmp") and mm.get("mountPath") != CACHE_MOUNT],
    }




def model_argument(profile: DeploymentProfile) -> str:
    """`vllm serve`'s model inside the pod: a hub id as is (fetched into HF_HOME on the cache volume),
    a local checkpoint folder at /models/<folder name> on the cache volume."""
    model = profile.engine_args.model
    if hub.is_hub_id(model, revision=False):
        return model
    return f"{MODEL_MOUNT}/{PurePosixPath(model.rstrip('/')).name}"


def _pod_spec(profile: DeploymentProfile, p: _Plan, opts: RenderOptions, *, command: list[str], args: list[str] | None,
              probes: bool) -> dict[str, Any]:
    volumes, mounts = _volumes(p, opts)
    container: dict[str, Any] = {
        "name": "vllm",
        "image": p.image,
        "imagePullPolicy": "Always",
        "command": command,
    }
    if args is not None:
        container["args"] = args
    container["env"] = _env(p, opts)
    container["ports"] = [{"name": "http", "containerPort": opts.port, "protocol": "TCP"}]
    if probes:
        container.update(_probes(p, opts))
        container["lifecycle"] = {"preStop": {"exec": {"command": ["python3", "-c", _drain_script(p, opts)]}}}
    container["resources"] = _resources(p)
    container["securityContext"] = _security_context()
    container["volumeMounts"] = mounts
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": p.grace_s,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},
        },
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
            "matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": list(profile.gpu.node_labels)}],
        }]}}},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    if opts.runtime_class:
        spec["runtimeClassName"] = opts.runtime_class
    # Every pod loads its own shard, workers of a multi-node replica too: each fetches (idempotent on the PVC).
    if hub.is_hub_id(profile.engine_args.model, revision=False):
        spec["initContainers"] = [_fetch_container(profile, p, opts, mounts)]
    spec["containers"] = [container]
    spec["volumes"] = volumes
    return spec


def _workload(profile: DeploymentProfile, p: _Plan, opts: RenderOptions) -> dict[str, Any]:
    args = _serve_args(profile, p, opts)
    annotations = {
        "trdeploy.io/profile": profile.name,
        "trdeploy.io/startup-budget": f"{p.startup_budget_s}s = predicted cold start {p.startup_s:.0f}s x {STARTUP_MARGIN} + {STARTUP_MARGIN_S:.0f}s ({p.startup_basis})",
    }
    template_labels = _labels(p)
    if p.nodes == 1:
        pod = _pod_spec(profile, p, opts, command=["vllm", "serve"], args=args, probes=True)
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(p, annotations=annotations),
            "spec": {
                "replicas": p.replicas_min,
                "revisionHistoryLimit": 3,
                # A cold start can outlast the default 600 s; the rollout is stuck only past the probe budget.
                "progressDeadlineSeconds": p.startup_budget_s + 300,
                "selector": {"matchLabels": _selector(p)},
                # GPUs are the scarce resource: replace one replica at a time, never ask for a spare.
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
                "template": {"metadata": {"labels": template_labels, "annotations": annotations}, "spec": pod},
            },
        }
    # vLLM's multi-node mode: a Ray cluster per replica, the leader serves, the workers lend GPUs.
    total_gpus = p.gpus
    wait_gpus = (
        "until python3 -c \"import ray,sys; ray.init(address='auto'); "
        f"sys.exit(0 if ray.cluster_resources().get('GPU',0)>={total_gpus} else 1)\"; do sleep 5; done"
    )
    leader_cmd = (
        f"ray start --head --port=6379 --num-gpus={p.gpus_per_pod} && {wait_gpus} && exec vllm serve {shlex.join(args)}"
    )
    worker_cmd = f"exec ray start --address=$(LWS_LEADER_ADDRESS):6379 --num-gpus={p.gpus_per_pod} --block"
    leader = _pod_spec(profile, p, opts, command=["/bin/sh", "-c", leader_cmd], args=None, probes=True)
    worker = _pod_spec(profile, p, opts, command=["/bin/sh", "-c", worker_cmd], args=None, probes=False)
    # Workers serve nothing themselves; their health is their Ray node's.
    worker["containers"][0]["readinessProbe"] = {"exec": {"command": ["ray", "status"]}, "periodSeconds": 30, "timeoutSeconds": 20}
    worker["containers"][0]["livenessProbe"] = {"exec": {"command": ["ray", "status"]}, "periodSeconds": 30, "timeoutSeconds": 20, "failureThreshold": 5}
    worker["containers"][0].pop("ports")
    leader_labels = {**template_labels, "trdeploy.io/role": "leader"}
    worker_labels = {**template_labels, "trdeploy.io/role": "worker"}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": _meta(p, annotations=annotations),
        "spec": {
            "replicas": p.replicas_min,
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": {"maxSurge": 0, "maxUnavailable": 1}},
            "leaderWorkerTemplate": {
                "size": p.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {"metadata": {"labels": leader_labels, "annotations": annotations}, "spec": leader},
                "workerTemplate": {"metadata": {"labels": worker_labels}, "spec": worker},
            },
        },
    }


def _serving_selector(p: _Plan) -> dict[str, str]:
    return {**_selector(p), "trdeploy.io/role": "leader"} if p.nodes > 1 else _selector(p)


def _service(p: _Plan, opts: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(p),
        "spec": {
            "type": "ClusterIP",
            "selector": _serving_selector(p),
            "ports": [{"name": "http", "port": opts.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _pvc(p: _Plan, opts: RenderOptions) -> dict[str, Any]:
    spec: dict[str, Any] = {
        # ReadWriteMany: every replica (and node) reads the same weights and compile cache; the first
        # pod's init container fills it, later ones find it there.
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": f"{p.cache_gi}Gi"}},
    }
    if opts.storage_class:
        spec["storageClassName"] = opts.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(p, f"{p.name}-cache"), "spec": spec}


def _behavior(p: _Plan) -> dict[str, Any]:
    return {
        # A new replica helps only after it starts; decide on load sustained about that long.
        "scaleUp": {"stabilizationWindowSeconds": p.scale_up_window_s,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": max(15, p.scale_up_window_s)}]},
        "scaleDown": {"stabilizationWindowSeconds": 600, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]},
    }


def _scale_target(p: _Plan) -> dict[str, str]:
    if p.nodes > 1:
        return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "name": p.name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": p.name}


def _scaled_object(p: _Plan, opts: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _meta(p, annotations={"trdeploy.io/target": p.target_basis}),
        "spec": {
            "scaleTargetRef": _scale_target(p),
            "minReplicaCount": p.replicas_min,
            "maxReplicaCount": p.replicas_max,
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(p)}},
            "triggers": [{
                "type": "prometheus",
                "metricType": "AverageValue",  # KEDA divides the total by the replicas: per-replica in-flight requests
                "metadata": {
                    "serverAddress": opts.prometheus_url,
                    "query": _in_flight_total(p),
                    "threshold": str(p.target),
                },
            }],
        },
    }


HPA_METRIC = "vllm_requests_in_flight"


def _hpa(p: _Plan) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(p, annotations={
            "trdeploy.io/target": p.target_basis,
            "trdeploy.io/metric": f"{HPA_METRIC} per pod = {p.m.num_requests_running} + {p.m.num_requests_waiting} (a prometheus-adapter rule, see the README)",
        }),
        "spec": {
            "scaleTargetRef": _scale_target(p),
            "minReplicas": p.replicas_min,
            "maxReplicas": p.replicas_max,
            "metrics": [{"type": "Pods", "pods": {
                # Per pod of the scale target; no model_name selector (a label value cannot hold its '/').
                "metric": {"name": HPA_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(p.target)},
            }}],
            "behavior": _behavior(p),
        },
    }


def _pdb(p: _Plan) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(p),
        "spec": {
            # The capacity floor: the replicas the average load needs stay up through voluntary disruptions.
            "minAvailable": p.replicas_min * p.nodes,
            "selector": {"matchLabels": _selector(p)},
            # A crash-looping pod must not block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _monitor(p: _Plan, opts: RenderOptions) -> dict[str, Any]:
    endpoint = {"port": "http", "path": p.m.metrics_path, "interval": "15s", "scrapeTimeout": "10s"}
    if opts.monitor == "podmonitor":
        return {
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": _meta(p),
            "spec": {"selector": {"matchLabels": _serving_selector(p)}, "namespaceSelector": {"matchNames": [p.namespace]},
                     "podMetricsEndpoints": [endpoint]},
        }
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": _meta(p),
        "spec": {"selector": {"matchLabels": _selector(p)}, "namespaceSelector": {"matchNames": [p.namespace]},
                 "endpoints": [endpoint]},
    }


def _bucket_note(h: Histogram, threshold_s: float, what: str, warnings: list[str]) -> str:
    around = h.bucket_around(threshold_s)
    if around is None:
        return f"{threshold_s:g} s is a bucket boundary of {h.name}: the quantile is exact at the threshold."
    lo, hi = around
    note = (
        f"{what} threshold {threshold_s:g} s falls between {h.name} buckets {lo:g} s and {hi:g} s: "
        "histogram_quantile interpolates linearly there, so the alert fires on an estimate"
    )
    warnings.append(note + ".")
    return note + "."


def _rules(profile: DeploymentProfile, p: _Plan, warnings: list[str]) -> tuple[dict[str, Any], list[str]]:
    sla = profile.sla
    m = p.m
    rules: list[dict[str, Any]] = []

    def alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str) -> None:
        rules.append({
            "alert": name, "expr": expr, "for": for_,
            "labels": {"severity": severity, "service": p.name},
            "annotations": {"summary": summary, "description": description},
        })

    if sla.ttft_p95_ms is not None:
        t = sla.ttft_p95_ms / 1000
        note = _bucket_note(m.ttft, t, "TTFT p95", warnings)
        alert("VllmTTFTp95AboveSLA", f"{_quantile(p, m.ttft, 0.95)} > {t:g}", "10m", "warning",
              f"{p.name}: p95 time to first token above the SLA ({t:g} s)", note)
    if sla.e2e_p95_ms is not None:
        t = sla.e2e_p95_ms / 1000
        note = _bucket_note(m.e2e, t, "end-to-end p95", warnings)
        alert("VllmE2Ep95AboveSLA", f"{_quantile(p, m.e2e, 0.95)} > {t:g}", "10m", "warning",
              f"{p.name}: p95 end-to-end latency above the SLA ({t:g} s)", note)
    if sla.tpot_ms is not None:
        t = sla.tpot_ms / 1000
        note = _bucket_note(m.tpot, t, "TPOT median", warnings)
        # The SLA's TPOT is the median per request (as `trdeploy bench` measures it).
        alert("VllmTPOTAboveSLA", f"{_quantile(p, m.tpot, 0.5)} > {t:g}", "10m", "warning",
              f"{p.name}: median time per output token above the SLA ({t:g} s)", note)
    alert("VllmErrorRateHigh", f"{_error_ratio(p)} > 0.01", "5m", "critical",
          f"{p.name}: more than 1% of /v1 requests fail with 5xx", "Server errors from vLLM's OpenAI API (prometheus-fastapi-instrumentator counter).")
    alert("VllmKVCacheNearlyFull", f"max({m.kv_cache_usage}{_sel(p)}) > 0.9", "10m", "warning",
          f"{p.name}: KV cache above 90% on a replica", f"{m.kv_cache_usage} is a 0-1 fraction; near 1 vLLM preempts requests and latency climbs.")
    queue = max(1, p.target)
    alert("VllmQueueBuilding", f"sum({m.num_requests_waiting}{_sel(p)}) > {queue}", "5m", "warning",
          f"{p.name}: more than {queue} requests waiting", "A replica's worth of requests queue: autoscaling at its maximum or too slow.")
    group_rules = list(rules)
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": _meta(p),
        "spec": {"groups": [{"name": f"{p.name}.sla", "rules": group_rules}]},
    }
    return obj, [r["expr"] for r in group_rules]


def _network_policy(p: _Plan, opts: RenderOptions) -> dict[str, Any]:
    ingress: list[dict[str, Any]] = [
        {
            "from": [
                {"podSelector": {}},  # clients in the namespace
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": opts.monitoring_namespace}}},
            ],
            "ports": [{"protocol": "TCP", "port": opts.port}],
        }
    ]
    if p.nodes > 1:
        # Ray and NCCL between the pods of one replica group use many ports.
        ingress.append({"from": [{"podSelector": {"matchLabels": _selector(p)}}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(p),
        "spec": {"podSelector": {"matchLabels": _selector(p)}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def _dashboard(profile: DeploymentProfile, p: _Plan) -> tuple[dict[str, Any], list[str]]:
    m = p.m
    s = _sel(p)
    panels_spec: list[tuple[str, str, list[tuple[str, str]], float | None]] = [
        ("Time to first token (s)", "s", [(_quantile(p, m.ttft, 0.5), "p50"), (_quantile(p, m.ttft, 0.95), "p95")],
         profile.sla.ttft_p95_ms / 1000 if profile.sla.ttft_p95_ms else None),
        ("Time per output token, per request (s)", "s", [(_quantile(p, m.tpot, 0.5), "p50"), (_quantile(p, m.tpot, 0.95), "p95")],
         profile.sla.tpot_ms / 1000 if profile.sla.tpot_ms else None),
        ("End-to-end latency (s)", "s", [(_quantile(p, m.e2e, 0.5), "p50"), (_quantile(p, m.e2e, 0.95), "p95")],
         profile.sla.e2e_p95_ms / 1000 if profile.sla.e2e_p95_ms else None),
        ("Requests running / waiting", "short", [(f"sum by (pod) ({m.num_requests_running}{s})", "running {{pod}}"),
                                                 (f"sum by (pod) ({m.num_requests_waiting}{s})", "waiting {{pod}}")], float(p.target)),
        ("KV cache usage (0-1)", "percentunit", [(f"max by (pod) ({m.kv_cache_usage}{s})", "{{pod}}")], 0.9),
        ("Tokens per second", "short", [(f"sum(rate({m.prompt_tokens}{s}[5m]))", "prompt"),
                                         (f"sum(rate({m.generation_tokens}{s}[5m]))", "generation")], None),
        ("5xx ratio on /v1", "percentunit", [(_error_ratio(p), "errors")], 0.01),
        ("Preemptions per second", "short", [(f"sum(rate({m.num_preemptions}{s}[5m]))", "preemptions")], None),
    ]
    panels = []
    exprs = []
    for i, (title, unit, targets, threshold) in enumerate(panels_spec):
        steps = [{"color": "green", "value": None}]
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
    dashboard = {
        "title": f"vLLM {p.name}", "uid": f"trdeploy-{p.name}"[:40], "schemaVersion": 39, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "tags": ["vllm", "trdeploy"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
        "panels": panels,
    }
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**_meta(p, f"{p.name}-dashboard"), "labels": {**_labels(p), "grafana_dashboard": "1"}},
        "data": {f"{p.name}.json": json.dumps(dashboard, indent=1, sort_keys=True)},
    }
    return cm, exprs


# ---------------------------------------------------------------------------------------------


def render(profile: DeploymentProfile, opts: RenderOptions | None = None) -> Rendered:
    """Every manifest for `profile`, grouped by file, with the facts they were derived from."""
    opts = opts or RenderOptions()
    if not _DNS_LABEL.match(opts.namespace) or opts.namespace == "default":
        raise TrdeployError(f"--namespace {opts.namespace!r} is not usable.", hint="Use a dedicated namespace (lowercase letters, digits, '-'), not 'default'.")
    p = _plan(profile, opts)
    if opts.model_source == "download" and not hub.is_hub_id(profile.engine_args.model, revision=False):
        raise TrdeployError(
            f"The model {profile.engine_args.model} is a local path: an init container cannot download it.",
            hint="Copy it onto the cache volume and use --model-source pvc.",
        )
    warnings: list[str] = []
    if not hub.is_hub_id(profile.engine_args.model, revision=False):
        warnings.append(
            f"The model is the local folder {profile.engine_args.model}: copy it onto the cache volume as "
            f"{model_argument(profile).removeprefix(MODEL_MOUNT + '/')}/ (the pods read {model_argument(profile)})."
        )
    if p.nodes > 1:
        warnings.append(
            f"One replica spans {p.nodes} nodes with the profile's tensor_parallel_size {p.gpus} (vLLM over Ray): its all-reduce "
            "crosses the network, which tune's latency prediction (one node's interconnect) does not include; vLLM recommends "
            "tensor parallelism within a node and pipeline parallelism across nodes (re-tune for that, or measure with `trdeploy bench`)."
        )
    if p.target_basis.startswith("conservative"):
        warnings.append(f"Autoscaling target {p.target} requests per replica: {p.target_basis}.")
    if p.startup_basis.startswith("conservative"):
        warnings.append(f"startupProbe budget {p.startup_budget_s} s from a {p.startup_basis}.")
    files: dict[str, list[dict[str, Any]]] = {}
    workload = _workload(profile, p, opts)
    files["leaderworkerset.yaml" if p.nodes > 1 else "deployment.yaml"] = [workload]
    files["service.yaml"] = [_service(p, opts)]
    if opts.model_source == "pvc":
        files["pvc.yaml"] = [_pvc(p, opts)]
    promql: list[str] = []
    if opts.autoscaler == "keda":
        files["scaledobject.yaml"] = [_scaled_object(p, opts)]
        promql.append(_in_flight_total(p))
    elif opts.autoscaler == "hpa":
        files["hpa.yaml"] = [_hpa(p)]
    files["pdb.yaml"] = [_pdb(p)]
    files[f"{opts.monitor}.yaml"] = [_monitor(p, opts)]
    rule, rule_exprs = _rules(profile, p, warnings)
    files["prometheusrule.yaml"] = [rule]
    promql += rule_exprs
    files["networkpolicy.yaml"] = [_network_policy(p, opts)]
    dash, dash_exprs = _dashboard(profile, p)
    files["dashboard.yaml"] = [dash]
    promql += dash_exprs
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(files),
    }
    facts = {
        "name": p.name,
        "namespace": p.namespace,
        "kind": workload["kind"],
        "image": p.image,
        "served_model_name": p.served_model_name,
        "gpus_per_replica": p.gpus,
        "pods_per_replica": p.nodes,
        "gpus_per_pod": p.gpus_per_pod,
        "replicas_min": p.replicas_min,
        "replicas_max": p.replicas_max,
        "target_in_flight_per_replica": p.target,
        "target_basis": p.target_basis,
        "predicted_cold_start_s": round(p.startup_s, 1),
        "startup_basis": p.startup_basis,
        "startup_budget_s": p.startup_budget_s,
        "scale_up_stabilization_s": p.scale_up_window_s,
        "drain_s": p.drain_s,
        "termination_grace_s": p.grace_s,
        "shm_gi": p.shm_gi,
        "cpu": p.cpu,
        "memory_gi": p.memory_gi,
        "cache_gi": p.cache_gi,
        "vllm_metrics": p.m.source,
        "hpa_adapter_rule": hpa_adapter_rule(p.m) if opts.autoscaler == "hpa" else None,
    }
    return Rendered(files=files, kustomization=kustomization, facts=facts, warnings=warnings, promql=promql)


def hpa_adapter_rule(m: VllmMetrics) -> dict[str, Any]:
    """The prometheus-adapter rule that gives the HPA alternative its per-pod metric."""
    return {
        "seriesQuery": f'{m.num_requests_running}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"as": HPA_METRIC},
        "metricsQuery": (
            f"sum by (<<.GroupBy>>) ({m.num_requests_running}{{<<.LabelMatchers>>}}) + "
            f"sum by (<<.GroupBy>>) ({m.num_requests_waiting}{{<<.LabelMatchers>>}})"
        ),
    }


# ---------------------------------------------------------------------------------------------
# Serialisation (plain YAML: no anchors, so every object reads on its own)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump_all(objs: list[Any]) -> str:
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def dump_stream(rendered: Rendered) -> str:
    """`-o -`: one multi-document stream of every object kustomization.yaml lists."""
    return _dump_all(rendered.objects)


def file_texts(rendered: Rendered) -> dict[str, str]:
    """File name -> YAML text for the output folder (kustomization.yaml included)."""
    texts = {name: _dump_all(objs) for name, objs in rendered.files.items()}
    texts["kustomization.yaml"] = _dump_all([rendered.kustomization])
    return texts
