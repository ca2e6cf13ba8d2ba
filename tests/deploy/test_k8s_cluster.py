"""The ten points of README "On a real cluster" (issue 21), each with the flag or default that answers it.

What Prometheus computes is checked by the real promtool (`promtool test rules`, scripts/ci/k8s-tools.sh)
on series labelled as prometheus-operator labels them (namespace, job = the Service, or "<ns>/<PodMonitor>"
for a PodMonitor, pod); node affinity by Kubernetes' node-selector semantics over GPU feature discovery's
labels; the pods themselves run in tests/deploy/test_k8s_pod.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli
from trdeploy.deploy import container as ct
from trdeploy.deploy.k8s import RenderOptions, render
from trdeploy.deploy.k8s.observability import hpa_adapter_rule, in_flight_total
from trdeploy.deploy.validate import validate_folder
from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError

H100_8B = ROOT / "recipes" / "llama-3-8b-bf16-h100.yaml"  # capacity plan: 1 replica
L40S_AWQ = ROOT / "recipes" / "llama-3-8b-awq-l40s.yaml"  # capacity plan: 1-2 replicas
L40S_BF16 = ROOT / "recipes" / "llama-3-8b-bf16-l40s.yaml"  # the same served name as L40S_AWQ
RTX4090 = ROOT / "recipes" / "llama-3-8b-bf16-rtx4090.yaml"  # CUDA 12.9 build


def _load(path: Path) -> DeploymentProfile:
    return DeploymentProfile.load(path)


def _kind(rendered, kind: str) -> dict:
    return next(o for o in rendered.objects if o["kind"] == kind)


def _pod(rendered) -> dict:
    work = rendered.objects[0]
    spec = work["spec"]
    return spec["template"]["spec"] if work["kind"] == "Deployment" else spec["leaderWorkerTemplate"]["leaderTemplate"]["spec"]


# --- 1. the cache PVC -------------------------------------------------------------------------------


def test_cache_pvc_access_mode_follows_the_capacity_plan_and_says_what_the_cluster_needs():
    one = render(_load(H100_8B))
    assert one.plan.replicas_max == 1
    assert _kind(one, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not any("ReadWriteMany" in w for w in one.warnings)
    two = render(_load(L40S_AWQ))
    assert two.plan.replicas_max == 2
    pvc = _kind(two, "PersistentVolumeClaim")["spec"]
    assert pvc["accessModes"] == ["ReadWriteMany"] and "storageClassName" not in pvc
    warning = next(w for w in two.warnings if "ReadWriteMany" in w)
    assert "default storage class must offer ReadWriteMany" in warning and "NFS" in warning and "--storage-class" in warning
    named = render(_load(L40S_AWQ), RenderOptions(storage_class="efs-sc"))
    assert _kind(named, "PersistentVolumeClaim")["spec"]["storageClassName"] == "efs-sc"
    assert any("storage class 'efs-sc' must offer ReadWriteMany" in w for w in named.warnings)
    forced = render(_load(L40S_AWQ), RenderOptions(access_mode="ReadWriteOnce"))
    assert _kind(forced, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert any("Multi-Attach" in w for w in forced.warnings)
    assert render(_load(H100_8B), RenderOptions(access_mode="ReadWriteMany")).facts["cache_access_mode"] == "ReadWriteMany"
    download = render(_load(L40S_AWQ.with_name("llama-3-8b-bf16-l40s.yaml")), RenderOptions(model_source="download"))
    assert "PersistentVolumeClaim" not in {o["kind"] for o in download.objects} and not any("ReadWrite" in w for w in download.warnings)


def test_cache_pvc_read_write_once_cannot_span_nodes(tmp_path):
    from tests.deploy.test_k8s import _two_gpu_nodes

    with pytest.raises(TrdeployError, match="a replica spans 2 nodes, and a ReadWriteOnce volume attaches to one node"):
        render(_two_gpu_nodes(), RenderOptions(multi_node=True, access_mode="ReadWriteOnce"))
    assert render(_two_gpu_nodes(), RenderOptions(multi_node=True)).facts["cache_access_mode"] == "ReadWriteMany"
    proc = run_cli("render-k8s", str(L40S_AWQ), "-o", str(tmp_path / "o"), "--access-mode", "ReadWriteSome")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_cache_ownership_options_render_an_init_step_supplemental_groups_or_a_root_chown(tmp_path):
    pod = _pod(render(_load(H100_8B)))
    dirs = pod["initContainers"][0]
    assert dirs["name"] == "cache-dirs" and dirs["securityContext"]["runAsUser"] == ct.UID and dirs["securityContext"]["runAsNonRoot"]
    assert all(f"{ct.CACHE_ROOT}/{sub}" in dirs["command"][-1] for sub in ct.CACHE_DIRS.values())
    assert "umask 0002" in dirs["command"][-1] and "chmod g+rwxs" in dirs["command"][-1]
    assert "supplementalGroups" not in pod["securityContext"]
    assert _pod(render(_load(H100_8B), RenderOptions(cache_group=5000)))["securityContext"]["supplementalGroups"] == [5000]
    chown = render(_load(H100_8B), RenderOptions(cache_chown=True))
    owner = _pod(chown)["initContainers"][0]
    assert owner["name"] == "cache-owner" and owner["command"][-1] == f"chown {ct.UID}:{ct.GID} {ct.CACHE_ROOT} && chmod 2775 {ct.CACHE_ROOT}"
    # checkov passes with the root container only because the object says why (its skip annotations).
    notes = chown.objects[0]["metadata"]["annotations"]
    assert {v.split("=")[0] for k, v in notes.items() if k.startswith("checkov.io/skip")} == {"CKV_K8S_22", "CKV_K8S_25"}
    from tests.deploy.test_k8s import _write

    report = validate_folder(_write(chown, tmp_path / "chown"))
    assert report.checkov["failed"] == []
    # image and download modes have an emptyDir (fsGroup always applies): no init step
    assert "initContainers" not in _pod(render(_load(L40S_AWQ), RenderOptions(model_source="image", image="r/x:1")))


# --- 2. the root file system -------------------------------------------------------------------------


def test_root_file_system_is_writable_by_default_and_read_only_on_request(tmp_path):
    default = render(_load(H100_8B))
    pod = _pod(default)
    assert {c["securityContext"]["readOnlyRootFilesystem"] for c in [*pod["initContainers"], *pod["containers"]]} == {False}
    assert default.objects[0]["metadata"]["annotations"]["checkov.io/skip1"].startswith("CKV_K8S_22=writable root file system by default")
    strict = render(_load(H100_8B), RenderOptions(read_only_root=True))
    pod = _pod(strict)
    assert {c["securityContext"]["readOnlyRootFilesystem"] for c in [*pod["initContainers"], *pod["containers"]]} == {True}
    assert not any(k.startswith("checkov.io/") for k in strict.objects[0]["metadata"]["annotations"])
    from tests.deploy.test_k8s import _write

    # Without the skip, checkov passes the read-only pods; with the writable root it would fail CKV_K8S_22.
    assert validate_folder(_write(strict, tmp_path / "ro")).checkov["failed"] == []
    folder = _write(default, tmp_path / "rw")
    text = (folder / "deployment.yaml").read_text()
    (folder / "deployment.yaml").write_text(text.replace("checkov.io/skip1:", "checkov-removed:"))
    with pytest.raises(TrdeployError, match="CKV_K8S_22"):
        validate_folder(folder)


# --- 3. monitoring labels, KEDA without vector(0), scoped to this deployment ----------------------


def test_monitoring_labels_reach_every_object_a_prometheus_selects(tmp_path):
    bare = render(_load(H100_8B))
    assert any("release: <its Helm release>" in w and "--monitoring-label release=" in w for w in bare.warnings)
    for monitor in ("servicemonitor", "podmonitor"):
        r = render(_load(H100_8B), RenderOptions(monitor=monitor, monitoring_label=["release=kube-prometheus-stack", "team.example/x=llm"]))
        for kind in ("ServiceMonitor" if monitor == "servicemonitor" else "PodMonitor", "PrometheusRule"):
            labels = _kind(r, kind)["metadata"]["labels"]
            assert labels["release"] == "kube-prometheus-stack" and labels["team.example/x"] == "llm"
        assert "release" not in _kind(r, "Deployment")["metadata"]["labels"]
        assert not any("--monitoring-label" in w for w in r.warnings)
    for bad in ("release", "=x", "bad key=x", "release=no spaces"):
        proc = run_cli("render-k8s", str(H100_8B), "-o", str(tmp_path / "o"), "--monitoring-label", bad)
        assert proc.returncode == 2 and "--monitoring-label" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _promtool() -> str:
    tool = ROOT / ".venv" / "tools" / "promtool"
    found = str(tool) if tool.is_file() else shutil.which("promtool")
    if not found:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("promtool missing (scripts/ci/k8s-tools.sh installs it)", pytrace=False)
        pytest.skip("promtool missing (scripts/ci/k8s-tools.sh installs it)")
    return found


def _series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def _promtool_test(tmp_path: Path, tests: list[dict], groups: list[dict] | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups or []}))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "15s", "tests": tests}, sort_keys=False))
    return subprocess.run([_promtool(), "test", "rules", str(tmp_path / "test.yaml")], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, check=False)


def _vllm_pod_series(namespace: str, job: str, pod: str, model: str, running: int, waiting: int) -> list[dict[str, str]]:
    """What prometheus-operator stores for one vLLM pod: vLLM's labels plus the scrape's target labels."""
    labels = {"namespace": namespace, "job": job, "service": job.rsplit("/", 1)[-1], "pod": pod, "container": "vllm",
              "endpoint": "http", "engine": "0", "model_name": model}
    return [_series("vllm:num_requests_running", labels, f"{running}x40"), _series("vllm:num_requests_waiting", labels, f"{waiting}x40")]


def test_keda_reads_only_this_deployments_load_and_errors_without_metrics(tmp_path):
    """The bf16 and the AWQ recipe serve the same model name; in one namespace each scales on its own pods only.
    With no series the query returns nothing (KEDA with ignoreNullValues "false" counts a failure and holds its
    fallback), never 0 (`or vector(0)` read a missing scrape as no load)."""
    ours, twin = render(_load(L40S_AWQ)), render(_load(L40S_BF16))
    assert ours.plan.served_model_name == twin.plan.served_model_name
    so = _kind(ours, "ScaledObject")["spec"]
    trigger = so["triggers"][0]["metadata"]
    assert "vector(0)" not in trigger["query"] and trigger["ignoreNullValues"] == "false"
    assert so["fallback"] == {"failureThreshold": 3, "replicas": ours.plan.replicas_max}
    assert render(_load(L40S_AWQ), RenderOptions(fallback_replicas=1)).objects[3]["spec"]["fallback"]["replicas"] == 1
    model = ours.plan.served_model_name
    series = [
        *_vllm_pod_series("llm", ours.plan.name, f"{ours.plan.name}-a", model, 3, 1),
        *_vllm_pod_series("llm", ours.plan.name, f"{ours.plan.name}-b", model, 5, 0),
        *_vllm_pod_series("llm", twin.plan.name, f"{twin.plan.name}-a", model, 60, 40),  # the twin, busy
        *_vllm_pod_series("other", ours.plan.name, f"{ours.plan.name}-a", model, 70, 0),  # another namespace
    ]
    query = trigger["query"]
    proc = _promtool_test(tmp_path, [
        {"interval": "15s", "input_series": series,
         "promql_expr_test": [{"expr": query, "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 9}]}]},
        {"interval": "15s", "input_series": series[4:],  # our pods not scraped
         "promql_expr_test": [{"expr": query, "eval_time": "5m", "exp_samples": []}]},
    ])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The query the twin scales on reads the twin only (100), and a PodMonitor's job is "<namespace>/<name>".
    pm = render(_load(L40S_AWQ), RenderOptions(monitor="podmonitor"))
    pm_series = _vllm_pod_series("llm", f"llm/{pm.plan.name}", f"{pm.plan.name}-a", model, 2, 2)
    proc = _promtool_test(tmp_path, [{"interval": "15s", "input_series": series + pm_series, "promql_expr_test": [
        {"expr": in_flight_total(twin.plan), "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 100}]},
        {"expr": in_flight_total(pm.plan), "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 4}]},
    ]}])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hpa_adapter_rule_reads_only_this_deployments_series(tmp_path):
    ours, twin = render(_load(L40S_AWQ), RenderOptions(autoscaler="hpa")), render(_load(L40S_BF16), RenderOptions(autoscaler="hpa"))
    rule = ours.facts["hpa_adapter_rule"]
    assert rule == hpa_adapter_rule(ours.plan) and rule["name"]["as"] == _kind(ours, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert rule["name"]["as"] != twin.facts["hpa_adapter_rule"]["name"]["as"]
    model = ours.plan.served_model_name
    series = [*_vllm_pod_series("llm", ours.plan.name, f"{ours.plan.name}-a", model, 3, 1),
              *_vllm_pod_series("llm", twin.plan.name, f"{twin.plan.name}-a", model, 60, 40)]
    # prometheus-adapter fills <<.LabelMatchers>> with the HPA's pods and <<.GroupBy>> with "pod".
    matchers = f'namespace="llm",pod=~"{ours.plan.name}-a|{twin.plan.name}-a"'
    metrics = rule["metricsQuery"].replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod")
    proc = _promtool_test(tmp_path, [{"interval": "15s", "input_series": series, "promql_expr_test": [
        {"expr": f"count({rule['seriesQuery']})", "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 1}]},
        {"expr": metrics, "eval_time": "5m", "exp_samples": [{"labels": f'{{pod="{ours.plan.name}-a"}}', "value": 4}]},
    ]}])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alerts_are_scoped_and_say_when_the_metrics_are_missing(tmp_path):
    ours, twin = render(_load(L40S_AWQ)), render(_load(L40S_BF16))
    groups = _kind(ours, "PrometheusRule")["spec"]["groups"]
    model = ours.plan.served_model_name
    busy_twin = _vllm_pod_series("llm", twin.plan.name, f"{twin.plan.name}-a", model, 60, 500)
    calm = _vllm_pod_series("llm", ours.plan.name, f"{ours.plan.name}-a", model, 3, 1)
    name = ours.plan.name
    proc = _promtool_test(tmp_path, [
        # Our pods are calm while the twin queues 500: no queue alert for us (the old selector summed both).
        {"interval": "1m", "input_series": calm + busy_twin, "alert_rule_test": [
            {"eval_time": "20m", "alertname": "VllmQueueBuilding", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "VllmMetricsAbsent", "exp_alerts": []}]},
        # Nothing scraped from our pods for 20 minutes: the absent alert fires (the autoscaler is on its fallback).
        {"interval": "1m", "input_series": busy_twin, "alert_rule_test": [
            {"eval_time": "20m", "alertname": "VllmMetricsAbsent", "exp_alerts": [{
                "exp_labels": {"severity": "critical", "service": name, "namespace": "llm", "job": name, "model_name": model},
                "exp_annotations": {"summary": f"{name}: no vLLM metrics scraped",
                                    "description": next(r for g in groups for r in g["rules"] if r["alert"] == "VllmMetricsAbsent")["annotations"]["description"]},
            }]}]},
    ], groups=groups)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- 4. PDB and rollout --------------------------------------------------------------------------------


def test_pdb_always_allows_one_disruption_and_the_rollout_can_surge(tmp_path):
    from tests.deploy.test_k8s import _two_gpu_nodes

    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        pdb = _kind(render(_load(recipe)), "PodDisruptionBudget")["spec"]
        assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb, recipe.name
    lws = render(_two_gpu_nodes(), RenderOptions(multi_node=True, surge=1))
    assert _kind(lws, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert lws.objects[0]["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxSurge": 1, "maxUnavailable": 0}
    surge = render(_load(L40S_AWQ), RenderOptions(surge=2))
    assert surge.objects[0]["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 2, "maxUnavailable": 0}
    rwo = render(_load(H100_8B), RenderOptions(surge=1))
    assert any("--surge with a ReadWriteOnce cache PVC" in w for w in rwo.warnings)


# --- 5. drain -------------------------------------------------------------------------------------------


def test_drain_window_comes_from_the_profile_and_the_grace_period_covers_it():
    from trdeploy.sizing.startup import shutdown_timeout_s
    from trdeploy.sizing.tuning import TuneRequest, tune

    prof = _load(H100_8B)
    assert prof.engine_args.shutdown_timeout == shutdown_timeout_s(prof.prediction.e2e_ms) == 30
    assert ["--shutdown-timeout", "30"] == prof.engine_args.serve_command()[-2:]
    long = tune(TuneRequest(gpu="l4", max_model_len=8192, output_tokens=2048, prompt_tokens=512)).profile
    assert long.engine_args.shutdown_timeout == math.ceil(2 * long.prediction.e2e_ms / 1000) > 30
    r = render(long)
    pod = _pod(r)
    c = pod["containers"][0]
    assert "args" not in c  # the image's own command carries --shutdown-timeout
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
    assert pod["terminationGracePeriodSeconds"] == 10 + long.engine_args.shutdown_timeout + 30 == r.facts["termination_grace_s"]
    assert r.facts["shutdown_timeout_s"] == long.engine_args.shutdown_timeout
    assert any(a.startswith(f"Drain: vLLM --shutdown-timeout {long.engine_args.shutdown_timeout} s") for a in long.assumptions)


# --- 6. ingress controllers ------------------------------------------------------------------------------


def test_allow_namespace_admits_ingress_controllers(tmp_path):
    r = render(_load(H100_8B), RenderOptions(allow_namespace=["ingress-nginx", "envoy-gateway-system", "ingress-nginx"]))
    peers = _kind(r, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    names = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers if "namespaceSelector" in p]
    assert names == ["monitoring", "ingress-nginx", "envoy-gateway-system"]
    assert _kind(r, "NetworkPolicy")["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8000}]
    proc = run_cli("render-k8s", str(H100_8B), "-o", str(tmp_path / "o"), "--allow-namespace", "Ingress_NGINX")
    assert proc.returncode == 2 and "--allow-namespace" in proc.stderr and not (tmp_path / "o").exists()


# --- 8. the driver ------------------------------------------------------------------------------------------


def _matches(requirement: dict, labels: dict[str, str]) -> bool:
    """Kubernetes' node-selector requirement semantics (k8s.io/component-helpers/scheduling/corev1/nodeaffinity):
    In/NotIn/Exists/DoesNotExist on the label; Gt/Lt parse both the one value and the label as integers and
    do not match a missing label or one that is not an integer."""
    key, op, values = requirement["key"], requirement["operator"], requirement.get("values", [])
    if op in ("Gt", "Lt"):
        try:
            have, bound = int(labels[key]), int(values[0])
        except (KeyError, ValueError):
            return False
        return have > bound if op == "Gt" else have < bound
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    return (key in labels) == (op == "Exists")


def _schedulable(pod: dict, labels: dict[str, str]) -> bool:
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return any(all(_matches(r, labels) for r in t["matchExpressions"]) for t in terms)  # terms ORed, requirements ANDed


def _gfd_labels(product: str, driver: str, legacy: bool = False) -> dict[str, str]:
    """Node labels as GPU feature discovery writes them (k8s-device-plugin internal/lm/nvml.go)."""
    major, minor, *rest = driver.split(".")
    rev = rest[0] if rest else ""
    labels = {"nvidia.com/gpu.product": product, "nvidia.com/cuda.driver.major": major, "nvidia.com/cuda.driver.minor": minor,
              "nvidia.com/cuda.driver.rev": rev}
    if not legacy:
        labels.update({"nvidia.com/cuda.driver-version.major": major, "nvidia.com/cuda.driver-version.minor": minor,
                       "nvidia.com/cuda.driver-version.revision": rev, "nvidia.com/cuda.driver-version.full": driver})
    return labels


@pytest.mark.parametrize("recipe, product, older, newer", [
    (H100_8B, "NVIDIA-H100-80GB-HBM3", ["580.65.05", "580.64.99", "575.57.08", "570.172.08", "580.65"],
     ["580.65.06", "580.65.07", "580.82.07", "581.01.00", "590.10.01"]),
    (RTX4090, "NVIDIA-GeForce-RTX-4090", ["575.51.02", "575.50.99", "570.124.06"], ["575.51.03", "575.57.08", "580.65.06"]),
])
def test_node_affinity_keeps_pods_off_nodes_with_an_older_driver(recipe, product, older, newer):
    prof = _load(recipe)
    pod = _pod(render(prof))
    assert (prof.gpu.min_driver, prof.gpu.cuda) == ({"H100": ("580.65.06", "13.0")}.get(product.split("-")[1], ("575.51.03", "12.9")))
    for driver in older:
        assert not _schedulable(pod, _gfd_labels(product, driver)), driver
    for driver in newer:
        assert _schedulable(pod, _gfd_labels(product, driver)), driver
    assert not _schedulable(pod, _gfd_labels("NVIDIA-A100-SXM4-80GB", newer[-1]))  # still the tier's GPUs only
    # GFD older than 0.15 writes only the legacy names: --driver-labels legacy; none keeps the GPU match alone.
    assert not _schedulable(pod, _gfd_labels(product, newer[0], legacy=True))
    legacy = _pod(render(prof, RenderOptions(driver_labels="legacy")))
    assert _schedulable(legacy, _gfd_labels(product, newer[0], legacy=True)) and not _schedulable(legacy, _gfd_labels(product, older[0], legacy=True))
    none = _pod(render(prof, RenderOptions(driver_labels="none")))
    assert _schedulable(none, {"nvidia.com/gpu.product": product})


# --- 9. multi-node: TP per node x PP across nodes --------------------------------------------------------


def test_multi_node_replica_is_tp_per_node_times_pp_across_nodes(tmp_path):
    from tests.deploy.test_k8s import _two_gpu_nodes
    from trdeploy.sizing.tuning import TuneRequest, tune

    prof = _two_gpu_nodes()
    ea = prof.engine_args
    assert (ea.tensor_parallel_size, ea.pipeline_parallel_size, prof.gpu.count, prof.gpu.gpus_per_node) == (2, 2, 4, 2)
    assert ["--tensor-parallel-size", "2", "--pipeline-parallel-size", "2"] == ea.serve_command()[5:9]
    note = next(a for a in prof.assumptions if a.startswith("Multi-node layout"))
    assert "tensor parallelism 2 within a node x pipeline parallelism 2 across nodes" in note and "not modelled" in note
    # The prediction: a token passes both stages, so decode runs at the pace of one 2-GPU engine, slower than TP 4
    # within one node; the memory of 4 GPUs.
    one_node = tune(TuneRequest(gpu="h100", model="llama-3-70b", gpus=4, max_model_len=8192, concurrency=32)).profile
    assert one_node.engine_args.pipeline_parallel_size == 1 and one_node.engine_args.tensor_parallel_size == 4
    assert prof.prediction.tpot_ms > 1.3 * one_node.prediction.tpot_ms
    assert prof.prediction.kv_cache_tokens == one_node.prediction.kv_cache_tokens
    # Big enough for two 8-GPU nodes: TP 8 x PP 2.
    big = tune(TuneRequest(gpu="h100", model="llama-3-70b", gpus=16, max_model_len=8192)).profile
    assert (big.engine_args.tensor_parallel_size, big.engine_args.pipeline_parallel_size) == (8, 2)
    # GPUs that do not fill whole nodes, and a profile with tensor parallelism across nodes: one line each.
    proc = run_cli("tune", "--gpu", "h100", "--model", "llama-3-70b", "--gpus", "8", "--gpus-per-node", "3", "--max-model-len", "8192")
    assert proc.returncode == 2 and "do not fill whole nodes of 3 GPUs" in proc.stderr, proc.stderr
    cross = one_node.model_copy(deep=True)
    cross.gpu.gpus_per_node = 2
    path = tmp_path / "cross.yaml"
    cross.save(path)
    proc = run_cli("render-k8s", str(path), "-o", str(tmp_path / "o"), "--multi-node")
    line = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "tensor parallelism 4 on nodes of 2 GPUs" in line and "pipeline parallelism across nodes" in line


def test_keda_and_cli_json_name_the_new_facts(tmp_path):
    proc = run_cli("render-k8s", str(L40S_AWQ), "-o", str(tmp_path / "o"), "--json", "--monitoring-label", "release=kps",
                   "--allow-namespace", "ingress-nginx", "--surge", "1", "--read-only-root")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)["facts"]
    assert {"shutdown_timeout_s", "prestop_s", "termination_grace_s", "cache_access_mode"} <= set(facts)
    assert facts["termination_grace_s"] == facts["prestop_s"] + facts["shutdown_timeout_s"] + 30
