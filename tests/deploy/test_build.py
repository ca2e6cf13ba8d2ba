"""`trdeploy build`: rendering (fast, no engine) and real images on a real Docker engine.

The image tests build from a local stand-in for vllm/vllm-openai (tests/deploy/conftest.py) and run
the image with the stand-in `vllm`, which records its argv, environment and UID and answers /health.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from _bench_servers import free_port
from conftest import ROOT, run_cli

from tests.deploy._http import http_status
from trdeploy import hub
from trdeploy.deploy import container as ct
from trdeploy.deploy.image import BuildOptions, choose_base, default_tag, render_context, start_period_s
from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError
from trdeploy.output import OUTPUT_MARKER
from trdeploy.sizing.tuning import TuneRequest, tune

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
BF16_H100 = ROOT / "recipes" / "llama-3-8b-bf16-h100.yaml"
AWQ_L40S = ROOT / "recipes" / "llama-3-8b-awq-l40s.yaml"
TRDEPLOY_LABELS = (
    "io.trdeploy.model",
    "io.trdeploy.model.revision",
    "io.trdeploy.quantization",
    "io.trdeploy.gpu.tier",
    "io.trdeploy.vllm.version",
    "io.trdeploy.profile.sha256",
)


def _profile(path: Path = BF16_H100) -> DeploymentProfile:
    return DeploymentProfile.load(path)


def _expected_argv(profile: DeploymentProfile, model: str, *extra: str) -> list[str]:
    """Independently of the renderer: the profile's own serve command with the model placed, the port, then
    what `docker run` appended."""
    engine = profile.engine_args.model_copy(update={"model": model})
    return [*engine.serve_command(), "--port", "8000", *extra]


# --- rendering (no engine) -------------------------------------------------------------------------


def test_docker_folder_holds_the_rendered_recipe_contexts():
    """docker/NAME/ is exactly what `trdeploy build recipes/NAME.yaml --dry-run` writes."""
    assert RECIPES
    stale = []
    for recipe in RECIPES:
        context = render_context(_profile(recipe), BuildOptions())
        folder = ROOT / "docker" / recipe.stem
        on_disk = {p.name for p in folder.iterdir()} - {OUTPUT_MARKER} if folder.is_dir() else set()
        if on_disk != set(context.files):
            stale.append(f"{recipe.stem}: files {sorted(on_disk)} != {sorted(context.files)}")
            continue
        for name, text in context.files.items():
            if (folder / name).read_text(encoding="utf-8") != text:
                stale.append(f"{recipe.stem}/{name}")
        assert os.access(folder / "entrypoint.sh", os.X_OK)
    assert not stale, (
        "docker/ is out of date; regenerate with: for r in recipes/*.yaml; do "
        'trdeploy build "$r" --dry-run -o "docker/$(basename "$r" .yaml)" --force; done\n' + "\n".join(stale)
    )


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
    if not os.access(exe, os.X_OK):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("hadolint is not installed (pip install -e '.[test]')")
        pytest.skip("hadolint is not installed")
    return exe


@pytest.mark.parametrize("source", ["mount", "bake", "download"])
def test_dockerfiles_are_hadolint_clean_at_warning_level(tmp_path, source):
    exe = _hadolint()
    options = BuildOptions(model_source=source)
    for recipe in (BF16_H100, ROOT / "recipes" / "llama-3-70b-awq-h100-x2.yaml"):
        profile = _profile(recipe)
        if source == "download" and not hub.is_hub_id(profile.engine_args.model, revision=False):
            options = options.model_copy(update={"model_repo": "org/model"})
        dockerfile = tmp_path / f"Dockerfile.{recipe.stem}.{source}"
        dockerfile.write_text(render_context(profile, options).files["Dockerfile"])
        r = subprocess.run([exe, "--failure-threshold", "warning", str(dockerfile)], capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "# syntax=" not in dockerfile.read_text()


def test_base_image_is_the_cuda_build_tune_chose_for_the_driver():
    profile = _profile()
    assert (profile.gpu.cuda, profile.gpu.min_driver) == ("13.0", "580.65.06")
    assert choose_base(profile, BuildOptions()) == "vllm/vllm-openai:v0.25.0"
    rtx = _profile(ROOT / "recipes" / "llama-3-8b-bf16-rtx4090.yaml")
    assert (rtx.gpu.cuda, rtx.gpu.driver) == ("12.9", "575.51.03")
    assert choose_base(rtx, BuildOptions()) == "vllm/vllm-openai:v0.25.0-cu129"
    # The driver is tune's input (the nodes' nvidia-smi); build only reads what tune wrote.
    old_nodes = tune(TuneRequest(gpu="h100", max_model_len=8192, driver="575.57.08")).profile
    assert (old_nodes.gpu.cuda, old_nodes.gpu.min_driver, old_nodes.gpu.driver_source) == ("12.9", "575.51.03", "given (--driver)")
    assert choose_base(old_nodes, BuildOptions()) == "vllm/vllm-openai:v0.25.0-cu129"
    assert "needs NVIDIA driver >= 575.51.03" in render_context(old_nodes, BuildOptions()).files["Dockerfile"]
    assert choose_base(tune(TuneRequest(gpu="h100", max_model_len=8192, cuda="12.9")).profile, BuildOptions()).endswith("-cu129")
    with pytest.raises(TrdeployError, match="older than every CUDA build"):
        tune(TuneRequest(gpu="h100", max_model_len=8192, driver="550.54.14"))
    with pytest.raises(TrdeployError, match=r"--cuda 13\.0 needs NVIDIA driver >= 580\.65\.06"):
        tune(TuneRequest(gpu="h100", max_model_len=8192, driver="575.57.08", cuda="13.0"))
    pinned = "vllm/vllm-openai@sha256:" + "a" * 64
    context = render_context(profile, BuildOptions(base_image=pinned))
    assert context.files["Dockerfile"].count(f"FROM {pinned}\n") == 1
    assert context.labels["org.opencontainers.image.base.digest"] == "sha256:" + "a" * 64
    with pytest.raises(TrdeployError, match="neither a tag nor a digest"):
        render_context(profile, BuildOptions(base_image="registry:5000/vllm"))


def test_start_period_is_the_profiles_startup_budget():
    for recipe in RECIPES:
        profile = _profile(recipe)
        startup = profile.prediction.startup
        # tune's one margin function: 1.5 x the predicted cold start + 60 s, rounded up to 10 s
        assert startup.budget_s == math.ceil((startup.cold_s * 1.5 + 60) / 10) * 10
        assert start_period_s(profile) == startup.budget_s
        assert f"--start-period={startup.budget_s}s" in render_context(profile, BuildOptions()).files["Dockerfile"]
    profile = _profile()
    profile.prediction.startup.budget_s = 190
    assert "--start-period=190s" in render_context(profile, BuildOptions()).files["Dockerfile"]


def test_default_tag_differs_by_model_source():
    profile = _profile()
    tags = {source: default_tag(profile, source) for source in ("mount", "bake", "download")}
    assert len(set(tags.values())) == 3
    digest = ct.profile_sha256(profile)[:12]
    assert tags["download"] == f"trdeploy/llama-3-8b-bf16-h100:{digest}-download"


def test_entrypoint_runs_exactly_the_profiles_serve_command_and_bakes_no_key():
    for recipe in RECIPES:
        profile = _profile(recipe)
        context = render_context(profile, BuildOptions())
        model = profile.engine_args.model
        placed = "/models/" + Path(model).name if model.startswith(("./", "../", "/")) else model
        assert context.argv == _expected_argv(profile, placed)
        assert context.argv[context.argv.index("--served-model-name") + 1] == profile.model.id
        entry = context.files["entrypoint.sh"]
        assert '"$@"' in entry and "--api-key" not in entry.split("\nexec ", 1)[1]  # never on the command line
        assert "VLLM_API_KEY=" not in context.files["Dockerfile"]


def test_deploy_package_reads_the_profile_only():
    for source in (ROOT / "trdeploy" / "deploy").glob("*.py"):
        imports = re.findall(r"^\s*(?:from|import)\s+(trdeploy\.sizing\S*)", source.read_text(), re.M)
        assert not imports, (source, imports)


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(re.sub(r"max_num_seqs: \d+", "max_num_seqs: 0", BF16_H100.read_text()))
    cases = [
        (["build", str(bad), "--dry-run", "-o", str(tmp_path / "a")], "not a valid DeploymentProfile"),
        (["build", str(AWQ_L40S), "--model-source", "bake", "--dry-run", "-o", str(tmp_path / "b")], "does not exist"),
        (["build", str(AWQ_L40S), "--model-source", "download", "--dry-run", "-o", str(tmp_path / "c")], "local folder"),
        (["build", str(BF16_H100), "--driver", "470.1", "--dry-run", "-o", str(tmp_path / "d")], "No such option: --driver"),
    ]
    for args, message in cases:
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 or "Usage:" in r.stderr, r.stderr
    assert not any(p.name in "abcd" for p in tmp_path.iterdir())
    r = run_cli("build", str(BF16_H100), env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert r.returncode == 2 and "No Docker engine reachable" in r.stderr, r.stderr


# --- real images on a real engine ------------------------------------------------------------------


def _build(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> dict:
    r = run_cli("build", *args, "--json", cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Step " in r.stderr or "#1 " in r.stderr  # the build streamed its steps
    return json.loads(r.stdout)


def _run_until_healthy(docker_client, image: str, *, command=None, user=None, env=None, volumes=None, timeout=60):
    """Run the image as `docker run IMAGE COMMAND...` would, until its own HEALTHCHECK says healthy."""
    container = docker_client.containers.run(
        image,
        command=command,
        user=user,
        environment={"STANDIN_STARTUP_DELAY_S": "2", "VLLM_API_KEY": "sk-test", **(env or {})},
        volumes=volumes,
        network_mode="host",
        detach=True,
        healthcheck={"interval": 1_000_000_000},  # probe each second; test, period, retries: the image's
    )
    states = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            container.reload()
            health = container.attrs["State"].get("Health", {}).get("Status")
            if not states or states[-1] != health:
                states.append(health)
            if health in ("healthy", "unhealthy") or container.status == "exited":
                break
            time.sleep(0.5)
        logs = container.logs().decode()
        line = next(ln for ln in logs.splitlines() if ln.startswith("STANDIN_VLLM "))
        return json.loads(line.split(" ", 1)[1]), states
    finally:
        container.remove(force=True)


def test_mount_image_runs_the_profile_as_non_root_and_turns_healthy(docker_client, vllm_base_image):
    profile = _profile()
    port = free_port()
    tag = f"trdeploy-test/mount:{port}"
    out = _build(str(BF16_H100), "--base-image", vllm_base_image, "--tag", tag)
    assert out["builder"] == "classic" and out["tag"] == tag and out["size_bytes"] > 0
    image = docker_client.images.get(tag)
    config = image.attrs["Config"]
    labels = config["Labels"]
    for key in TRDEPLOY_LABELS:
        assert labels[key], key
    assert labels["io.trdeploy.model"] == profile.model.id
    assert labels["io.trdeploy.served-model-name"] == profile.engine_args.served_model_name == profile.model.id
    assert labels["io.trdeploy.gpu.tier"] == "h100" and labels["io.trdeploy.vllm.version"] == "0.25.0"
    assert labels["io.trdeploy.profile.sha256"] == out["labels"]["io.trdeploy.profile.sha256"] == ct.profile_sha256(profile)
    for key in ("title", "description", "version", "created", "ref.name", "base.name"):
        assert labels[f"org.opencontainers.image.{key}"], key
    assert labels["org.opencontainers.image.ref.name"] == tag
    assert config["User"] == f"{ct.UID}:{ct.GID}" == "10001:0"
    assert config["Healthcheck"]["StartPeriod"] == profile.prediction.startup.budget_s * 1_000_000_000
    assert config["Entrypoint"] == [ct.ENTRYPOINT]
    assert not any(e.startswith(("VLLM_API_KEY", "HF_TOKEN")) for e in config["Env"])

    # `docker run IMAGE --port N` moves the server, and the HEALTHCHECK follows it (probing 8000 would turn it unhealthy).
    key = "sk-" + secrets.token_hex(8)
    record, states = _run_until_healthy(docker_client, tag, env={"VLLM_API_KEY": key}, command=["--port", str(port)])
    assert record["argv"] == _expected_argv(profile, profile.engine_args.model, "--port", str(port))
    assert record["uid"] == ct.UID and record["gid"] == ct.GID
    assert record["env"]["VLLM_API_KEY"] == key  # from `docker run`, read by vLLM itself
    assert all(record["writable"].values()) and "VLLM_CACHE_ROOT" in record["writable"]
    assert {record["env"][var] for var in ct.CACHE_DIRS} == {f"/cache/{sub}" for sub in ct.CACHE_DIRS.values()}
    assert states[-1] == "healthy" and "starting" in states, states

    # An arbitrary UID (OpenShift) in group 0 can write every cache; `docker run` arguments override.
    record, states = _run_until_healthy(docker_client, tag, user="123457:0", command=["--max-num-seqs", "3", "--port", str(port)])
    assert record["uid"] == 123457
    assert all(record["writable"].values()), record["writable"]
    assert record["argv"] == _expected_argv(profile, profile.engine_args.model, "--max-num-seqs", "3", "--port", str(port))
    assert states[-1] == "healthy"
    docker_client.images.remove(tag, force=True)


def test_healthcheck_probes_the_port_the_server_uses(docker_client, vllm_base_image):
    """The probe reads the server's --port (the last one wins, as in vLLM): it fails while that server
    answers 503 and passes once it answers 200. A probe on 8000 or on the first --port would never pass."""
    tag = f"trdeploy-test/health:{free_port()}"  # unique: sessions may share one engine
    _build(str(BF16_H100), "--base-image", vllm_base_image, "--tag", tag)
    port = free_port()
    container = docker_client.containers.run(tag, command=["--port", "1", "--port", str(port)], network_mode="host", detach=True,
                                             environment={"STANDIN_STARTUP_DELAY_S": "4", "VLLM_API_KEY": "sk-test"})
    try:
        deadline = time.monotonic() + 20
        while http_status(f"http://127.0.0.1:{port}/health") != 503:  # listening, still starting
            assert time.monotonic() < deadline, container.logs().decode()[-2000:]
            time.sleep(0.1)
        assert container.exec_run(["python3", ct.HEALTHCHECK]).exit_code == 1
        while http_status(f"http://127.0.0.1:{port}/health") != 200:
            assert time.monotonic() < deadline, container.logs().decode()[-2000:]
            time.sleep(0.2)
        probe = container.exec_run(["python3", ct.HEALTHCHECK])
        assert probe.exit_code == 0, probe.output
    finally:
        container.remove(force=True)
        docker_client.images.remove(tag, force=True)


def test_entrypoint_refuses_an_image_built_from_another_profile(docker_client, vllm_base_image):
    tag = f"trdeploy-test/identity:{free_port()}"  # unique: sessions may share one engine
    _build(str(BF16_H100), "--base-image", vllm_base_image, "--tag", tag)
    other = ct.profile_sha256(_profile(AWQ_L40S))
    out = docker_client.containers.run(tag, environment={ct.EXPECT_PROFILE_ENV: other}, network_mode="host", detach=True)
    try:
        assert out.wait(timeout=30)["StatusCode"] == 64
        assert "build the image from the same profile" in out.logs().decode()
    finally:
        out.remove(force=True)
        docker_client.images.remove(tag, force=True)


def _exit_and_log(docker_client, image: str, *, env=None, command=None, volumes=None) -> tuple[int, str]:
    c = docker_client.containers.run(image, environment=env or {}, command=command, volumes=volumes, network_mode="host", detach=True)
    try:
        try:
            code = c.wait(timeout=8)["StatusCode"]
        except Exception:  # still running: it started serving
            code = None
        return code, c.logs().decode()
    finally:
        c.remove(force=True)


def test_image_refuses_to_serve_without_a_key_unless_built_to(docker_client, vllm_base_image, tmp_path):
    tag = f"trdeploy-test/keys:{free_port()}"  # unique: sessions may share one engine
    _build(str(BF16_H100), "--base-image", vllm_base_image, "--tag", tag)
    port = str(free_port())
    keyfile = tmp_path / "key"
    for env, files in (({}, ""), ({"VLLM_API_KEY": ""}, ""), ({"VLLM_API_KEY": " \t "}, ""),
                       ({"VLLM_API_KEY_FILE": "/run/key"}, "\n"), ({"VLLM_API_KEY_FILE": "/run/key"}, "  \n\n")):
        keyfile.write_text(files)
        code, log = _exit_and_log(docker_client, tag, env=env, command=["--port", port], volumes={str(keyfile): {"bind": "/run/key", "mode": "ro"}})
        assert code == ct.EXIT_NO_API_KEY and "no API key" in log, (env, files, code, log)
        assert "STANDIN_VLLM" not in log  # vLLM never started
    code, log = _exit_and_log(docker_client, tag, env={"VLLM_API_KEY_FILE": "/nonexistent"}, command=["--port", port])
    assert code == ct.EXIT_NO_API_KEY and "cannot be read" in log
    # A key from a file (the Kubernetes way), or on the command line, starts the server.
    keyfile.write_text("sk-from-file\n")
    code, log = _exit_and_log(docker_client, tag, env={"VLLM_API_KEY_FILE": "/run/key"}, command=["--port", port],
                              volumes={str(keyfile): {"bind": "/run/key", "mode": "ro"}})
    assert code is None and '"VLLM_API_KEY": "sk-from-file"' in log, log
    code, log = _exit_and_log(docker_client, tag, command=["--port", port, "--api-key", "sk-arg"])
    assert code is None and "STANDIN_VLLM" in log, log
    # Built to serve openly: it starts, and says so.
    _build(str(BF16_H100), "--base-image", vllm_base_image, "--tag", tag, "--no-api-key")
    assert docker_client.images.get(tag).labels["io.trdeploy.api-key"] == "off"
    code, log = _exit_and_log(docker_client, tag, command=["--port", port])
    assert code is None and "built with --no-api-key" in log, log
    docker_client.images.remove(tag, force=True)


def test_bake_puts_the_folder_in_the_last_layer_offline(docker_client, vllm_base_image, tmp_path):
    profile = _profile(AWQ_L40S)
    model_dir = tmp_path / "my-local-copy"  # any folder name: the image path follows the profile's model
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (model_dir / "model.safetensors").write_bytes(os.urandom(256 * 1024))
    port = free_port()
    tag = f"trdeploy-test/bake:{port}"
    out = _build(str(AWQ_L40S), "--base-image", vllm_base_image, "--tag", tag, "--model-source", "bake", "--model-dir", str(model_dir))
    assert out["model_in_image"] == "/models/Meta-Llama-3-8B-Instruct-awq" == ct.model_path(profile, weights_in_image=True)
    record, states = _run_until_healthy(docker_client, tag, command=["--port", str(port)])
    assert record["argv"] == _expected_argv(profile, "/models/Meta-Llama-3-8B-Instruct-awq", "--port", str(port))
    assert record["env"]["HF_HUB_OFFLINE"] == "1"
    assert states[-1] == "healthy"
    # The newest layer that adds bytes is the weights (a new checkpoint rebuilds only that layer).
    history = [h for h in docker_client.api.history(tag) if h["Size"] > 0]
    assert "COPY" in history[0]["CreatedBy"] and history[0]["Size"] >= 256 * 1024
    listing = docker_client.containers.run(tag, entrypoint=["ls", "/models/Meta-Llama-3-8B-Instruct-awq"],
                                           remove=True, network_mode="host").decode().split()
    assert sorted(listing) == ["config.json", "model.safetensors"]
    docker_client.images.remove(tag, force=True)


def _image_file(docker_client, tag: str, path: str) -> str:
    import io
    import tarfile

    container = docker_client.containers.create(tag, entrypoint=["true"])
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.getmembers()[0]
            return tar.extractfile(member).read().decode()
    finally:
        container.remove(force=True)


def test_download_token_is_in_no_layer_and_no_history(docker_client, vllm_base_image, tmp_path):
    profile = _profile()
    token = "hf_" + secrets.token_hex(16)
    port = free_port()
    tag = f"trdeploy-test/download:{port}"
    out = _build(str(BF16_H100), "--base-image", vllm_base_image, "--tag", tag,
                 "--model-source", "download", "--revision", "v1.0", env={"HF_TOKEN": token})
    assert out["builder"] == "buildkit"
    model = "/models/Meta-Llama-3-8B-Instruct"
    # Read the files from the image's filesystem, not from a container's log: a last line without a
    # newline (config.json) was once missing from `containers.run`'s output.
    got = _image_file(docker_client, tag, f"{model}/token-received") + _image_file(docker_client, tag, f"{model}/config.json")
    assert f"length={len(token)}" in got  # the secret reached the download step
    assert '"revision": "v1.0"' in got
    assert docker_client.images.get(tag).labels["io.trdeploy.model.revision"] == "v1.0"

    saved = tmp_path / "image.tar"
    with saved.open("wb") as handle:  # what `docker save` writes (same API)
        for chunk in docker_client.images.get(tag).save(named=True):
            handle.write(chunk)
    blob = saved.read_bytes()
    assert len(blob) > 1_000_000 and b"token-received" in blob  # the scan sees layer contents
    assert token.encode() not in blob
    history = subprocess.run(["docker", "history", "--no-trunc", tag], capture_output=True, text=True, check=True).stdout
    assert "download.py" in history and token not in history
    assert token not in json.dumps(docker_client.api.inspect_image(tag))

    record, states = _run_until_healthy(docker_client, tag, command=["--port", str(port)])
    assert record["argv"] == _expected_argv(profile, model, "--port", str(port))
    assert states[-1] == "healthy"
    docker_client.images.remove(tag, force=True)


def test_failed_step_is_one_line_and_leaves_no_tag(docker_client, tmp_path):
    # A base without /bin/sh: the RUN step fails.
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc/empty")
        tar.addfile(info, io.BytesIO(b""))
    shell_less = "trdeploy-test/no-shell:1"
    docker_client.api.import_image_from_data(buf.getvalue(), repository="trdeploy-test/no-shell", tag="1")
    tag = f"trdeploy-test/failed:{free_port()}"  # unique: sessions may share one engine
    r = run_cli("build", str(BF16_H100), "--base-image", shell_less, "--tag", tag)
    assert r.returncode == 2, r.stderr
    error = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(error) == 1 and "failed at step 5/" in error[0] and "Fix the step" in error[0], r.stderr[-2000:]
    import docker

    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)


@pytest.mark.parametrize("source", ["mount", "download"])  # the classic builder and BuildKit
def test_base_image_that_cannot_be_pulled_names_the_way_out(docker_client, source):
    """No registry is reachable here: the engine's real pull of a missing base fails, and the one line
    says what to do (pre-pull, or --base-image with a local or mirrored image)."""
    base = "registry.invalid/trdeploy-test/not-there:0"
    r = run_cli("build", str(BF16_H100), "--base-image", base, "--tag", "trdeploy-test/nopull:1", "--model-source", source, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    error = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(error) == 1, r.stderr[-2000:]
    assert f"The base image {base} is not on this engine and could not be pulled" in error[0]
    assert "--base-image" in error[0] and "docker pull" in error[0] and "Fix the step" not in error[0]


def test_push_failure_and_bad_tag_are_one_line(docker_client, vllm_base_image):
    r = run_cli("build", str(BF16_H100), "--base-image", vllm_base_image, "--tag", "Bad Tag")
    assert r.returncode == 2 and "not a valid image reference" in r.stderr, r.stderr
    tag = "127.0.0.1:9/trdeploy-test/push:1"  # nothing listens on port 9
    r = run_cli("build", str(BF16_H100), "--base-image", vllm_base_image, "--tag", tag, "--push")
    assert r.returncode == 2, r.stderr[-2000:]
    error = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(error) == 1 and "Push of 127.0.0.1:9/trdeploy-test/push:1 failed" in error[0], r.stderr[-2000:]
    docker_client.images.remove(tag, force=True)
