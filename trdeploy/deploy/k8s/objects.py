"""The Kubernetes objects: builders that take only the plan.

The serving container is the image `trdeploy build` made: the pod runs the image's own entrypoint as the
contract's user (trdeploy.deploy.container), with only the API key, the profile's hash and (when it
differs from the image's) the port added. Nothing here defines a path, a user or a command of its own.

Values a Helm chart may change reach the objects through the operations of trdeploy.deploy.k8s.knobs
(`add`, `text`, `extended`, ...), so the chart's templates are these objects (trdeploy.deploy.k8s.helm).
"""

from __future__ import annotations

from typing import Any

from trdeploy.deploy import container as ct
from trdeploy.deploy.k8s.common import labels, meta, selector, serving_selector
from trdeploy.deploy.k8s.knobs import add, as_str, ceil_div, extended, maximum, minimum, negate, sub, text, when
from trdeploy.deploy.k8s.observability import hpa_metric, in_flight_total
from trdeploy.deploy.k8s.plan import PROBE_PERIOD_S, SECRET_API_KEY_KEY, SECRET_HF_TOKEN_KEY, Plan

MODELS_SUBPATH = "models"  # local checkpoints on the cache volume: <volume>/models/<name>, read at /models/<name>

# checkov checks that a setting of this rendering fails on purpose, with the reason; written as checkov's skip
# annotations on the object, so the reason travels with the manifest.
WRITABLE_ROOT_SKIP = (
    "CKV_K8S_22",
    "writable root file system by default: on nodes whose NVIDIA Container Toolkit runs in CDI mode, nvidia-cdi-hook writes into the "
    "container's root file system while creating it (KServe keeps it writable for this reason); --read-only-root opts in",
)
CHOWN_SKIPS = (
    ("CKV_K8S_25", "--cache-chown: the cache-owner init container adds CHOWN and FOWNER (all else dropped) to chown the root of a "
     "volume that ignores fsGroup, as root, then exits; the server runs as UID 10001 with every capability dropped"),
)


def security_context(p: Plan) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        # Writable by default: with the NVIDIA Container Toolkit in CDI mode, nvidia-cdi-hook creates files (the ldconfig
        # cache, driver library links) in the container's root file system at creation, and fails on a read-only one
        # (KServe's LLMInferenceService template backed it out). Every cache of the contract is on a volume either way.
        "readOnlyRootFilesystem": p.read_only_root,
        "runAsNonRoot": True,
        "runAsUser": ct.UID,
        "runAsGroup": ct.GID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def checkov_skips(p: Plan) -> dict[str, Any]:
    """checkov's skip annotations (checkov.io/skipN: CHECK=reason) for what this rendering does on purpose."""
    skips: dict[str, Any] = {}
    writable = when(negate(p.read_only_root), "=".join(WRITABLE_ROOT_SKIP))
    if writable is not None:
        skips["checkov.io/skip1"] = writable
    if p.opts.cache_chown and p.model_source == "pvc":
        skips.update({f"checkov.io/skip{i}": f"{check}={why}" for i, (check, why) in enumerate(CHOWN_SKIPS, 2)})
    return skips


def fetches_weights(p: Plan) -> bool:
    """An init container downloads a hub model into the cache volume before vLLM starts."""
    return p.model_is_hub and p.model_source in ("pvc", "download")


