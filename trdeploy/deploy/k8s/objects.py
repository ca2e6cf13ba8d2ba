"""The Kubernetes objects: builders that take only the plan.

The serving container is the image `trdeploy build` made: the pod runs the image's own entrypoint as the
contract's user (trdeploy.deploy.container), with only the API key, the profile's hash and (when it
differs from the image's) the port added. Nothing here defines a path, a user or a command of its own.
"""

from __future__ import annotations

from typing import Any

from trdeploy.deploy import container as ct
from trdeploy.deploy.k8s.common import labels, meta, selector, serving_selector
from trdeploy.deploy.k8s.observability import HPA_METRIC, in_flight_total
from trdeploy.deploy.k8s.plan import ENDPOINT_PROPAGATION_S, PROBE_PERIOD_S, SECRET_API_KEY_KEY, SECRET_HF_TOKEN_KEY, Plan

MODELS_SUBPATH = "models"  # local checkpoints on the cache volume: <volume>/models/<name>, read at /models/<name>


def security_context(p: Plan) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": ct.UID,
        "runAsGroup": ct.GID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


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


def _drain_script(p: Plan) -> str:
    """preStop: wait for endpoint removal, then until no request is running or waiting (or the budget ends)."""
    names = (p.m.num_requests_running, p.m.num_requests_waiting)
    return (
        "import time,urllib.request\n"
        f"time.sleep({ENDPOINT_PROPAGATION_S})\n"
        f"end=time.time()+{p.drain_s - ENDPOINT_PROPAGATION_S}\n"
        "while time.time()<end:\n"
        "    try:\n"
        f"        t=urllib.request.urlopen('http://127.0.0.1:{p.port}{p.m.metrics_path}',timeout=5).read().decode()\n"
        f"        n=sum(float(l.rsplit(' ',1)[1]) for l in t.splitlines() if l.startswith({names!r}))\n"
        "    except Exception:\n"
        "        break\n"
        "    if n==0:\n"
        "        break\n"
        "    time.sleep(2)\n"
    )


def _probes(p: Plan) -> dict[str, Any]:
    get = {"path": ct.HEALTH_PATH, "port": "http"}
    return {
        # The profile's start-up budget (the same number as the image's HEALTHCHECK start period).
        "startupProbe": {"httpGet": get, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 5,
                         "failureThreshold": -(-p.startup_budget_s // PROBE_PERIOD_S)},
        "readinessProbe": {"httpGet": get, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": get, "periodSeconds": 10, "timeoutSeconds": 10, "failureThreshold": 6},
    }


def _resources(p: Plan) -> dict[str, Any]:
    amounts = {"cpu": str(p.cpu), "memory": f"{p.memory_gi}Gi", "nvidia.com/gpu": str(p.gpus_per_pod)}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def volumes(p: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, the serving container's mounts). The cache volume is always at the contract's
    CACHE_ROOT; nothing is mounted over MODELS_ROOT when the weights are in the image."""
    vols: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{p.shm_gi}Gi"}},
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
        vols.append({"name": "cache", "emptyDir": {"sizeLimit": f"{p.cache_gi}Gi"}})
    else:  # image: the weights are in the image; the cache keeps compile results across container restarts
        vols.append({"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}})
    return vols, mounts


def _fetch_container(p: Plan) -> dict[str, Any]:
    script = (
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


def pod_spec(p: Plan, *, command: list[str], args: list[str] | None, probes: bool) -> dict[str, Any]:
    vols, mounts = volumes(p)
    container: dict[str, Any] = {"name": "vllm", "image": p.image, "imagePullPolicy": "Always", "command": command}
    if args:
        container["args"] = args
    container["env"] = _env(p)
    container["ports"] = [{"name": "http", "containerPort": p.port, "protocol": "TCP"}]
    if probes:
        container.update(_probes(p))
        container["lifecycle"] = {"preStop": {"exec": {"command": ["python3", "-c", _drain_script(p)]}}}
    container["resources"] = _resources(p)
    container["securityContext"] = security_context(p)
    container["volumeMounts"] = mounts
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": p.grace_s,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": ct.UID, "runAsGroup": ct.GID, "fsGroup": ct.GID,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},
        },
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
            "matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": list(p.node_labels)}],
        }]}}},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    if p.opts.runtime_class:
        spec["runtimeClassName"] = p.opts.runtime_class
    # Every pod loads its own shard, workers of a multi-node replica too: each fetches (idempotent on the PVC).
    if fetches_weights(p):
        spec["initContainers"] = [_fetch_container(p)]
    spec["containers"] = [container]
    spec["volumes"] = vols
    return spec


def workload(p: Plan) -> dict[str, Any]:
    annotations = {
        "trdeploy.io/profile": p.profile_name,
        "trdeploy.io/profile-sha256": p.profile_sha256,
        "trdeploy.io/startup-budget": f"{p.startup_budget_s}s: {p.startup_budget_basis} (predicted cold start {p.startup_cold_s:.0f}s, profile prediction.startup)",
    }
    template_labels = labels(p)
    if p.nodes == 1:
        pod = pod_spec(p, command=[ct.ENTRYPOINT], args=[ct.k8s_text(a) for a in p.extra_args], probes=True)
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(p, annotations=annotations),
            "spec": {
                "replicas": p.replicas_min,
                "revisionHistoryLimit": 3,
                # A cold start can outlast the default 600 s; the rollout is stuck only past the probe budget.
                "progressDeadlineSeconds": p.startup_budget_s + 300,
                "selector": {"matchLabels": selector(p)},
                # GPUs are the scarce resource: replace one replica at a time, never ask for a spare.
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
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
        "metadata": meta(p, annotations=annotations),
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
        # ReadWriteMany: every replica (and node) reads the same weights and compile cache; the first
        # pod's init container fills it, later ones find it there.
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": f"{p.cache_gi}Gi"}},
    }
    if p.opts.storage_class:
        spec["storageClassName"] = p.opts.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(p, f"{p.name}-cache"), "spec": spec}


def _behavior(p: Plan) -> dict[str, Any]:
    return {
        # A new replica helps only after it starts; decide on load sustained about that long.
        "scaleUp": {"stabilizationWindowSeconds": p.scale_up_window_s,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": max(15, p.scale_up_window_s)}]},
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
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(p)}},
            "triggers": [{
                "type": "prometheus",
                "metricType": "AverageValue",  # KEDA divides the total by the replicas: per-replica in-flight requests
                "metadata": {
                    "serverAddress": p.opts.prometheus_url,
                    "query": in_flight_total(p),
                    "threshold": str(p.target),
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


def pdb(p: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(p),
        "spec": {
            # The capacity floor: the replicas the average load needs stay up through voluntary disruptions.
            "minAvailable": p.replicas_min * p.nodes,
            "selector": {"matchLabels": selector(p)},
            # A crash-looping pod must not block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def network_policy(p: Plan) -> dict[str, Any]:
    ingress: list[dict[str, Any]] = [
        {
            "from": [
                {"podSelector": {}},  # clients in the namespace
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": p.opts.monitoring_namespace}}},
            ],
            "ports": [{"protocol": "TCP", "port": p.port}],
        }
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
