"""`trdeploy render-k8s`: every recipe renders and validates with the real tools; k8s/ stays in sync;
bad profiles get one-line errors; the rendered container runs in Docker and `bench` measures it."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli
from trdeploy.deploy import container as ct
from trdeploy.deploy import vllm_metrics
from trdeploy.deploy.image import default_tag
from trdeploy.deploy.k8s import RenderOptions, file_texts, render
from trdeploy.deploy.validate import CHECKOV_SKIPS, K8S_VERSIONS, validate_folder
from trdeploy.deployment import DeploymentProfile, Startup
from trdeploy.errors import TrdeployError
from trdeploy.output import OUTPUT_MARKER

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
H100_8B = ROOT / "recipes" / "llama-3-8b-bf16-h100.yaml"
H100_70B_X4 = ROOT / "recipes" / "llama-3-70b-bf16-h100-x4.yaml"


def _load(path: Path = H100_8B) -> DeploymentProfile:
    return DeploymentProfile.load(path)


def _write(rendered, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in file_texts(rendered).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _kind(rendered, kind: str) -> dict:
    return next(o for o in rendered.objects if o["kind"] == kind)


def _container(workload: dict) -> dict:
    spec = workload["spec"]
    pod = spec["template"]["spec"] if workload["kind"] == "Deployment" else spec["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
    return pod["containers"][0]


# --- the committed output -----------------------------------------------------------------------


def _make_k8s():
    spec = importlib.util.spec_from_file_location("make_k8s", ROOT / "scripts" / "make_k8s.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_k8s_folder_and_charts_match_the_code():
    module = _make_k8s()
    files = module.render()
    assert len([n for n in files if n.startswith("k8s/")]) == 10 * len(RECIPES)
    assert {n.split("/")[1] for n in files if n.startswith("charts/")} == {r.stem for r in RECIPES}
    for name, text in files.items():
        path = ROOT / name
        assert path.is_file() and path.read_text(encoding="utf-8") == text, f"{name} is stale: run python scripts/make_k8s.py"
    assert module.committed() == set(files), "k8s/ or charts/ holds files the code does not render"


def test_every_recipe_validates():
    """kubernetes-validate strict 1.29-1.35, checkov with only the documented skips, kubectl kustomize, PromQL."""
    assert RECIPES
    for recipe in RECIPES:
        report = validate_folder(ROOT / "k8s" / recipe.stem)
        assert set(report.kubernetes) == set(K8S_VERSIONS)
        # Deployment, Service, PVC, PDB, NetworkPolicy, ConfigMap: the built-in kinds are all schema-checked.
        assert all(n == 6 for n in report.kubernetes.values()), (recipe.name, report.kubernetes)
        assert {s.split(" ")[0] for s in report.skipped} == {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
        assert report.checkov["failed"] == [] and report.checkov["passed"] > 50
        assert report.kustomize_objects == 9
        assert report.promql_parsed >= 15


def test_validation_catches_a_broken_object(tmp_path):
    rendered = render(_load())
    folder = _write(rendered, tmp_path / "out")
    text = (folder / "deployment.yaml").read_text().replace("maxSurge: 0", "maxSurge: 0\n      maxSurgeTypo: 1")
    (folder / "deployment.yaml").write_text(text)
    with pytest.raises(TrdeployError, match=r"Kubernetes 1\.29\.0 rejects Deployment .*maxSurgeTypo"):
        validate_folder(folder, checkov=False)
    # A check outside the documented skips fails the run: a privileged container.
    folder = _write(rendered, tmp_path / "out2")
    text = (folder / "deployment.yaml").read_text().replace("privileged: false", "privileged: true")
    (folder / "deployment.yaml").write_text(text)
    with pytest.raises(TrdeployError, match=r"checkov fails .*CKV_K8S_16"):
        validate_folder(folder)


def _two_gpu_nodes() -> DeploymentProfile:
    """70B bf16 on 4 H100s in nodes of 2: `tune --gpus 4 --gpus-per-node 2` plans TP 2 per node x PP 2 across nodes."""
    from trdeploy.sizing.tuning import TuneRequest, tune

    return tune(TuneRequest(gpu="h100", model="llama-3-70b", gpus=4, gpus_per_node=2, max_model_len=8192, concurrency=32)).profile


def test_multi_node_hpa_podmonitor_download_validate(tmp_path):
    opts = RenderOptions(multi_node=True, autoscaler="hpa", monitor="podmonitor", model_source="download", runtime_class="nvidia")
    prof = _two_gpu_nodes()
    assert (prof.engine_args.tensor_parallel_size, prof.engine_args.pipeline_parallel_size) == (2, 2)
    rendered = render(prof, opts)
    lws = _kind(rendered, "LeaderWorkerSet")
    tmpl = lws["spec"]["leaderWorkerTemplate"]
    assert tmpl["size"] == 2  # one pod per pipeline stage, each with a node's GPUs
    for role in ("leaderTemplate", "workerTemplate"):
        pod = tmpl[role]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert pod["runtimeClassName"] == "nvidia"
        assert pod["initContainers"][0]["name"] == "fetch-model"  # each pod loads its shard from its own emptyDir
    leader = tmpl["leaderTemplate"]["spec"]["containers"][0]
    # The leader runs the image's entrypoint (the profile's serve command) once Ray has every GPU.
    assert leader["command"][-1].endswith(f'exec {ct.ENTRYPOINT} "$@"') and "GPU',0)>=4" in leader["command"][-1]
    assert leader["args"] == ["sh", "--distributed-executor-backend", "ray"]
    assert "LWS_LEADER_ADDRESS" in tmpl["workerTemplate"]["spec"]["containers"][0]["command"][-1]
    assert lws["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert _kind(rendered, "Service")["spec"]["selector"]["trdeploy.io/role"] == "leader"
    assert _kind(rendered, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"
    assert "PersistentVolumeClaim" not in {o["kind"] for o in rendered.objects}
    report = validate_folder(_write(rendered, tmp_path / "lws"))
    assert "LeaderWorkerSet" in {s.split(" ")[0] for s in report.skipped}
    # Service, HPA, PDB, NetworkPolicy, ConfigMap, and the leader and worker pod templates as Deployments
    assert report.kubernetes["1.35.0"] == 7
    assert report.checkov["failed"] == [] and report.checkov["passed"] > 150


# --- what the manifests say -----------------------------------------------------------------------


def test_deployment_follows_the_profile():
    prof = _load()
    rendered = render(prof)
    dep = _kind(rendered, "Deployment")
    c = _container(dep)
    pod = dep["spec"]["template"]["spec"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(prof.engine_args.tensor_parallel_size)
    assert c["resources"]["requests"] == c["resources"]["limits"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0] == {"key": "nvidia.com/gpu.product", "operator": "In", "values": prof.gpu.node_labels}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}  # no spare GPU needed
    # The pod runs the image's own entrypoint (the profile's serve command, served under the model id) as
    # the contract's user; nothing is re-declared (no args, no cache variables: the image's ENV applies).
    assert c["command"] == [ct.ENTRYPOINT] and "args" not in c
    assert c["image"] == default_tag(prof, "mount")
    assert not {e["name"] for e in c["env"]} & set(ct.CACHE_DIRS)
    # secrets by reference only, API key on by default
    env = {e["name"]: e for e in c["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "api-key" and "value" not in env["VLLM_API_KEY"]
    assert [i["name"] for i in pod["initContainers"]] == ["cache-dirs", "fetch-model"]
    init_env = {e["name"]: e for e in pod["initContainers"][1]["env"]}
    assert "value" not in init_env["HF_TOKEN"] and init_env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    # tight security context; a writable root (nvidia-cdi-hook), with checkov's skip saying why
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault" and sc["readOnlyRootFilesystem"] is False
    assert "nvidia-cdi-hook" in dep["metadata"]["annotations"]["checkov.io/skip1"]
    # probes on /health
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    # /dev/shm in memory, the caches (hub cache included) on the shared volume at the contract's path
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[ct.CACHE_ROOT]["name"] == "cache" and "subPath" not in mounts[ct.CACHE_ROOT]
    assert vols["cache"]["persistentVolumeClaim"]["claimName"] == f"{dep['metadata']['name']}-cache"
    assert ct.MODELS_ROOT not in mounts  # a hub model: fetched into HF_HOME on the cache volume
    assert env[ct.EXPECT_PROFILE_ENV]["value"] == ct.profile_sha256(prof)
    assert pod["securityContext"]["runAsUser"] == sc["runAsUser"] == ct.UID and pod["securityContext"]["runAsGroup"] == ct.GID
    pvc = _kind(rendered, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in pvc["spec"]  # one replica planned


def test_startup_budget_comes_from_the_prediction():
    prof = _load()
    rendered = render(prof)
    probe = _container(_kind(rendered, "Deployment"))["startupProbe"]
    assert probe["failureThreshold"] * probe["periodSeconds"] == prof.prediction.startup.budget_s == rendered.facts["startup_budget_s"]
    prof.prediction.startup = Startup(weights_load_s=20, read_gb_per_s=0.8, engine_init_s=60, compile_s=50,
                                      cold_s=130.0, warm_s=80.0, budget_s=260, basis="test")
    rendered = render(prof)
    probe = _container(_kind(rendered, "Deployment"))["startupProbe"]
    assert probe["failureThreshold"] * probe["periodSeconds"] == 260  # the profile's number, as the image's start period
    behavior = _kind(rendered, "ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 80  # a new replica starts warm from the shared cache
    download = render(prof, RenderOptions(model_source="download"))
    behavior = _kind(download, "ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 130  # ... or cold from an emptyDir


def test_model_source_image_mounts_nothing_over_the_baked_weights():
    prof = _load(ROOT / "recipes" / "llama-3-8b-awq-l40s.yaml")
    rendered = render(prof, RenderOptions(model_source="image", image="reg/tr/llama:1-bake"))
    pod = _kind(rendered, "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "reg/tr/llama:1-bake" and c["command"] == [ct.ENTRYPOINT] and "args" not in c
    assert not any(m["mountPath"].startswith(ct.MODELS_ROOT) for m in c["volumeMounts"])
    assert "initContainers" not in pod and "PersistentVolumeClaim" not in {o["kind"] for o in rendered.objects}
    assert rendered.facts["model_in_container"] == "/models/Meta-Llama-3-8B-Instruct-awq" == ct.model_path(prof, weights_in_image=True)
    # A local checkpoint on the shared volume is read at the same path the image would have it.
    pvc_mode = render(prof)
    mounts = {m["mountPath"]: m for m in _container(_kind(pvc_mode, "Deployment"))["volumeMounts"]}
    assert mounts[ct.MODELS_ROOT] == {"name": "cache", "mountPath": ct.MODELS_ROOT, "subPath": "models", "readOnly": True}
    assert any("models/Meta-Llama-3-8B-Instruct-awq/" in w for w in pvc_mode.warnings)


def test_autoscaling_targets_the_sla_concurrency():
    prof = _load(ROOT / "recipes" / "llama-3-8b-awq-l40s.yaml")
    rendered = render(prof)
    so = _kind(rendered, "ScaledObject")
    trig = so["spec"]["triggers"][0]
    plan = prof.prediction.capacity
    assert plan is not None and trig["metadata"]["threshold"] == str(plan.per_replica_concurrency)
    q = trig["metadata"]["query"]
    assert "vllm:num_requests_running" in q and "vllm:num_requests_waiting" in q
    assert f'model_name="{prof.model.id}"' in q and 'job="llama-3-8b-awq-l40s"' in q and 'namespace="llm"' in q
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (plan.replicas_min, plan.replicas_max)
    prof = _load(ROOT / "recipes" / "llama-3-8b-awq-l40s.yaml")
    custom = render(prof, RenderOptions(replicas_min=2, replicas_max=5, target_concurrency=7, name="tr-llm", namespace="prod", image="reg/x:1"))
    so = _kind(custom, "ScaledObject")
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"], so["spec"]["triggers"][0]["metadata"]["threshold"]) == (2, 5, "7")
    assert {o["metadata"]["namespace"] for o in custom.objects} == {"prod"}
    assert _container(_kind(custom, "Deployment"))["image"] == "reg/x:1"


def test_capacity_plan_decides_replicas_and_target():
    from trdeploy.deployment import CapacityPlan as plan_cls

    prof = _load(ROOT / "recipes" / "llama-3-8b-awq-l40s.yaml")
    prof.prediction.capacity = plan_cls(per_replica_concurrency=21, requests_per_s_per_replica=3.0, replicas_min=2, replicas_max=4, basis="test plan")
    rendered = render(prof)
    so = _kind(rendered, "ScaledObject")["spec"]
    assert (so["minReplicaCount"], so["maxReplicaCount"], so["triggers"][0]["metadata"]["threshold"]) == (2, 4, "21")
    assert "test plan" in rendered.facts["target_basis"]


def test_alerts_and_dashboard_use_the_metric_table():
    prof = _load()
    rendered = render(prof)
    table = vllm_metrics.metrics_for(prof.vllm_version)
    known = {v for v in vars(table).values() if isinstance(v, str)} | {
        h.name + suffix for h in (table.ttft, table.tpot, table.itl, table.e2e, table.queue_time) for suffix in ("_bucket", "_sum", "_count", "")}
    text = "\n".join(file_texts(rendered).values()) + "\n".join(rendered.promql)
    used = set(re.findall(r"vllm:[a-z0-9_]+", text))
    assert used and used <= known, used - known
    assert "vllm:gpu_cache_usage_perc" not in text
    rules = {r["alert"]: r for r in _kind(rendered, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert rules["VllmTTFTp95AboveSLA"]["expr"].startswith("histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket")
    assert rules["VllmTTFTp95AboveSLA"]["expr"].endswith("> 2")
    assert "vllm:request_time_per_output_token_seconds_bucket" in rules["VllmTPOTAboveSLA"]["expr"]
    assert rules["VllmKVCacheNearlyFull"]["expr"].endswith("> 0.9")
    # 2 s TTFT lies between the 1.0 and 2.5 s buckets; 50 ms TPOT is a bucket boundary.
    assert any("TTFT p95 threshold 2 s falls between" in w and "1 s and 2.5 s" in w for w in rendered.warnings)
    assert not any("TPOT" in w for w in rendered.warnings)
    dash = json.loads(next(iter(_kind(rendered, "ConfigMap")["data"].values())))
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert rules["VllmTTFTp95AboveSLA"]["expr"].split(" > ")[0] in exprs


def test_unknown_vllm_version_is_refused():
    with pytest.raises(TrdeployError, match=r"No vLLM metric table for vLLM 0\.8\.1"):
        vllm_metrics.metrics_for("0.8.1")
    assert vllm_metrics.metrics_for("0.25.3").model_label == "model_name"


# --- the command --------------------------------------------------------------------------------


def _bad_profile(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(H100_8B.read_text())
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "edit, extra, message",
    [
        (lambda d: d["gpu"].pop("gpus_per_node"), [], "gpu.gpus_per_node: Field required"),
        (lambda d: d["gpu"].update(tier="tpu-v5", node_labels=[]), [], "GPU tier 'tpu-v5' has no nvidia.com/gpu.product node labels"),
        (lambda d: d.update(sla={}), [], "has no SLA"),
        (lambda d: d.update(schema_version=1), [], "schema 1 DeploymentProfile from an older trdeploy"),
        (lambda d: d["engine_args"].pop("served_model_name"), [], "engine_args.served_model_name: Field required"),
        (lambda d: None, ["--model-source", "image"], "--model-source image needs --image"),
    ],
)
def test_bad_profiles_get_one_line_errors(tmp_path, edit, extra, message):
    proc = run_cli("render-k8s", str(_bad_profile(tmp_path, edit)), "-o", str(tmp_path / "out"), *extra)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 or "Usage" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_more_gpus_than_a_node_needs_multi_node(tmp_path):
    path = tmp_path / "two.yaml"
    _two_gpu_nodes().save(path)
    proc = run_cli("render-k8s", str(path), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2
    line = " ".join(proc.stderr.split())
    assert "needs 4 GPUs per replica but a h100 node has 2" in line and "--multi-node" in line
    proc = run_cli("render-k8s", str(path), "-o", str(tmp_path / "out"), "--multi-node", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["facts"]["kind"] == "LeaderWorkerSet"
    # tune writes the node size: `tune --gpus-per-node 2` gives the same profile field
    from trdeploy.sizing.tuning import TuneRequest, tune

    assert tune(TuneRequest(gpu="h100", max_model_len=8192, gpus_per_node=2)).profile.gpu.gpus_per_node == 2


def test_cli_folder_stream_and_force(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("render-k8s", str(H100_8B), "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["files"][-1] == "kustomization.yaml" and data["validation"] is None
    assert sorted(p.name for p in out.iterdir()) == sorted([*data["files"], OUTPUT_MARKER])
    again = run_cli("render-k8s", str(H100_8B), "-o", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    assert run_cli("render-k8s", str(H100_8B), "-o", str(out), "--force", "--name", "other").returncode == 0
    assert "name: other" in (out / "deployment.yaml").read_text()
    stream = run_cli("render-k8s", str(H100_8B), "-o", "-")
    assert stream.returncode == 0
    docs = list(yaml.safe_load_all(stream.stdout))
    assert [d["kind"] for d in docs] == [o["kind"] for o in render(_load()).objects]
    assert "&id" not in stream.stdout  # plain YAML, no anchors
    checked = run_cli("render-k8s", str(H100_8B), "-o", "-", "--validate")
    assert checked.returncode == 0 and checked.stdout == stream.stdout, checked.stderr
    assert run_cli("render-k8s", str(H100_8B), "-o", "-", "--json").returncode == 2
    help_text = run_cli("render-k8s", "--help").stdout
    assert "Examples" in help_text and "--replicas-min" in help_text


def test_cli_validate_reports_versions(tmp_path):
    proc = run_cli("render-k8s", str(H100_8B), "-o", str(tmp_path / "v"), "--validate", "--json")
    assert proc.returncode == 0, proc.stderr
    v = json.loads(proc.stdout)["validation"]
    assert list(v["kubernetes_versions"]) == list(K8S_VERSIONS)
    assert v["checkov"]["skipped"] == sorted(CHECKOV_SKIPS) and v["checkov"]["failed"] == []




def test_a_baked_image_without_model_source_image_is_warned_about():
    prof = _load()
    rendered = render(prof, RenderOptions(image="reg/tr/llama:abc-bake"))
    assert any("Pass --model-source image" in w for w in rendered.warnings)
    assert not any("--model-source image" in w for w in render(prof, RenderOptions(image="reg/tr/llama:abc-mount")).warnings)
