"""The plan: every number and name the manifests need, decided once from the profile and the options.

`make_plan(profile, opts)` reads the profile only (never re-derives what `tune` decided): GPUs per node,
the driver the image's CUDA build needs, the start-up budget, the capacity plan and the served model name
all come from it. The object builders (trdeploy.deploy.k8s.objects, .observability) take only the plan.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import field_validator

from trdeploy import hub
from trdeploy.args import Args, arg
from trdeploy.deploy import container as ct
from trdeploy.deploy.image import default_tag
from trdeploy.deploy.vllm_metrics import VllmMetrics, metrics_for
from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError
from trdeploy.fields import DnsLabel, DnsSubdomain, ImageRef, ShortText

GiB = 1024**3

PROBE_PERIOD_S = 10
ENDPOINT_PROPAGATION_S = 10  # time for kube-proxy/ingress to drop a terminating pod

SECRET_API_KEY_KEY = "api-key"
SECRET_HF_TOKEN_KEY = "token"

_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")

ModelSource = Literal["pvc", "download", "image"]


class RenderOptions(Args):
    """The knobs operators turn; each overrides what is derived from the profile (None = derived)."""

    command: ClassVar[str] = "render-k8s"

    name: ShortText | None = arg(None, help="Object name (at most 40 of a-z, 0-9, '-').", default_note="the profile's name")
    namespace: DnsLabel = arg("llm", help="Namespace for every object.")
    image: ImageRef | None = arg(
        None,
        help="The serving image `trdeploy build` made from this profile, as the cluster pulls it (REGISTRY/NAME:TAG).",
        default_note="build's default tag for the model source",
    )
    replicas_min: int | None = arg(None, ge=1, help="Fewest replicas (also the PDB floor).", default_note="the profile's capacity plan")
    replicas_max: int | None = arg(None, ge=1, help="Most replicas.", default_note="the profile's capacity plan")
    target_concurrency: int | None = arg(None, ge=1, help="Requests in flight (running + waiting) per replica to scale at.",
                                         default_note="where the profile's SLA holds")
    multi_node: bool = arg(False, help="Allow a replica across nodes (LeaderWorkerSet, vLLM over Ray).")
    runtime_class: DnsSubdomain | None = arg(None, help="runtimeClassName for the pods (e.g. nvidia).")
    model_source: ModelSource = arg(
        "pvc",
        help="pvc: weights and caches on a volume the replicas share (image from `build --model-source mount`); download: each pod "
        "fetches into an emptyDir; image: the weights are in the image (`build --model-source bake|download`), no volume over them.",
    )
    storage_class: DnsSubdomain | None = arg(None, help="storageClassName of the cache PVC (one that offers ReadWriteMany).")
    cache_size_gi: int | None = arg(None, ge=1, help="Cache volume size in GiB.", default_note="1.25 x the weights + 20")
    api_key: bool = arg(True, flag="--api-key/--no-api-key", help="Require an API key on /v1 (VLLM_API_KEY from a Secret).")
    api_key_secret: DnsSubdomain | None = arg(None, help="Secret holding key 'api-key'.", default_note="NAME-api-key")
    hf_token_secret: DnsSubdomain | None = arg(None, help="Secret holding key 'token' (optional, for gated models).", default_note="NAME-hf-token")
    autoscaler: Literal["keda", "hpa", "none"] = arg("keda", help="keda (ScaledObject on Prometheus), hpa (custom metric via prometheus-adapter) or none.")
    monitor: Literal["servicemonitor", "podmonitor"] = arg("servicemonitor", help="prometheus-operator scrape object.")
    prometheus_url: str = arg("http://prometheus-operated.monitoring.svc:9090", help="Prometheus the KEDA trigger queries (no credentials in it: use a KEDA TriggerAuthentication).")
    monitoring_namespace: DnsLabel = arg("monitoring", help="Namespace allowed to scrape (NetworkPolicy).")
    port: int = arg(ct.PORT, ge=1, le=65535, help="vLLM's HTTP port in the pod and the Service's port.")

    @field_validator("prometheus_url")
    @classmethod
    def _prometheus_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or not re.fullmatch(r"[A-Za-z0-9._~:/?#\[\]@!&'()*+,;=%-]{1,2048}", value):
            raise ValueError("must be an http(s) URL without spaces or quotes")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials (they would be written into the manifests); use a KEDA TriggerAuthentication")
        return value


@dataclass(frozen=True)
class Plan:
    """Everything the builders need; nothing they derive again."""

    name: str
    namespace: str
    image: str
    image_given: bool
    gpus: int
    nodes: int  # pods per replica (LeaderWorkerSet group size), 1 for a Deployment
    gpus_per_pod: int
    gpus_per_node: int
    served_model_name: str
    engine_model: str  # the profile's engine_args.model
    model_is_hub: bool
    model_in_container: str  # vllm serve's model argument inside the pod (the contract's rule)
    model_in_image: str  # where a `build --model-source bake|download` image holds the weights
    model_source: str
    profile_name: str
    profile_sha256: str
    node_labels: tuple[str, ...]
    min_driver: str
    replicas_min: int
    replicas_max: int
    target: int
    target_basis: str
    startup_cold_s: float
    startup_warm_s: float
    startup_basis: str
    startup_budget_s: int
    startup_budget_basis: str
    scale_up_window_s: int
    drain_s: int
    grace_s: int
    shm_gi: int
    cpu: int
    memory_gi: int
    cache_gi: int
    port: int
    api_key: bool
    api_key_secret: str
    hf_token_secret: str
    sla_ttft_p95_s: float | None
    sla_e2e_p95_s: float | None
    sla_tpot_s: float | None
    m: VllmMetrics
    opts: RenderOptions

    @property
    def extra_args(self) -> list[str]:
        """Arguments appended to the image's entrypoint: only what differs from what the image runs."""
        return ["--port", str(self.port)] if self.port != ct.PORT else []


