"""The plan: every number and name the manifests need, decided once from the profile and the options.

`make_plan(profile, opts)` reads the profile only (never re-derives what `tune` decided): GPUs per node,
the driver the image's CUDA build needs, the start-up budget, the capacity plan and the served model name
all come from it. The object builders (trdeploy.deploy.k8s.objects, .observability) take only the plan.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import field_validator

from trdeploy import hub
from trdeploy.args import Args, arg
from trdeploy.deploy import container as ct
from trdeploy.deploy.image import default_tag
from trdeploy.deploy.vllm_metrics import VllmMetrics, metrics_for
from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError
from trdeploy.fields import LABEL_VALUE_RE, DnsLabel, DnsSubdomain, ImageRef, ShortText

GiB = 1024**3

PROBE_PERIOD_S = 10
ENDPOINT_PROPAGATION_S = 10  # time for kube-proxy/ingress to drop a terminating pod
TEARDOWN_S = 30  # after vLLM's drain: the engine processes exit and free the GPUs before the kubelet's SIGKILL

SECRET_API_KEY_KEY = "api-key"
SECRET_HF_TOKEN_KEY = "token"

_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# A label key: an optional DNS-subdomain prefix and '/', then a name of at most 63; a value at most 63.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(LABEL_VALUE_RE)

ModelSource = Literal["pvc", "download", "image"]
AccessMode = Literal["ReadWriteOnce", "ReadWriteMany"]
DriverLabels = Literal["current", "legacy", "none"]

# NVIDIA GPU feature discovery's driver-version labels (k8s-device-plugin internal/lm/nvml.go): "current" since
# device plugin / GFD v0.15.0, "legacy" the older names every release still writes (marked deprecated).
DRIVER_LABEL_KEYS: dict[str, tuple[str, str, str]] = {
    "current": ("nvidia.com/cuda.driver-version.major", "nvidia.com/cuda.driver-version.minor", "nvidia.com/cuda.driver-version.revision"),
    "legacy": ("nvidia.com/cuda.driver.major", "nvidia.com/cuda.driver.minor", "nvidia.com/cuda.driver.rev"),
}


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
    storage_class: DnsSubdomain | None = arg(None, help="storageClassName of the cache PVC.", default_note="the cluster's default class")
    access_mode: AccessMode | None = arg(
        None, help="Access mode of the cache PVC: ReadWriteOnce (block disks; one node) or ReadWriteMany (NFS, CephFS, EFS, Filestore, Azure Files).",
        default_note="ReadWriteOnce when the capacity plan's replicas_max is 1, else ReadWriteMany",
    )
    cache_group: int | None = arg(
        None, ge=1, le=2**31 - 1,
        help="A group that may write the cache volume (supplementalGroups): for NFS-like volumes that ignore fsGroup and are owned by a group.",
    )
    cache_chown: bool = arg(
        False, help="Add a root init container that makes the cache volume's root the contract's user (volumes that ignore fsGroup, no root squash).",
    )
    cache_size_gi: int | None = arg(None, ge=1, help="Cache volume size in GiB.", default_note="1.25 x the weights + 20")
    api_key: bool = arg(True, flag="--api-key/--no-api-key", help="Require an API key on /v1 (VLLM_API_KEY from a Secret).")
    api_key_secret: DnsSubdomain | None = arg(None, help="Secret holding key 'api-key'.", default_note="NAME-api-key")
    hf_token_secret: DnsSubdomain | None = arg(None, help="Secret holding key 'token' (optional, for gated models).", default_note="NAME-hf-token")
    autoscaler: Literal["keda", "hpa", "none"] = arg("keda", help="keda (ScaledObject on Prometheus), hpa (custom metric via prometheus-adapter) or none.")
    monitor: Literal["servicemonitor", "podmonitor"] = arg("servicemonitor", help="prometheus-operator scrape object.")
    prometheus_url: str = arg("http://prometheus-operated.monitoring.svc:9090", help="Prometheus the KEDA trigger queries (no credentials in it: use a KEDA TriggerAuthentication).")
    monitoring_namespace: DnsLabel = arg("monitoring", help="Namespace allowed to scrape (NetworkPolicy).")
    monitoring_label: list[str] = arg(
        [], flag="--monitoring-label",
        help="KEY=VALUE label on ServiceMonitor/PodMonitor/PrometheusRule so your Prometheus selects them (kube-prometheus-stack: release=<its release>); repeatable.",
    )
    allow_namespace: list[DnsLabel] = arg(
        [], flag="--allow-namespace", help="Namespace (an ingress controller, a gateway) allowed to reach the API port (NetworkPolicy); repeatable.",
    )
    fallback_replicas: int | None = arg(None, ge=1, help="Replicas KEDA holds while it cannot read the metric.", default_note="the most replicas")
    surge: int = arg(0, ge=0, le=16, help="Extra replicas a rollout may start before stopping old ones (needs spare GPUs); 0 replaces one at a time.")
    read_only_root: bool = arg(
        False, help="Read-only root file system for the vLLM container (fails on nodes whose NVIDIA toolkit runs in CDI mode).",
    )
    driver_labels: DriverLabels = arg(
        "current",
        help="Node affinity on the NVIDIA driver the image's CUDA build needs, from GPU feature discovery's labels: current "
        "(nvidia.com/cuda.driver-version.*, GFD >= 0.15), legacy (nvidia.com/cuda.driver.*), none.",
    )
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

    @field_validator("monitoring_label")
    @classmethod
    def _labels(cls, values: list[str]) -> list[str]:
        for item in values:
            key, eq, value = item.partition("=")
            if not eq or not _LABEL_KEY.fullmatch(key) or len(key.rpartition("/")[0]) > 253 or not _LABEL_VALUE.fullmatch(value):
                raise ValueError(f"{item!r} is not KEY=VALUE with a Kubernetes label key and value (e.g. release=kube-prometheus-stack)")
        return values



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
    vllm_version: str
    node_labels: tuple[str, ...]
    min_driver: str
    driver_labels: str
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
    shutdown_timeout_s: int  # vLLM's --shutdown-timeout (the image's engine_args): the drain window
    shm_gi: int
    cpu: int
    memory_gi: int
    cache_gi: int
    port: int
    api_key: bool
    api_key_secret: str
    hf_token_secret: str
    access_mode: str
    storage_class: str | None
    supplemental_groups: list[int] | None  # --cache-group
    runtime_class: str | None
    read_only_root: bool
    surge: int
    fallback_replicas: int
    prometheus_url: str
    monitoring_namespace: str
    monitoring_labels: dict[str, str]
    allow_namespaces: tuple[str, ...]
    sla_ttft_p95_s: float | None
    sla_e2e_p95_s: float | None
    sla_tpot_s: float | None
    m: VllmMetrics
    opts: RenderOptions
    warnings: list[str] = field(default_factory=list, compare=False)

    @property
    def extra_args(self) -> list[str]:
        """Arguments appended to the image's entrypoint: only what differs from what the image runs."""
        return ["--port", str(self.port)] if self.port != ct.PORT else []

    @property
    def prestop_s(self) -> int:
        """preStop: the pod stays up, unchanged, while kube-proxy and ingress controllers drop its endpoint."""
        return ENDPOINT_PROPAGATION_S

    @property
    def grace_s(self) -> int:
        """terminationGracePeriodSeconds counts from the start of preStop: it must cover the endpoint removal,
        vLLM's drain (--shutdown-timeout) and the engine's exit, or the kubelet's SIGKILL cuts the drain short."""
        return self.prestop_s + self.shutdown_timeout_s + TEARDOWN_S

    def driver_terms(self) -> list[list[dict[str, Any]]]:
        """Node-selector requirement lists (ORed) that hold on nodes whose driver is at least min_driver, from
        GPU feature discovery's major/minor/revision labels (integers for Gt: "06" is 6). Empty: no condition."""
        if self.driver_labels == "none":
            return [[]]
        keys = DRIVER_LABEL_KEYS[self.driver_labels]
        parts = [int(x) for x in self.min_driver.split(".")][:3]
        terms: list[list[dict[str, Any]]] = []
        equal: list[dict[str, Any]] = []
        for i, (key, value) in enumerate(zip(keys, parts, strict=False)):
            last = i == len(parts) - 1
            # Higher at this position (equal before it); the last position may also be equal.
            bound = value - 1 if last else value
            if bound >= 0:
                terms.append([*equal, {"key": key, "operator": "Gt", "values": [str(bound)]}])
            equal.append({"key": key, "operator": "In", "values": _spellings(value)})
        return terms


