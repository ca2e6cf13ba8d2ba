"""Docker fixtures for image tests (`trdeploy build`, and `render-k8s`'s end-to-end test).

`docker_client`: a docker SDK client for the engine that scripts/ci/docker-engine.sh starts
(DOCKER_HOST, defaulting to unix:///var/run/trdeploy-docker/docker.sock). Without an engine the
test is skipped, except under CI (CI=true), where it fails: CI must exercise the real engine.

`vllm_base_image`: the tag of a local stand-in for vllm/vllm-openai (no registry is reachable):
the script's minimal Debian with python3, plus tests/deploy/standin_vllm.py as /usr/local/bin/vllm
(records argv/env/UID and answers /health) and a stand-in huggingface_hub (standin_hf/). Like the
real image it runs as root with ENTRYPOINT ["vllm", "serve"]. Pass it as `--base-image`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DEFAULT_DOCKER_HOST = "unix:///var/run/trdeploy-docker/docker.sock"
ROOTFS_TAG = "trdeploy-test/debian-python3:bookworm"  # made by scripts/ci/docker-engine.sh
STANDIN_REPO = "trdeploy-test/vllm-openai"

_STANDIN_DOCKERFILE = f"""FROM {ROOTFS_TAG}
COPY standin_vllm.py /usr/local/bin/vllm
COPY standin_hf/huggingface_hub/ /usr/lib/python3/dist-packages/huggingface_hub/
RUN chmod 0755 /usr/local/bin/vllm
WORKDIR /vllm-workspace
ENTRYPOINT ["vllm", "serve"]
"""


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: run `bash scripts/ci/docker-engine.sh` first)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_host() -> str:
    host = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    os.environ["DOCKER_HOST"] = host  # the CLI under test, run in subprocesses, inherits it
    return host


@pytest.fixture(scope="session")
def docker_client(docker_host):
    try:
        import docker
    except ImportError:
        _unavailable("the docker SDK is not installed (pip install -e '.[build]')")
    try:
        client = docker.DockerClient(base_url=docker_host, timeout=300)
        client.ping()
    except Exception as exc:
        _unavailable(f"no Docker engine at {docker_host} ({exc.__class__.__name__})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def vllm_base_image(docker_client) -> str:
    import docker

    try:
        docker_client.images.get(ROOTFS_TAG)
    except docker.errors.ImageNotFound:
        _unavailable(f"local base {ROOTFS_TAG} is missing (scripts/ci/docker-engine.sh builds it)")
    import hashlib
    import io
    import tarfile

    # Tagged by the stand-in's content: sessions sharing one engine (worktrees, CI jobs) never build over each
    # other's stand-in between this build and the images built FROM it.
    sources = [HERE / "standin_vllm.py", HERE / "standin_hf" / "huggingface_hub" / "__init__.py"]
    digest = hashlib.sha256(_STANDIN_DOCKERFILE.encode() + b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    tag = f"{STANDIN_REPO}:standin-{digest}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = _STANDIN_DOCKERFILE.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.add(HERE / "standin_vllm.py", arcname="standin_vllm.py")
        tar.add(HERE / "standin_hf" / "huggingface_hub" / "__init__.py", arcname="standin_hf/huggingface_hub/__init__.py")
    buf.seek(0)
    docker_client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True, network_mode="host", pull=False)
    return tag
