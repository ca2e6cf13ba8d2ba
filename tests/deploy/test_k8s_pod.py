"""The rendered pod on day one of a real cluster, run in the real Docker engine as a kubelet would
(tests/deploy/_kubelet.py) with the stand-in vllm that drains and aborts as vLLM 0.25 does:

- termination: preStop, then SIGTERM, then SIGKILL after the grace period. A request streaming through a
  rollout finishes (vLLM's --shutdown-timeout from the profile); with vLLM's default (0) it is cut short;
- the cache volume when its driver ignores fsGroup (NFS-like ReadWriteMany volumes): the init step names the
  fix; --cache-group and --cache-chown make it writable, and a second pod under another UID in the group
  writes what the first made;
- --read-only-root still runs (every cache on a volume).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml
from _bench_servers import free_port
from conftest import ROOT, run_cli

from tests.deploy._http import standin_record
from tests.deploy._kubelet import PodFailed, run_pod, terminate_pod, wait_for
from trdeploy.deploy import container as ct

RECIPE = ROOT / "recipes" / "llama-3-8b-bf16-h100.yaml"  # a hub model: the fetch-model init container runs too
KEY = "sk-pod-test"


@pytest.fixture(scope="module")
def image(docker_client, vllm_base_image):
    tag = f"trdeploy-test/k8s-pod:{free_port()}"
    r = run_cli("build", str(RECIPE), "--base-image", vllm_base_image, "--tag", tag, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    yield tag
    docker_client.images.remove(tag, force=True)


def _pod(tmp_path: Path, image: str, port: int, *flags: str) -> tuple[dict, str]:
    out = tmp_path / f"render-{port}-{len(list(tmp_path.glob('render-*')))}"
    r = run_cli("render-k8s", str(RECIPE), "-o", str(out), "--image", image, "--port", str(port), *flags)
    assert r.returncode == 0, r.stderr[-3000:]
    deployment = next(yaml.safe_load_all((out / "deployment.yaml").read_text()))
    return deployment["spec"]["template"]["spec"], deployment["metadata"]["name"]


def _start(docker_client, pod: dict, name: str, volumes: Path, port: int, **kwargs):
    container, dirs = run_pod(docker_client, pod, secrets={(f"{name}-api-key", "api-key"): KEY}, volumes_root=volumes,
                              name=f"trdeploy-pod-{port}", extra_env=kwargs.pop("env", {}), **kwargs)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", container, 60)
    except Exception:
        container.remove(force=True)
        raise
    return container, dirs


def _stream(port: int, max_tokens: int, out: dict) -> None:
    """One streaming completion; records the tokens received and the last finish_reason."""
    body = json.dumps({"model": "meta-llama/Meta-Llama-3-8B-Instruct", "prompt": "Merhaba", "max_tokens": max_tokens, "stream": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    out.update(tokens=0, finish_reason=None, error=None)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: {"):
                    continue
                for choice in json.loads(line[6:]).get("choices", []):
                    out["tokens"] += bool(choice.get("text"))
                    out["finish_reason"] = choice.get("finish_reason") or out["finish_reason"]
    except (OSError, http.client.HTTPException) as exc:  # a cut chunked stream raises IncompleteRead
        out["error"] = repr(exc)


def test_a_request_in_flight_survives_termination_and_is_cut_without_the_drain(docker_client, image, tmp_path):
    """200 tokens 0.1 s apart (20 s) outlast the 10 s preStop: the stream runs on through SIGTERM while vLLM drains
    (the profile's engine_args.shutdown_timeout, 30 s, in the image's command), inside the grace period. The same pod
    with vLLM's default --shutdown-timeout 0 appended (vLLM keeps the last value) cuts it at SIGTERM: the mutation
    that shows the drain is what keeps it."""
    runs = {}
    for mode in ("drain", "abort"):
        port = free_port()
        pod, name = _pod(tmp_path, image, port)
        c = pod["containers"][0]
        assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
        assert pod["terminationGracePeriodSeconds"] == 10 + 30 + 30  # preStop + the profile's drain + the engine's exit
        if mode == "abort":
            c["args"] = [*c.get("args", []), "--shutdown-timeout", "0"]
        container, _ = _start(docker_client, pod, name, tmp_path / f"vol-{mode}", port, env={"STANDIN_ITL_S": "0.1"})
        runs[mode] = {"container": container, "pod": pod, "port": port, "stream": {}, "late": {}}
    try:
        threads = [threading.Thread(target=_stream, args=(r["port"], 200, r["stream"])) for r in runs.values()]
        for t in threads:
            t.start()
        stops = {}

        def stop(mode: str) -> None:
            import docker  # the build extra (the docker_client fixture skips without it)

            # A client of its own per thread: docker-py's exec and wait calls are not safe to share across threads.
            own = docker.DockerClient(base_url=os.environ["DOCKER_HOST"], timeout=300)
            try:
                stops[mode] = terminate_pod(own.containers.get(runs[mode]["container"].id), runs[mode]["pod"])
            except Exception as exc:  # shown by the assertion below
                stops[mode] = {"error": repr(exc)}
            finally:
                own.close()

        stoppers = [threading.Thread(target=stop, args=(m,)) for m in runs]
        for t in stoppers:
            t.start()
        for t in [*threads, *stoppers]:
            t.join(180)
        drain, abort = runs["drain"]["stream"], runs["abort"]["stream"]
        if drain["tokens"] != 200:  # what happened to the server, for the assertion below
            c = runs["drain"]["container"]
            c.reload()
            state = {k: c.attrs["State"].get(k) for k in ("Status", "ExitCode", "OOMKilled", "Error", "StartedAt", "FinishedAt")}
            drain["server"] = {"stop": stops.get("drain"), "state": state, "log": c.logs().decode()[-700:]}
        assert drain["error"] is None and drain["tokens"] == 200 and drain["finish_reason"] == "length", drain
        assert abort["finish_reason"] == "abort" and 50 < abort["tokens"] < 200, abort  # cut at SIGTERM, ~10 s in
        for mode, r in runs.items():
            s = stops[mode]
            assert "error" not in s, s
            assert s["prestop_s"] >= 9.5 and not s["killed"] and s["exit_code"] == 0, (mode, s)
            assert s["stopped_after_s"] < r["pod"]["terminationGracePeriodSeconds"], (mode, s)
        log = runs["drain"]["container"].logs().decode()
        assert "mode=drain timeout=30s, 1 in flight" in log and "mode=abort" in runs["abort"]["container"].logs().decode()
    finally:
        for r in runs.values():
            r["container"].remove(force=True)


NFS_ROOT = (0, 0, 0o755)  # an export's root as the provisioner leaves it: root-owned, only root writes
GROUP_OWNED = (0, 5000, 0o2770)  # e.g. an EFS access point or an NFS export owned by a group


def test_cache_volume_that_ignores_fsgroup(docker_client, image, tmp_path):
    # The default render on a volume that ignores fsGroup: the init step stops with the fix named (not vLLM, later,
    # with a permission error deep in a compile cache).
    port = free_port()
    pod, name = _pod(tmp_path, image, port)
    assert [i["name"] for i in pod["initContainers"]] == ["cache-dirs", "fetch-model"]
    with pytest.raises(PodFailed, match=r"init container cache-dirs exited 1: .*cannot write /cache/.*--cache-group GID.*--cache-chown"):
        run_pod(docker_client, pod, secrets={}, volumes_root=tmp_path / "nfs0", name=f"trdeploy-pod-{port}", ignores_fsgroup={"cache": NFS_ROOT})
    with pytest.raises(PodFailed, match="cache-dirs exited 1"):
        run_pod(docker_client, pod, secrets={}, volumes_root=tmp_path / "grp0", name=f"trdeploy-pod-{port}b", ignores_fsgroup={"cache": GROUP_OWNED})

    # --cache-group: the pod joins the group that owns the volume.
    port = free_port()
    pod, name = _pod(tmp_path, image, port, "--cache-group", "5000")
    assert pod["securityContext"]["supplementalGroups"] == [5000]
    container, _ = _start(docker_client, pod, name, tmp_path / "grp", port, ignores_fsgroup={"cache": GROUP_OWNED})
    try:
        record = standin_record(container)
        assert all(record["writable"].values()) and record["uid"] == ct.UID, record["writable"]
    finally:
        container.remove(force=True)

    # --cache-chown: a root init container (CHOWN and FOWNER only) takes the volume root for the contract's user.
    port = free_port()
    pod, name = _pod(tmp_path, image, port, "--cache-chown")
    owner = pod["initContainers"][0]
    assert owner["name"] == "cache-owner" and owner["securityContext"]["runAsUser"] == 0
    assert owner["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    volumes = tmp_path / "nfs"
    container, dirs = _start(docker_client, pod, name, volumes, port, ignores_fsgroup={"cache": NFS_ROOT})
    try:
        assert all(standin_record(container)["writable"].values())
    finally:
        container.remove(force=True)
    cache = dirs["cache"]
    assert (cache.stat().st_uid, cache.stat().st_gid) == (ct.UID, ct.GID)
    for sub in ct.CACHE_DIRS.values():  # group-writable and setgid, so any UID of the group writes there
        mode = (cache / sub).stat().st_mode
        assert mode & 0o2070 == 0o2070, (sub, oct(mode))

    # A second pod under another UID in group 0 (OpenShift's arbitrary UIDs) on the same volume, without a chown.
    port = free_port()
    pod, name = _pod(tmp_path, image, port)
    for spec in (pod, *pod["initContainers"], *pod["containers"]):
        spec["securityContext"]["runAsUser"] = 123457
    container, _ = _start(docker_client, pod, name, volumes, port, ignores_fsgroup={"cache": (ct.UID, ct.GID, 0o2775)})
    try:
        record = standin_record(container)
        assert record["uid"] == 123457 and all(record["writable"].values()), record["writable"]
    finally:
        container.remove(force=True)


def test_read_only_root_is_an_opt_in_that_still_runs(docker_client, image, tmp_path):
    port = free_port()
    pod, name = _pod(tmp_path, image, port)
    assert {c["securityContext"]["readOnlyRootFilesystem"] for c in (*pod["initContainers"], *pod["containers"])} == {False}
    pod, name = _pod(tmp_path, image, port, "--read-only-root")
    assert {c["securityContext"]["readOnlyRootFilesystem"] for c in (*pod["initContainers"], *pod["containers"])} == {True}
    container, _ = _start(docker_client, pod, name, tmp_path / "ro", port)
    try:
        assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
        assert all(standin_record(container)["writable"].values())
    finally:
        container.remove(force=True)