def _spellings(value: int) -> list[str]:
    """A driver version part as GFD may spell it: "65", and with a leading zero below 10 ("06")."""
    return [str(value), f"{value:02d}"] if value < 10 else [str(value)]


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
    tp = profile.engine_args.tensor_parallel_size
    pp = profile.engine_args.pipeline_parallel_size
    if gpus > per_node:
        if tp > per_node:
            raise TrdeployError(
                f"{profile.name} runs tensor parallelism {tp} on nodes of {per_node} GPUs: its all-reduce would cross the network.",
                hint=f"Re-run `trdeploy tune` with the same --gpus and --gpus-per-node {per_node}: it plans tensor parallelism within a node "
                "and pipeline parallelism across nodes (vLLM's multi-node layout).",
            )
        if not opts.multi_node:
            raise TrdeployError(
                f"{profile.name} needs {gpus} GPUs per replica but a {tier} node has {per_node} (profile gpu.gpus_per_node).",
                hint="Pass --multi-node for a LeaderWorkerSet across nodes, or tune for fewer GPUs (--quantization awq, a larger GPU tier).",
            )
        nodes = math.ceil(gpus / per_node)
        if gpus % nodes or per_node % tp:
            raise TrdeployError(f"{gpus} GPUs (TP {tp} x PP {pp}) do not split evenly over {nodes} nodes of {per_node}.", hint="Tune for a GPU count that is a multiple of the node size.")
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

    warnings: list[str] = []
    access_mode = opts.access_mode or ("ReadWriteOnce" if replicas_max == 1 and nodes == 1 else "ReadWriteMany")
    if opts.model_source == "pvc":
        access_mode = _check_access_mode(access_mode, opts, replicas_max, nodes, warnings)

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
        vllm_version=profile.vllm_version,
        node_labels=tuple(profile.gpu.node_labels), min_driver=profile.gpu.min_driver,
        replicas_min=replicas_min, replicas_max=replicas_max, target=target, target_basis=target_basis,
        startup_cold_s=startup.cold_s, startup_warm_s=startup.warm_s,
        startup_basis=f"profile prediction.startup ({startup.basis or 'tune'})", startup_budget_s=startup.budget_s,
        startup_budget_basis=startup.budget_basis, scale_up_window_s=scale_up_window,
        shutdown_timeout_s=profile.engine_args.shutdown_timeout,
        shm_gi=shm_gi, cpu=cpu, memory_gi=memory_gi, cache_gi=cache_gi, port=opts.port, api_key=opts.api_key,
        api_key_secret=opts.api_key_secret or f"{name}-api-key", hf_token_secret=opts.hf_token_secret or f"{name}-hf-token",
        access_mode=access_mode, storage_class=opts.storage_class,
        supplemental_groups=[opts.cache_group] if opts.cache_group is not None else None, runtime_class=opts.runtime_class,
        read_only_root=opts.read_only_root, surge=opts.surge, fallback_replicas=opts.fallback_replicas or replicas_max,
        prometheus_url=opts.prometheus_url, monitoring_namespace=opts.monitoring_namespace,
        monitoring_labels=dict(item.partition("=")[::2] for item in opts.monitoring_label),
        allow_namespaces=tuple(dict.fromkeys(opts.allow_namespace)), driver_labels=opts.driver_labels,
        sla_ttft_p95_s=sla.ttft_p95_ms / 1000 if sla.ttft_p95_ms is not None else None,
        sla_e2e_p95_s=sla.e2e_p95_ms / 1000 if sla.e2e_p95_ms is not None else None,
        sla_tpot_s=sla.tpot_ms / 1000 if sla.tpot_ms is not None else None,
        m=m, opts=opts, warnings=warnings,
    )


