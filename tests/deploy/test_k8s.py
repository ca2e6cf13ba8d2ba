"""`trdeploy render-k8s`: every recipe renders and validates with the real tools; k8s/ stays in sync;
bad profiles get one-line errors; the rendered container runs in Docker and `bench` measures it."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import time
from pathlib import Path

import pytest
import yaml
from _bench_servers import free_port

from tests.conftest import ROOT, run_cli
from trdeploy.deploy import vllm_metrics
from trdeploy.deploy.k8s import RenderOptions, file_texts, render
from trdeploy.deploy.validate import CHECKOV_SKIPS, K8S_VERSIONS, validate_folder
from trdeploy.deployment import DeploymentProfile, Startup
from trdeploy.errors import TrdeployError

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


def test_k8s_folder_matches_the_code():
    spec = importlib.util.spec_from_file_location("make_k8s", ROOT / "scripts" / "make_k8s.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = module.render()
    assert len(files) == 10 * len(RECIPES)
    for name, text in files.items():
        path = ROOT / "k8s" / name
        assert path.is_file() and path.read_text(encoding="utf-8") == text, f"k8s/{name} is stale: run python scripts/make_k8s.py"
    committed = {str(p.relative_to(ROOT / "k8s")) for p in (ROOT / "k8s").glob("*/*.yaml")}
    assert committed == set(files), "k8s/ holds files the code does not render"


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


def test_multi_node_hpa_podmonitor_download_validate(tmp_path):
    opts = RenderOptions(gpus_per_node=2, multi_node=True, autoscaler="hpa", monitor="podmonitor",
                         model_source="download", runtime_class="nvidia")
    rendered = render(_load(H100_70B_X4), opts)
    lws = _kind(rendered, "LeaderWorkerSet")
    tmpl = lws["spec"]["leaderWorkerTemplate"]
    assert tmpl["size"] == 2
    assert any("spans 2 nodes" in w and "pipeline parallelism" in w for w in rendered.warnings)
    for role in ("leaderTemplate", "workerTemplate"):
        pod = tmpl[role]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert pod["runtimeClassName"] == "nvidia"
        assert pod["initContainers"][0]["name"] == "fetch-model"  # each pod loads its shard from its own emptyDir
    leader_cmd = tmpl["leaderTemplate"]["spec"]["containers"][0]["command"][-1]
    assert "--tensor-parallel-size 4" in leader_cmd and "--distributed-executor-backend ray" in leader_cmd
    assert "LWS_LEADER_ADDRESS" in tmpl["workerTemplate"]["spec"]["containers"][0]["command"][-1]
    assert lws["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]["maxSurge"] == 0
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
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    # engine arguments 1:1, served under the model id (metrics' model_name and what clients send)
    assert c["command"] == ["vllm", "serve"]
    args = c["args"]
    assert args[0] == prof.engine_args.model
    for flag, value in zip(prof.engine_args.to_cli_args()[::2], prof.engine_args.to_cli_args()[1::2], strict=True):
        assert args[args.index(flag) + 1] == value
    assert args[args.index("--served-model-name") + 1] == prof.model.id
    # secrets by reference only, API key on by default
    env = {e["name"]: e for e in c["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "api-key" and "value" not in env["VLLM_API_KEY"]
    init_env = {e["name"]: e for e in pod["initContainers"][0]["env"]}
    assert "value" not in init_env["HF_TOKEN"] and init_env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    # tight security context
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault" and sc["readOnlyRootFilesystem"]
    # probes on /health; drain and grace agree
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    assert pod["terminationGracePeriodSeconds"] > rendered.facts["drain_s"]
    assert "vllm:num_requests_running" in c["lifecycle"]["preStop"]["exec"]["command"][-1]
    # /dev/shm in memory, the compile cache on the shared volume
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/cache"]["subPath"] == "compile-cache"
    assert env["VLLM_CACHE_ROOT"]["value"].startswith("/cache")
    pvc = _kind(rendered, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_startup_budget_comes_from_the_prediction():
    prof = _load()
    assert prof.prediction.startup is not None  # tune predicts it; recipes carry it
    prof.prediction.startup = None  # a profile from before tune predicted start-up
    fallback = render(prof)
    assert any("conservative default" in w for w in fallback.warnings)
    prof.prediction.startup = Startup(weights_load_s=20, read_gb_per_s=0.8, engine_init_s=60, compile_s=50,
                                      cold_s=130.0, warm_s=80.0, basis="test")
    rendered = render(prof)
    probe = _container(_kind(rendered, "Deployment"))["startupProbe"]
    budget = probe["failureThreshold"] * probe["periodSeconds"]
    assert budget == math.ceil((130.0 * 1.5 + 60) / 10) * 10 == 260
    assert not any("startupProbe budget" in w for w in rendered.warnings)
    behavior = _kind(rendered, "ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 80  # a new replica starts warm from the shared cache
    download = render(prof, RenderOptions(model_source="download"))
    behavior = _kind(download, "ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 130  # ... or cold from an emptyDir


def test_autoscaling_targets_the_sla_concurrency():
    prof = _load(ROOT / "recipes" / "llama-3-8b-awq-l40s.yaml")
    rendered = render(prof)
    so = _kind(rendered, "ScaledObject")
    trig = so["spec"]["triggers"][0]
    plan = prof.prediction.capacity
    assert plan is not None and trig["metadata"]["threshold"] == str(plan.per_replica_concurrency)
    q = trig["metadata"]["query"]
    assert "vllm:num_requests_running" in q and "vllm:num_requests_waiting" in q
    assert f'model_name="{prof.model.id}"' in q
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (plan.replicas_min, plan.replicas_max)
    # A profile from before the capacity plan: sla_capacity_per_replica, the peak plan and the average hour.
    prof.prediction.capacity = None
    legacy = _kind(render(prof), "ScaledObject")["spec"]
    assert legacy["triggers"][0]["metadata"]["threshold"] == str(prof.prediction.sla_capacity_per_replica)
    assert legacy["maxReplicaCount"] == prof.prediction.replicas
    assert legacy["minReplicaCount"] == math.ceil(prof.prediction.replicas / prof.workload.peak_factor)
    prof = _load(ROOT / "recipes" / "llama-3-8b-awq-l40s.yaml")
    assert _kind(rendered, "PodDisruptionBudget")["spec"]["minAvailable"] == so["spec"]["minReplicaCount"]
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
    assert _kind(rendered, "PodDisruptionBudget")["spec"]["minAvailable"] == 2


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
        (lambda d: d["gpu"].update(tier="tpu-v5", node_labels=["TPU"]), [], "Unknown GPU tier 'tpu-v5'"),
        (lambda d: d["gpu"].update(tier="tpu-v5", node_labels=[]), [], "GPU tier 'tpu-v5' has no nvidia.com/gpu.product node labels"),
        (lambda d: d.update(sla={}), [], "has no SLA"),
        (lambda d: None, ["--gpus-per-node", "0"], "gpus-per-node"),
    ],
)
def test_bad_profiles_get_one_line_errors(tmp_path, edit, extra, message):
    proc = run_cli("render-k8s", str(_bad_profile(tmp_path, edit)), "-o", str(tmp_path / "out"), *extra)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 or "Usage" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_more_gpus_than_a_node_needs_multi_node(tmp_path):
    proc = run_cli("render-k8s", str(H100_70B_X4), "-o", str(tmp_path / "out"), "--gpus-per-node", "2")
    assert proc.returncode == 2
    line = " ".join(proc.stderr.split())
    assert "needs 4 GPUs per replica but a h100 node has 2" in line and "--multi-node" in line
    proc = run_cli("render-k8s", str(H100_70B_X4), "-o", str(tmp_path / "out"), "--gpus-per-node", "2", "--multi-node", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["facts"]["kind"] == "LeaderWorkerSet"


def test_cli_folder_stream_and_force(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("render-k8s", str(H100_8B), "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["files"][-1] == "kustomization.yaml" and data["validation"] is None
    assert sorted(p.name for p in out.iterdir()) == sorted(data["files"])
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


# --- end to end: the rendered container in a real Docker engine -----------------------------------

STANDIN_OPENAI_TAG = "trdeploy-test/vllm-openai:standin-openai"


def _http_status(url: str, headers: dict | None = None) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def standin_openai_image(docker_client):
    import io
    import tarfile

    import docker
    from tests.deploy.conftest import ROOTFS_TAG

    try:
        docker_client.images.get(ROOTFS_TAG)
    except docker.errors.ImageNotFound:
        pytest.skip(f"local base {ROOTFS_TAG} is missing (scripts/ci/docker-engine.sh builds it)")
    dockerfile = (f"FROM {ROOTFS_TAG}\nCOPY standin_openai.py /usr/local/bin/vllm\nRUN chmod 0755 /usr/local/bin/vllm\n"
                  'ENTRYPOINT ["vllm", "serve"]\n').encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(Path(__file__).with_name("standin_openai.py"), arcname="standin_openai.py")
    buf.seek(0)
    docker_client.images.build(fileobj=buf, custom_context=True, tag=STANDIN_OPENAI_TAG, rm=True, network_mode="host", pull=False)
    return STANDIN_OPENAI_TAG


def test_rendered_container_runs_and_bench_measures_it(docker_client, standin_openai_image, tmp_path):
    """Run the rendered pod's container spec as the kubelet would (image, command, args, env, user,
    read-only root, dropped capabilities, volumes), probe it with the rendered probes, then bench it."""
    port = free_port()
    prof = _load()
    prof.prediction.startup = Startup(weights_load_s=1, read_gb_per_s=1, engine_init_s=1, compile_s=1, cold_s=3.0, warm_s=2.0, basis="stand-in")
    profile_path = tmp_path / "trdeploy.yaml"
    prof.save(profile_path)
    out = tmp_path / "k8s"
    proc = run_cli("render-k8s", str(profile_path), "-o", str(out), "--image", standin_openai_image, "--port", str(port))
    assert proc.returncode == 0, proc.stderr
    dep = next(yaml.safe_load_all((out / "deployment.yaml").read_text()))
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    secrets = {(f"{dep['metadata']['name']}-api-key", "api-key"): "sk-e2e-test"}
    env = {}
    for e in c["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[(ref["name"], ref["key"])]
        else:
            env[e["name"]] = e["value"]
    env["STANDIN_STARTUP_DELAY_S"] = "3"  # /health answers 503 first, as vLLM does while loading
    sc = c["securityContext"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmpfs = {}
    for m in c["volumeMounts"]:
        if m["mountPath"] == "/dev/shm":
            continue
        assert m["name"] in volumes
        tmpfs[m["mountPath"]] = f"rw,size=256m,uid={sc['runAsUser']},gid={sc['runAsGroup']},mode=0770"
    shm = volumes["dshm"]["emptyDir"]["sizeLimit"]
    container = docker_client.containers.run(
        c["image"], entrypoint=c["command"], command=c["args"], environment=env, detach=True,
        user=f"{sc['runAsUser']}:{sc['runAsGroup']}", read_only=sc["readOnlyRootFilesystem"],
        cap_drop=sc["capabilities"]["drop"], security_opt=["no-new-privileges"], tmpfs=tmpfs,
        shm_size=shm.replace("Gi", "g"), network_mode="host", name=f"trdeploy-k8s-e2e-{port}",
    )
    try:
        base = f"http://127.0.0.1:{port}"
        startup = c["startupProbe"]
        budget = startup["failureThreshold"] * startup["periodSeconds"]
        t0 = time.monotonic()
        first_ok = None
        saw_not_ready = False
        while time.monotonic() - t0 < budget:
            status = _http_status(base + startup["httpGet"]["path"])
            if status == 200:
                first_ok = time.monotonic() - t0
                break
            saw_not_ready = saw_not_ready or status == 503
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode()[-2000:]
            time.sleep(0.25)
        assert first_ok is not None, f"startupProbe budget {budget} s passed: {container.logs().decode()[-2000:]}"
        assert saw_not_ready and first_ok < budget
        for probe in ("readinessProbe", "livenessProbe"):
            assert _http_status(base + c[probe]["httpGet"]["path"]) == 200
        assert _http_status(base + "/metrics") == 200  # open with --api-key, as the ServiceMonitor needs
        assert _http_status(base + "/v1/models") == 401  # the API key is on
        assert _http_status(base + "/v1/models", {"Authorization": "Bearer sk-e2e-test"}) == 200
        record = json.loads(next(line for line in container.logs().decode().splitlines() if line.startswith("STANDIN_OPENAI ")).split(" ", 1)[1])
        assert record["uid"] == sc["runAsUser"] and record["api_key_set"]
        assert len(record["writable"]) == 7 and all(record["writable"].values()), record  # caches land on volumes
        assert record["argv"][:2] == ["serve", prof.engine_args.model]
        bench = run_cli("bench", "--url", base, "--profile", str(profile_path), "-n", "24", "-c", "4",
                        "--output-tokens", "16", "--json", env={"OPENAI_API_KEY": "sk-e2e-test"}, timeout=300)
        assert bench.returncode in (0, 1), bench.stderr
        run = json.loads(bench.stdout)["runs"][0]
        assert run["completed"] == 24 and run["failed"] == 0
        assert run["p95_ttft_ms"] > 0 and run["median_tpot_ms"] > 0
        print(f"render-k8s e2e: /health 200 after {first_ok:.1f} s (budget {budget} s); bench p95 TTFT {run['p95_ttft_ms']:.1f} ms")
    finally:
        container.remove(force=True)
