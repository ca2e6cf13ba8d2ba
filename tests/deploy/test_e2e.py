"""The hand-offs, end to end, for every recipe: tune's profile -> `build` -> the image in a real Docker
engine -> `bench --profile`, and the same profile -> `render-k8s` -> the rendered pod run as a kubelet
would (tests/deploy/_kubelet.py) -> `bench --profile`.

The server is the stand-in `vllm` (tests/deploy/standin_vllm.py), which fails as vLLM does: an unknown
flag exits 2, a missing model exits 1, a model name it does not serve answers 404, /v1 without the key
answers 401. So a seam that drifts (the served name bench sends, the model path, the port, the user,
the key) fails here. Three recipes (bf16, AWQ from a local folder, multi-GPU) run in the default suite;
the rest in the slow pass.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from _bench_servers import free_port
from conftest import ROOT, run_cli

from tests.deploy._http import http_status, standin_record
from tests.deploy._kubelet import run_pod, wait_for
from trdeploy.deploy import container as ct
from trdeploy.deployment import DeploymentProfile

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
FAST = {"llama-3-8b-bf16-h100", "llama-3-8b-awq-l40s", "llama-3-70b-awq-h100-x2"}
KEY = "sk-e2e-" + os.urandom(6).hex()


def _params() -> list:
    return [pytest.param(r, id=r.stem, marks=() if r.stem in FAST else (pytest.mark.slow,)) for r in RECIPES]


def _shared_dir(path: Path) -> Path:
    """A host folder a container user in group 0 may write (as fsGroup 0 makes a volume)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 0, 0)
    path.chmod(0o2775)
    return path


def _checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    folder.chmod(0o755)
    return folder


def _bench(url: str, recipe: Path, *extra: str, key: str | None = KEY) -> dict:
    env = {"OPENAI_API_KEY": key} if key else {"OPENAI_API_KEY": ""}
    r = run_cli("bench", "--url", url, "--profile", str(recipe), "-n", "32", "--json", *extra, env=env, timeout=300)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    return json.loads(r.stdout)


def _assert_bench_completed(report: dict, profile: DeploymentProfile) -> None:
    run = report["runs"][0]
    assert report["endpoint"]["model"] == profile.engine_args.served_model_name
    assert run["completed"] == 32 and run["failed"] == 0, (run["errors"], run.get("error_samples"))
    # The load is the one tune planned (never rounded), and the report says where it came from.
    assert run["load"]["concurrency"] == profile.workload.concurrency
    assert report["load"]["source"].startswith("profile workload.concurrency")
    assert report["verdict"]["passed"], report["verdict"]