def _check_access_mode(mode: str, opts: RenderOptions, replicas_max: int, nodes: int, warnings: list[str]) -> str:
    """The cache PVC's access mode, and what the cluster must offer for it (said once, here)."""
    if mode == "ReadWriteOnce" and nodes > 1:
        raise TrdeployError(
            f"--access-mode ReadWriteOnce: a replica spans {nodes} nodes, and a ReadWriteOnce volume attaches to one node.",
            hint="Use --access-mode ReadWriteMany with a class that offers it, or --model-source download (a volume per pod).",
        )
    if mode == "ReadWriteOnce" and replicas_max > 1:
        warnings.append(
            f"The cache PVC is ReadWriteOnce but up to {replicas_max} replicas may run: a ReadWriteOnce volume attaches to one node, so "
            "replicas scheduled on other nodes wait in ContainerCreating (Multi-Attach). Use --access-mode ReadWriteMany, or --model-source download."
        )
    if mode == "ReadWriteOnce" and opts.surge > 0:
        warnings.append(
            "--surge with a ReadWriteOnce cache PVC: the surge pod can only start on the node that holds the volume."
        )
    if mode == "ReadWriteMany":
        where = f"storage class {opts.storage_class!r}" if opts.storage_class else "the cluster's default storage class"
        warnings.append(
            f"The cache PVC is ReadWriteMany ({'--access-mode' if opts.access_mode else f'replicas_max {replicas_max}' if nodes == 1 else f'{nodes} nodes per replica'}): "
            f"{where} must offer ReadWriteMany (NFS, CephFS, Amazon EFS, GCP Filestore, Azure Files); on block-disk classes (the usual "
            "default) the PVC stays Pending. Pass --storage-class NAME of such a class, or --access-mode ReadWriteOnce with --replicas-max 1, "
            "or --model-source download. Volumes that ignore fsGroup (NFS-like) need --cache-group GID or --cache-chown."
        )
    return mode