def _env(p: Plan) -> list[dict[str, Any]]:
    # The image's ENV (caches, HOME, USER) applies as it is; only what the pod adds is listed.
    env: list[dict[str, Any]] = [{"name": ct.EXPECT_PROFILE_ENV, "value": ct.k8s_text(p.profile_sha256)}]
    if fetches_weights(p):
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})  # the init container fetched the weights
    if p.api_key:
        env.append({"name": ct.API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": p.api_key_secret, "key": SECRET_API_KEY_KEY}}})
    return env


def _lifecycle(p: Plan) -> dict[str, Any]:
    """Termination, in order: the endpoint is removed while preStop waits (requests still arrive meanwhile and are
    served); then SIGTERM, on which vLLM refuses new requests and drains those in flight for its --shutdown-timeout
    (the profile's engine_args.shutdown_timeout, in the image's command); terminationGracePeriodSeconds covers both
    and the engine's exit (Plan.grace_s)."""
    return {"preStop": {"exec": {"command": ["sleep", str(p.prestop_s)]}}}


def _probes(p: Plan) -> dict[str, Any]:
    get = {"path": ct.HEALTH_PATH, "port": "http"}
    return {
        # The profile's start-up budget (the same number as the image's HEALTHCHECK start period).
        "startupProbe": {"httpGet": get, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 5,
                         "failureThreshold": ceil_div(p.startup_budget_s, PROBE_PERIOD_S)},
        "readinessProbe": {"httpGet": get, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": get, "periodSeconds": 10, "timeoutSeconds": 10, "failureThreshold": 6},
    }


def _resources(p: Plan) -> dict[str, Any]:
    amounts = {"cpu": as_str(p.cpu), "memory": text("{}Gi", p.memory_gi), "nvidia.com/gpu": str(p.gpus_per_pod)}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def volumes(p: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, the serving container's mounts). The cache volume is always at the contract's
    CACHE_ROOT; nothing is mounted over MODELS_ROOT when the weights are in the image."""
    vols: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": text("{}Gi", p.shm_gi)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "8Gi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": ct.CACHE_ROOT},
    ]
    if p.model_source == "pvc":
        vols.append({"name": "cache", "persistentVolumeClaim": {"claimName": f"{p.name}-cache"}})
        if not p.model_is_hub:  # a local checkpoint, copied onto the volume as models/<name>
            mounts.append({"name": "cache", "mountPath": ct.MODELS_ROOT, "subPath": MODELS_SUBPATH, "readOnly": True})
    elif p.model_source == "download":
        vols.append({"name": "cache", "emptyDir": {"sizeLimit": text("{}Gi", p.cache_gi)}})
    else:  # image: the weights are in the image; the cache keeps compile results across container restarts
        vols.append({"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}})
    return vols, mounts


def _fetch_container(p: Plan) -> dict[str, Any]:
    script = (
        "import os\n"
        "os.umask(0o002)  # group-writable, as the entrypoint's files (the contract: any UID of the group)\n"
        "from huggingface_hub import snapshot_download\n"
        f"snapshot_download({p.engine_model!r}, "
        "allow_patterns=['*.json', '*.safetensors', '*.model', '*.txt', '*.jinja'])\n"
    )
    env = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": p.hf_token_secret, "key": SECRET_HF_TOKEN_KEY, "optional": True}}}]
    return {
        "name": "fetch-model",
        "image": p.image,
        "imagePullPolicy": "Always",
        "command": ["python3", "-c", ct.k8s_text(script)],  # HF_HOME and HOME: the image's (on the cache volume)
        "env": env,
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
        "securityContext": security_context(p),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cache", "mountPath": ct.CACHE_ROOT}],
    }


def _cache_dirs_container(p: Plan) -> dict[str, Any]:
    """An init step as the contract's user: make every cache folder on the volume, group-writable and setgid, so any
    UID in the group (the contract runs as group 0) can write what another pod made. It fails with the fix named when
    the volume does not let this user write: a volume that ignores fsGroup (most NFS-like ReadWriteMany volumes keep
    the ownership their provisioner gave), where --cache-group (a group that owns the volume) or --cache-chown helps."""
    dirs = " ".join(ct.sh_word(f"{ct.CACHE_ROOT}/{sub}") for sub in ct.CACHE_DIRS.values())
    script = "\n".join([
        "set -u",
        "umask 0002",
        f"for d in {dirs}; do",
        '  if ! mkdir -p "$d" 2>/dev/null || ! touch "$d/.trdeploy-write-check" 2>/dev/null; then',
        f'    echo "trdeploy: UID $(id -u) (groups $(id -G)) cannot write $d on the cache volume at {ct.CACHE_ROOT}: the volume ignores '
        'fsGroup. Render again with --cache-group GID (a group that owns the volume) or --cache-chown (a root init container takes '
        'ownership of the volume root)." >&2',
        "    exit 1",
        "  fi",
        '  rm -f "$d/.trdeploy-write-check"',
        '  chmod g+rwxs "$d" 2>/dev/null || true  # ours to change only when we made it',
        "done",
    ])
    return {
        "name": "cache-dirs",
        "image": p.image,
        "imagePullPolicy": "Always",
        "command": ["/bin/sh", "-c", ct.k8s_text(script)],  # its $(id -u) is the shell's, not a Kubernetes variable
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "securityContext": security_context(p),
        "volumeMounts": [{"name": "cache", "mountPath": ct.CACHE_ROOT}],
    }


def _cache_owner_container(p: Plan) -> dict[str, Any]:
    """--cache-chown: root, only CHOWN and FOWNER, for the volume root alone (the weights below it are not walked)."""
    script = f"chown {ct.UID}:{ct.GID} {ct.CACHE_ROOT} && chmod 2775 {ct.CACHE_ROOT}"
    sc = security_context(p)
    sc.update({"runAsNonRoot": False, "runAsUser": 0, "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}})
    return {
        "name": "cache-owner",
        "image": p.image,
        "imagePullPolicy": "Always",
        "command": ["/bin/sh", "-c", ct.k8s_text(script)],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "securityContext": sc,
        "volumeMounts": [{"name": "cache", "mountPath": ct.CACHE_ROOT}],
    }


def _node_affinity(p: Plan) -> dict[str, Any]:
    """The tier's GPUs, on nodes whose driver runs the image's CUDA build (gpu.min_driver): a node with an older
    driver would start the container and fail at CUDA init. GPU feature discovery labels both."""
    product = {"key": "nvidia.com/gpu.product", "operator": "In", "values": list(p.node_labels)}
    terms = [{"matchExpressions": [product, *driver]} for driver in p.driver_terms()]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}


def pod_spec(p: Plan, *, command: list[str], args: list[str] | None, probes: bool) -> dict[str, Any]:
    vols, mounts = volumes(p)
    container: dict[str, Any] = {"name": "vllm", "image": p.image, "imagePullPolicy": "Always", "command": command}
    if args:
        container["args"] = args
    container["env"] = _env(p)
    container["ports"] = [{"name": "http", "containerPort": p.port, "protocol": "TCP"}]
    if probes:
        container.update(_probes(p))
        container["lifecycle"] = _lifecycle(p)
    container["resources"] = _resources(p)
    container["securityContext"] = security_context(p)
    container["volumeMounts"] = mounts
    pod_sc: dict[str, Any] = {
        "runAsNonRoot": True, "runAsUser": ct.UID, "runAsGroup": ct.GID, "fsGroup": ct.GID,
        "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},
    }
    if p.supplemental_groups is not None:
        pod_sc["supplementalGroups"] = p.supplemental_groups
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": p.grace_s,
        "securityContext": pod_sc,
        "affinity": _node_affinity(p),
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    if p.runtime_class is not None:
        spec["runtimeClassName"] = p.runtime_class
    init: list[dict[str, Any]] = []
    if p.model_source == "pvc":
        if p.opts.cache_chown:
            init.append(_cache_owner_container(p))
        init.append(_cache_dirs_container(p))
    # Every pod loads its own shard, workers of a multi-node replica too: each fetches (idempotent on the PVC).
    if fetches_weights(p):
        init.append(_fetch_container(p))
    if init:
        spec["initContainers"] = init
    spec["containers"] = [container]
    spec["volumes"] = vols
    return spec


def workload(p: Plan) -> dict[str, Any]:
    annotations = {
        "trdeploy.io/profile": p.profile_name,
        "trdeploy.io/profile-sha256": p.profile_sha256,
        "trdeploy.io/startup-budget": text("{}s: {} (predicted cold start {}s, profile prediction.startup)",
                                           p.startup_budget_s, p.startup_budget_basis, f"{p.startup_cold_s:.0f}"),
    }
    # Rollout. GPUs are the scarce resource: with --surge 0 (the default) a replica stops before its replacement starts,
    # so a rollout needs no spare GPU but runs one replica short meanwhile (at one replica the service is down for a
    # start). --surge N starts N new replicas first (N spare GPU sets) and stops none until they are ready.
    rolling = {"maxSurge": p.surge, "maxUnavailable": sub(1, minimum(1, p.surge))}
    template_labels = labels(p)
    if p.nodes == 1:
        pod = pod_spec(p, command=[ct.ENTRYPOINT], args=[ct.k8s_text(a) for a in p.extra_args], probes=True)
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(p, annotations={**annotations, **checkov_skips(p)}),
            "spec": {
                "replicas": p.replicas_min,
                "revisionHistoryLimit": 3,
                # A cold start can outlast the default 600 s; the rollout is stuck only past the probe budget.
                "progressDeadlineSeconds": add(p.startup_budget_s, 300),
                "selector": {"matchLabels": selector(p)},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
                "template": {"metadata": {"labels": template_labels, "annotations": annotations}, "spec": pod},
            },
        }
    # vLLM's multi-node mode: a Ray cluster per replica, the leader serves (the image's entrypoint), the workers lend GPUs.
    wait_gpus = (
        "until python3 -c \"import ray,sys; ray.init(address='auto'); "
        f"sys.exit(0 if ray.cluster_resources().get('GPU',0)>={p.gpus} else 1)\"; do sleep 5; done"
    )
    leader_cmd = f'ray start --head --port=6379 --num-gpus={p.gpus_per_pod} && {wait_gpus} && exec {ct.ENTRYPOINT} "$@"'
    leader_args = ["sh", *p.extra_args, "--distributed-executor-backend", "ray"]
    worker_cmd = f"exec ray start --address=$(LWS_LEADER_ADDRESS):6379 --num-gpus={p.gpus_per_pod} --block"
    leader = pod_spec(p, command=["/bin/sh", "-c", leader_cmd], args=leader_args, probes=True)
    worker = pod_spec(p, command=["/bin/sh", "-c", worker_cmd], args=None, probes=False)
    # Workers serve nothing themselves; their health is their Ray node's.
    worker["containers"][0]["readinessProbe"] = {"exec": {"command": ["ray", "status"]}, "periodSeconds": 30, "timeoutSeconds": 20}
    worker["containers"][0]["livenessProbe"] = {"exec": {"command": ["ray", "status"]}, "periodSeconds": 30, "timeoutSeconds": 20, "failureThreshold": 5}
    worker["containers"][0].pop("ports")
    leader_labels = {**template_labels, "trdeploy.io/role": "leader"}
    worker_labels = {**template_labels, "trdeploy.io/role": "worker"}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": meta(p, annotations={**annotations, **checkov_skips(p)}),
        "spec": {
            "replicas": p.replicas_min,
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": rolling},
            "leaderWorkerTemplate": {
                "size": p.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {"metadata": {"labels": leader_labels, "annotations": annotations}, "spec": leader},
                "workerTemplate": {"metadata": {"labels": worker_labels}, "spec": worker},
            },
        },
    }


def service(p: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(p),
        "spec": {
            "type": "ClusterIP",
            "selector": serving_selector(p),
            "ports": [{"name": "http", "port": p.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pvc(p: Plan) -> dict[str, Any]:
    spec: dict[str, Any] = {
        # ReadWriteOnce when one replica is all the plan runs (block disks, every cluster's default class offers it);
        # ReadWriteMany when replicas on several nodes share the weights and the compile cache (the first pod's init
        # container fills it, later ones find it there); make_plan warns what the class must offer.
        "accessModes": [p.access_mode],
        "resources": {"requests": {"storage": text("{}Gi", p.cache_gi)}},
    }
    if p.storage_class is not None:
        spec["storageClassName"] = p.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(p, f"{p.name}-cache"), "spec": spec}


def _behavior(p: Plan) -> dict[str, Any]:
    return {
        # A new replica helps only after it starts; decide on load sustained about that long.
        "scaleUp": {"stabilizationWindowSeconds": p.scale_up_window_s,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": maximum(15, p.scale_up_window_s)}]},
        "scaleDown": {"stabilizationWindowSeconds": 600, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]},
    }


def _scale_target(p: Plan) -> dict[str, str]:
    if p.nodes > 1:
        return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "name": p.name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": p.name}


def scaled_object(p: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta(p, annotations={"trdeploy.io/target": p.target_basis}),
        "spec": {
            "scaleTargetRef": _scale_target(p),
            "minReplicaCount": p.replicas_min,
            "maxReplicaCount": p.replicas_max,
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            # No metric (Prometheus down, no scrape of these pods): the query returns nothing, which KEDA treats as an
            # error (ignoreNullValues "false"), and after 3 failed polls it holds `replicas` (the plan's peak by default)
            # instead of reading "no load"; the VllmMetricsAbsent alert says why.
            "fallback": {"failureThreshold": 3, "replicas": p.fallback_replicas},
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(p)}},
            "triggers": [{
                "type": "prometheus",
                "metricType": "AverageValue",  # KEDA divides the total by the replicas: per-replica in-flight requests
                "metadata": {
                    "serverAddress": p.prometheus_url,
                    "query": in_flight_total(p),
                    "threshold": as_str(p.target),
                    "ignoreNullValues": "false",
                },
            }],
        },
    }


def hpa(p: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(p, annotations={
            "trdeploy.io/target": p.target_basis,
            "trdeploy.io/metric": f"{hpa_metric(p)} per pod = {p.m.num_requests_running} + {p.m.num_requests_waiting} of this deployment's "
                                  "scrape job (the prometheus-adapter rule `render-k8s --json` prints as facts.hpa_adapter_rule)",
        }),
        "spec": {
            "scaleTargetRef": _scale_target(p),
            "minReplicas": p.replicas_min,
            "maxReplicas": p.replicas_max,
            "metrics": [{"type": "Pods", "pods": {
                # Per pod of the scale target; the adapter rule's series are this deployment's own (namespace, scrape job).
                "metric": {"name": hpa_metric(p)},
                "target": {"type": "AverageValue", "averageValue": as_str(p.target)},
            }}],
            "behavior": _behavior(p),
        },
    }


def pdb(p: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(p),
        "spec": {
            # One pod at a time through voluntary disruptions (node drains, cluster upgrades). Never minAvailable = the
            # replicas: when the autoscaler sits at its minimum (one replica: always) that allows zero disruptions and
            # every drain and upgrade hangs. At one replica a drain stops the server until it starts elsewhere (the
            # price of one replica; --replicas-min 2 avoids it).
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(p)},
            # A crash-looping pod must not block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def network_policy(p: Plan) -> dict[str, Any]:
    def namespace(ns: str) -> dict[str, Any]:
        return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}

    peers = [{"podSelector": {}}, namespace(p.monitoring_namespace)]  # clients in the namespace; the scraper
    ingress: list[dict[str, Any]] = [
        # --allow-namespace: an ingress controller or a gateway in its own namespace.
        {"from": extended(peers, p.allow_namespaces, namespace), "ports": [{"protocol": "TCP", "port": p.port}]}
    ]
    if p.nodes > 1:
        # Ray and NCCL between the pods of one replica group use many ports.
        ingress.append({"from": [{"podSelector": {"matchLabels": selector(p)}}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(p),
        "spec": {"podSelector": {"matchLabels": selector(p)}, "policyTypes": ["Ingress"], "ingress": ingress},
    }