@pytest.mark.parametrize("recipe", _params())
def test_recipe_from_build_to_bench_and_from_render_k8s_to_bench(recipe, docker_client, vllm_base_image, tmp_path):
    profile = DeploymentProfile.load(recipe)
    model_is_local = profile.engine_args.model.startswith(("./", "/"))
    tag = f"trdeploy-test/e2e-{recipe.stem}:{free_port()}"
    r = run_cli("build", str(recipe), "--base-image", vllm_base_image, "--tag", tag, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    built = json.loads(r.stdout)
    assert built["labels"]["io.trdeploy.served-model-name"] == profile.engine_args.served_model_name

    # 1. The image, as `docker run` starts it: a cache volume, a local checkpoint mounted where the
    #    image's argv looks, the key from the environment, `--port` appended (the HEALTHCHECK follows).
    port = free_port()
    volumes = {str(_shared_dir(tmp_path / "docker-cache")): {"bind": ct.CACHE_ROOT, "mode": "rw"}}
    if model_is_local:
        folder = _checkpoint(tmp_path / "checkpoint")
        volumes[str(folder)] = {"bind": ct.model_path(profile, weights_in_image=False), "mode": "ro"}
    container = docker_client.containers.run(
        tag, command=["--port", str(port)], environment={"VLLM_API_KEY": KEY, "STANDIN_STARTUP_DELAY_S": "1"},
        volumes=volumes, network_mode="host", detach=True, healthcheck={"interval": 1_000_000_000},
        name=f"trdeploy-e2e-img-{port}",
    )
    try:
        deadline = time.monotonic() + 60
        while (container.attrs["State"].get("Health") or {}).get("Status") != "healthy":
            assert time.monotonic() < deadline, container.logs().decode()[-3000:]
            assert container.status in ("created", "running"), container.logs().decode()[-3000:]
            time.sleep(0.5)
            container.reload()
        record = standin_record(container)
        assert record["argv"] == [*built["argv"], "--port", str(port)] and record["uid"] == ct.UID
        url = f"http://127.0.0.1:{port}"
        _assert_bench_completed(_bench(url, recipe), profile)
        # The stand-in fails as vLLM does: no key -> 401, another model name -> 404 (what bench hit before).
        assert http_status(url + "/v1/models") == 401
        assert http_status(url + "/metrics") == 200
        wrong = _bench(url, recipe, "--model", profile.engine_args.model + "-typo", "-n", "4")
        assert wrong["runs"][0]["failed"] == 4 and "404" in json.dumps(wrong["runs"][0]["errors"])
    finally:
        container.remove(force=True)

    # 2. The same profile rendered for Kubernetes: the pod runs that image (its entrypoint, user, paths),
    #    init containers first, volumes with the pod's fsGroup, probes within the profile's start-up budget.
    port = free_port()
    out = tmp_path / "k8s"
    r = run_cli("render-k8s", str(recipe), "-o", str(out), "--image", tag, "--port", str(port), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    deployment = next(yaml.safe_load_all((out / "deployment.yaml").read_text()))
    pod = deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == [ct.ENTRYPOINT] and c["args"] == ["--port", str(port)]
    name = deployment["metadata"]["name"]
    volumes_root = tmp_path / "volumes"
    if model_is_local:  # the user copies the checkpoint onto the cache volume, as render-k8s's warning says
        _checkpoint(volumes_root / "cache" / "models" / ct.model_name(profile.engine_args.model))
    running, _ = run_pod(docker_client, pod, secrets={(f"{name}-api-key", "api-key"): KEY}, volumes_root=volumes_root,
                         name=f"trdeploy-e2e-pod-{port}", extra_env={"STANDIN_STARTUP_DELAY_S": "1"})
    try:
        probe = c["startupProbe"]
        budget = probe["failureThreshold"] * probe["periodSeconds"]
        assert budget == profile.prediction.startup.budget_s
        url = f"http://127.0.0.1:{port}"
        took, seen = wait_for(url + probe["httpGet"]["path"], running, budget)
        assert 503 in seen  # starting, as vLLM answers while it loads
        record = standin_record(running)
        assert record["argv"] == [*built["argv"], "--port", str(port)]
        assert (record["uid"], record["gid"]) == (ct.UID, ct.GID) and all(record["writable"].values()), record["writable"]
        assert http_status(url + "/v1/models") == 401 and http_status(url + "/metrics") == 200
        _assert_bench_completed(_bench(url, recipe), profile)
        print(f"{recipe.stem}: pod /health 200 after {took:.1f} s (budget {budget} s)")
    finally:
        running.remove(force=True)
        docker_client.images.remove(tag, force=True)


def test_baked_image_served_by_render_k8s_model_source_image(docker_client, vllm_base_image, tmp_path):
    """`build --model-source bake` then `render-k8s --model-source image`: nothing is mounted over the baked
    weights, the pod serves them (the stand-in exits 1 if the model folder is missing), bench sees no failure."""
    recipe = ROOT / "recipes" / "llama-3-8b-awq-l40s.yaml"
    profile = DeploymentProfile.load(recipe)
    checkpoint = _checkpoint(tmp_path / "any-folder-name")
    tag = f"trdeploy-test/e2e-bake:{free_port()}"
    r = run_cli("build", str(recipe), "--base-image", vllm_base_image, "--tag", tag, "--model-source", "bake", "--model-dir", str(checkpoint), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    port = free_port()
    out = tmp_path / "k8s"
    r = run_cli("render-k8s", str(recipe), "-o", str(out), "--image", tag, "--port", str(port), "--model-source", "image", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    pod = next(yaml.safe_load_all((out / "deployment.yaml").read_text()))["spec"]["template"]["spec"]
    name = json.loads(r.stdout)["facts"]["name"]
    running, _ = run_pod(docker_client, pod, secrets={(f"{name}-api-key", "api-key"): KEY}, volumes_root=tmp_path / "volumes",
                         name=f"trdeploy-e2e-bake-{port}", extra_env={"STANDIN_STARTUP_DELAY_S": "1"})
    try:
        wait_for(f"http://127.0.0.1:{port}/health", running, profile.prediction.startup.budget_s)
        record = standin_record(running)
        assert record["argv"][2] == ct.model_path(profile, weights_in_image=True) == "/models/Meta-Llama-3-8B-Instruct-awq"
        assert record["env"]["HF_HUB_OFFLINE"] == "1"
        _assert_bench_completed(_bench(f"http://127.0.0.1:{port}", recipe), profile)
    finally:
        running.remove(force=True)
        docker_client.images.remove(tag, force=True)