def _name(profile: DeploymentProfile, opts: RenderOptions) -> str:
    raw = opts.name or profile.name
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[:40].rstrip("-")
    if not name or not _DNS_LABEL.fullmatch(name):
        raise TrdeployError(f"Cannot make a Kubernetes name from {raw!r}.", hint="Pass --name with lowercase letters, digits and dashes, starting with a letter.")
    if opts.name and name != opts.name:
        raise TrdeployError(f"--name {opts.name!r} is not a valid Kubernetes name (at most 40 of a-z, 0-9, '-', starting with a letter).", hint=f"Use e.g. --name {name}.")
    return name


def _target(profile: DeploymentProfile, opts: RenderOptions) -> tuple[int, str]:
    """Requests in flight per replica (running + waiting) at which the SLA still holds."""
    if opts.target_concurrency:
        return opts.target_concurrency, "--target-concurrency"
    plan = profile.prediction.capacity
    return int(plan.per_replica_concurrency), f"profile prediction.capacity.per_replica_concurrency ({plan.basis or 'tune'})"


def make_plan(profile: DeploymentProfile, opts: RenderOptions) -> Plan:
    if not _DNS_LABEL.fullmatch(opts.namespace) or len(opts.namespace) > 63 or opts.namespace == "default":
        raise TrdeployError(f"--namespace {opts.namespace!r} is not usable.", hint="Use a dedicated namespace (lowercase letters, digits, '-'), not 'default'.")
    tier = profile.gpu.tier
    if not profile.gpu.node_labels:
        raise TrdeployError(
            f"GPU tier {tier!r} has no nvidia.com/gpu.product node labels in the profile.",
            hint="Re-run `trdeploy tune --gpu TIER` with a known tier (h100, h200, a100-80gb, a100-40gb, l40s, l4, a10g, rtx4090).",
        )
    sla = profile.sla
    if sla.ttft_p95_ms is None and sla.e2e_p95_ms is None and sla.tpot_ms is None:
        raise TrdeployError(
            f"Profile {profile.name} has no SLA: the autoscaling target and the alerts derive from it.",
            hint="Re-run `trdeploy tune` with --sla-ttft-p95-ms, --sla-e2e-p95-ms or --sla-tpot-ms.",
        )
    per_node = profile.gpu.gpus_per_node
    gpus = profile.gpu.count
    if gpus > per_node:
        if not opts.multi_node:
            raise TrdeployError(
                f"{profile.name} needs {gpus} GPUs per replica but a {tier} node has {per_node} (profile gpu.gpus_per_node).",
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
    model = profile.engine_args.model
    model_is_hub = hub.is_hub_id(model, revision=False)
    if opts.model_source == "download" and not model_is_hub:
        raise TrdeployError(
            f"The model {model} is a local path: an init container cannot download it.",
            hint="Copy it onto the cache volume and use --model-source pvc, or bake it into the image (`trdeploy build --model-source bake`) and use --model-source image.",
        )
    if opts.model_source == "image" and not opts.image:
        raise TrdeployError(
            "--model-source image needs --image: the tag `trdeploy build --model-source bake|download` gave, as the cluster pulls it.",
            hint="Pass --image REGISTRY/NAME:TAG.",
        )

    target, target_basis = _target(profile, opts)
    capacity = profile.prediction.capacity
    replicas_min = opts.replicas_min or capacity.replicas_min
    replicas_max = opts.replicas_max or max(capacity.replicas_max, replicas_min)
    if replicas_max < replicas_min:
        raise TrdeployError(f"--replicas-max {replicas_max} is below --replicas-min {replicas_min}.", hint="Raise --replicas-max or lower --replicas-min.")

    startup = profile.prediction.startup
    # A new replica starts warm when the compile cache lives on the shared volume, cold otherwise.
    new_replica_s = startup.warm_s if opts.model_source == "pvc" else startup.cold_s
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

    build_source = "mount" if opts.model_source in ("pvc", "download") else "bake"
    image = opts.image or default_tag(profile, build_source)
    return Plan(
        name=name, namespace=opts.namespace, image=image, image_given=opts.image is not None, gpus=gpus, nodes=nodes,
        gpus_per_pod=gpus_per_pod, gpus_per_node=per_node, served_model_name=profile.engine_args.served_model_name,
        engine_model=model, model_is_hub=model_is_hub,
        model_in_container=ct.model_path(profile, weights_in_image=opts.model_source == "image"),
        model_in_image=ct.model_path(profile, weights_in_image=True),
        model_source=opts.model_source, profile_name=profile.name, profile_sha256=ct.profile_sha256(profile),
        node_labels=tuple(profile.gpu.node_labels), min_driver=profile.gpu.min_driver,
        replicas_min=replicas_min, replicas_max=replicas_max, target=target, target_basis=target_basis,
        startup_cold_s=startup.cold_s, startup_warm_s=startup.warm_s,
        startup_basis=f"profile prediction.startup ({startup.basis or 'tune'})", startup_budget_s=startup.budget_s,
        startup_budget_basis=startup.budget_basis, scale_up_window_s=scale_up_window, drain_s=drain, grace_s=grace,
        shm_gi=shm_gi, cpu=cpu, memory_gi=memory_gi, cache_gi=cache_gi, port=opts.port, api_key=opts.api_key,
        api_key_secret=opts.api_key_secret or f"{name}-api-key", hf_token_secret=opts.hf_token_secret or f"{name}-hf-token",
        sla_ttft_p95_s=sla.ttft_p95_ms / 1000 if sla.ttft_p95_ms is not None else None,
        sla_e2e_p95_s=sla.e2e_p95_ms / 1000 if sla.e2e_p95_ms is not None else None,
        sla_tpot_s=sla.tpot_ms / 1000 if sla.tpot_ms is not None else None,
        m=m, opts=opts,
    )
