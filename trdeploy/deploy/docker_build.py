"""`trdeploy build`'s I/O edge: write the rendered context, build it on a Docker engine, tag, push.

Two builders, chosen by what the model placement needs and what this machine offers:
- the classic builder through the docker SDK (`client.api.build(..., decode=True)` streams each step);
  it has no secrets, which `mount` and `bake` do not need;
- BuildKit through a docker CLI, for `download` (the hub token is a secret mount): `docker buildx build`
  when the buildx plugin is installed, else a docker CLI older than 23, which drives the engine's
  built-in BuildKit itself under DOCKER_BUILDKIT=1 (Debian's docker.io). Neither: a one-line error.

The image is built untagged and tagged only after the build succeeded, so a failed build leaves no
tag pointing at a half-built or stale image.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from trdeploy.args import Args, arg
from trdeploy.deploy.image import BuildContext, BuildOptions, default_tag, render_context
from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError
from trdeploy.fields import is_image_ref
from trdeploy.output import atomic_directory

TAIL_LINES = 12
LineSink = Callable[[str], None]


class BuildRequest(Args):
    """Everything `trdeploy build` was asked for (the CLI fills it; library callers may too)."""

    command: ClassVar[str] = "build"

    profile: Path = arg(..., help="DeploymentProfile written by `trdeploy tune` (trdeploy.yaml).")
    options: BuildOptions = BuildOptions()
    model_dir: Path | None = arg(None, help="bake: the local checkpoint folder.", default_note="the profile's model path")
    tag: str | None = arg(None, help="Image tag.", default_note="trdeploy/PROFILE-NAME:PROFILE-HASH-MODEL-SOURCE")
    push: bool = arg(False, help="Push the tag after the build (credentials from the docker config).")
    dry_run: bool = arg(False, help="Write the build context to -o DIR; build nothing, no engine needed.")
    output: Path | None = arg(None, flag="--output", help="Dry run: the folder to write the context into.")
    force: bool = arg(False, help="Overwrite existing output.")
    hf_token_file: Path | None = arg(None, help="download: a file holding the hub token.", default_note="$HF_TOKEN")


class BuildResult(BaseModel):
    profile: str
    context: BuildContext
    context_dir: str | None = None
    image_id: str | None = None
    tag: str | None = None
    pushed: bool = False
    size_bytes: int | None = None
    build_seconds: float | None = None
    builder: Literal["classic", "buildkit"] | None = None

    def as_json(self) -> dict[str, Any]:
        c = self.context
        return {
            "profile": self.profile,
            "dry_run": self.image_id is None,
            "context_dir": self.context_dir,
            "files": sorted(c.files),
            "base_image": c.base_image,
            "cuda": c.cuda,
            "model_source": c.model_source,
            "model_in_image": c.model_in_image,
            "argv": c.argv,
            "start_period_s": c.start_period_s,
            "labels": c.labels,
            "builder": self.builder,
            "image_id": self.image_id,
            "tag": self.tag,
            "pushed": self.pushed,
            "size_bytes": self.size_bytes,
            "build_seconds": self.build_seconds,
            "notes": c.notes,
        }


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same filesystem: no bytes copied for multi-GB weights
    except OSError:
        shutil.copy2(src, dst)


def _hub_blobs(model_dir: Path) -> Path | None:
    """The blobs folder of a hub-cache snapshot (`.../models--ORG--NAME/snapshots/REV`), whose files are
    links into `../../blobs`; None for any other folder."""
    if model_dir.parent.name == "snapshots" and model_dir.parent.parent.name.startswith("models--"):
        return model_dir.parent.parent / "blobs"
    return None


def model_files(model_dir: Path) -> list[tuple[str, Path]]:
    """(path inside the model folder, the regular file to copy) for every file to bake, checked before
    anything is copied. A link is followed only to a regular file inside the model folder (or, for a
    hub-cache snapshot, inside its repository's blobs): a link out of it (a token file, /dev/zero) and any
    special file (FIFO, device, socket) are refused in one line."""
    root = Path(os.path.realpath(model_dir))
    blobs = _hub_blobs(root)
    allowed = [root] + ([Path(os.path.realpath(blobs))] if blobs is not None else [])
    hint = "Bake a folder of plain files (e.g. `huggingface-cli download ORG/NAME --local-dir DIR`), or use --model-source mount."
    files: list[tuple[str, Path]] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = Path(entry.path).relative_to(root).as_posix()
                st = os.lstat(entry.path)
                if stat.S_ISDIR(st.st_mode):
                    pending.append(Path(entry.path))
                    continue
                source = Path(entry.path)
                if stat.S_ISLNK(st.st_mode):
                    real = Path(os.path.realpath(entry.path))
                    if not any(real == base or base in real.parents for base in allowed):
                        raise TrdeployError(f"{model_dir}/{rel} is a link to {real}, outside the model folder; bake never follows it.", hint=hint)
                    st = os.stat(real)
                    source = real
                    if stat.S_ISDIR(st.st_mode):
                        raise TrdeployError(f"{model_dir}/{rel} is a link to a folder; bake copies files only.", hint=hint)
                if not stat.S_ISREG(st.st_mode):
                    raise TrdeployError(f"{model_dir}/{rel} is not a regular file (a FIFO, device or socket); bake refuses it.", hint=hint)
                files.append((rel, source))
    if not files:
        raise TrdeployError(f"The model folder {model_dir} holds no files.", hint="Point --model-dir at the checkpoint folder.")
    return sorted(files)


def write_context(context: BuildContext, dest: Path, model_files_: list[tuple[str, Path]] | None = None) -> None:
    """Write the files into an existing empty folder `dest` (and the weights into dest/model for bake)."""
    for rel, text in context.files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755 if rel in context.executable else 0o644)
    for rel, source in model_files_ or []:
        target = dest / "model" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(str(source), str(target))


def render(req: BuildRequest) -> tuple[DeploymentProfile, BuildContext]:
    profile = DeploymentProfile.load(req.profile)
    if req.options.model_source == "bake":
        _bake_dir(req, profile)
    return profile, render_context(profile, req.options)


def _bake_dir(req: BuildRequest, profile: DeploymentProfile) -> Path:
    model_dir = req.model_dir or Path(profile.engine_args.model)
    if not model_dir.is_dir():
        raise TrdeployError(
            f"The model folder {model_dir} does not exist.",
            hint="Pass --model-dir PATH (the checkpoint folder to bake in), or use --model-source mount.",
        )
    if not any(model_dir.iterdir()):
        raise TrdeployError(f"The model folder {model_dir} is empty.", hint="Point --model-dir at the checkpoint folder.")
    return model_dir


def docker_client():
    """A docker SDK client for the engine DOCKER_HOST (or the default socket) names, checked live."""
    try:
        import docker
    except ImportError as exc:
        raise TrdeployError("The docker SDK is not installed.", hint="pip install 'trdeploy[build]'.") from exc
    where = os.environ.get("DOCKER_HOST") or "the default socket (/var/run/docker.sock)"
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # DockerException, connection errors: all mean "no engine here"
        raise TrdeployError(
            f"No Docker engine reachable at {where} ({exc.__class__.__name__}).",
            hint="Start dockerd, or set DOCKER_HOST to a running engine; --dry-run -o DIR writes the context without one.",
        ) from exc
    return client


def _docker_clis() -> list[str]:
    seen: list[str] = []
    for cand in (shutil.which("docker"), "/usr/local/bin/docker", "/usr/bin/docker"):
        if cand and os.access(cand, os.X_OK) and os.path.realpath(cand) not in map(os.path.realpath, seen):
            seen.append(cand)
    return seen


def buildkit_command() -> tuple[list[str], dict[str, str]]:
    """(argv prefix, extra env) of a client that drives BuildKit with secrets, or a one-line error."""
    clis = _docker_clis()
    for cli in clis:
        if subprocess.run([cli, "buildx", "version"], capture_output=True, check=False).returncode == 0:
            return [cli, "buildx", "build", "--load"], {}
    for cli in clis:
        out = subprocess.run([cli, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True, check=False)
        match = re.match(r"(\d+)\.", out.stdout.strip())
        if match and int(match.group(1)) < 23:
            return [cli, "build"], {"DOCKER_BUILDKIT": "1"}
    found = ", ".join(clis) or "no docker CLI on PATH"
    raise TrdeployError(
        f"--model-source download needs BuildKit secrets, and no client here drives BuildKit ({found}: no buildx plugin).",
        hint="Install the buildx plugin (docker-buildx-plugin), or use --model-source mount or bake.",
    )


def _hf_token(req: BuildRequest) -> str | None:
    if req.hf_token_file is not None:
        if not req.hf_token_file.is_file():
            raise TrdeployError(f"The token file {req.hf_token_file} does not exist.", hint="Pass an existing --hf-token-file.")
        return req.hf_token_file.read_text(encoding="utf-8").strip() or None
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


# What an engine says when the FROM image is neither local nor pullable (no registry, no network, a typo,
# no credentials for a private mirror).
_PULL_FAILED = re.compile(
    r"pull access denied|manifest unknown|manifest for .* not found|repository does not exist|not found: manifest|"
    r"failed to resolve source metadata|failed to do request|no such host|dial tcp|i/o timeout|connection refused|"
    r"toomanyrequests|unauthorized|TLS handshake|error pulling image|failed to pull|Get \"?https://",
    re.I,
)


def _fail(what: str, tail: collections.deque[str], base_image: str | None = None) -> TrdeployError:
    last = " | ".join([line for line in tail if line.strip()][-6:])
    text = f"{what}; last lines: {last}" if last else what
    if base_image is not None and _PULL_FAILED.search(what + " " + last):
        return TrdeployError(
            f"The base image {base_image} is not on this engine and could not be pulled ({what[:300]}).",
            hint=f"Pre-pull it (`docker pull {base_image}` where a registry is reachable, then `docker save`/`docker load`), "
            "or pass --base-image with a local or mirrored image (REGISTRY/vllm/vllm-openai:TAG).",
        )
    return TrdeployError(text, hint="Fix the step and run `trdeploy build` again.")


def _classic_build(client, context_dir: Path, labels: dict[str, str], on_line: LineSink, base_image: str) -> str:
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    image_id = None
    step = "the build"
    try:
        stream = client.api.build(
            path=str(context_dir), rm=True, forcerm=True, decode=True, pull=False, labels=labels, network_mode="host"
        )
        for chunk in stream:
            if "error" in chunk:
                tail.append(chunk["error"].strip())
                raise _fail(f"Image build failed at {step}: {chunk['error'].strip()}", tail, base_image if step == "the build" or step.startswith("step 1/") else None)
            text = chunk.get("stream") or chunk.get("status") or ""
            for line in text.splitlines():
                if line.startswith("Step "):
                    step = line.split(" : ")[0].lower()
                if line.strip():
                    tail.append(line.rstrip())
                    on_line(line.rstrip())
            aux = chunk.get("aux") or {}
            if "ID" in aux:
                image_id = aux["ID"]
    except TrdeployError:
        raise
    except Exception as exc:  # engine went away mid-build, API error
        raise _fail(f"Image build failed at {step}: {exc}", tail, base_image if step == "the build" or step.startswith("step 1/") else None) from exc
    if image_id is None:
        raise _fail("Image build finished without an image id", tail)
    return image_id


def _buildkit_build(context_dir: Path, labels: dict[str, str], token: str | None, on_line: LineSink, base_image: str) -> str:
    prefix, extra_env = buildkit_command()
    with tempfile.TemporaryDirectory(prefix="trdeploy-build-") as private:
        os.chmod(private, 0o700)
        iidfile = Path(private) / "iid"
        argv = [*prefix, "--progress=plain", "--network=host", "--iidfile", str(iidfile)]
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        if token:
            secret = Path(private) / "hf_token"
            secret.write_text(token, encoding="utf-8")
            secret.chmod(0o600)
            argv += ["--secret", f"id=hf_token,src={secret}"]
        argv.append(str(context_dir))
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **extra_env}
        )
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                on_line(line)
        if proc.wait() != 0:
            failed = next((t for t in tail if "ERROR" in t or "failed to solve" in t), "a step failed")
            from_step = any(re.search(r"\[internal\] load metadata for|\[1/\d+\] FROM", t) for t in tail) and _PULL_FAILED.search(" ".join(tail))
            raise _fail(f"Image build failed: {failed}", tail, base_image if from_step else None)
        if not iidfile.is_file():
            raise _fail("Image build finished without an image id", tail)
        return iidfile.read_text().strip()


def _split_tag(tag: str) -> tuple[str, str]:
    repo, sep, name = tag.rpartition(":")
    if sep and "/" not in name:
        return repo, name
    return tag, "latest"


def build(req: BuildRequest, on_line: LineSink = lambda line: None) -> BuildResult:
    """Render, then either write the context (dry run) or build, tag and optionally push the image."""
    profile, context = render(req)
    model_dir = _bake_dir(req, profile) if req.options.model_source == "bake" else None
    files = model_files(model_dir) if model_dir is not None else None
    if req.dry_run:
        if req.output is None:
            raise TrdeployError("--dry-run needs -o DIR for the build context.", hint="Pass -o DIR.")
        inputs = {"PROFILE": req.profile, "--model-dir": model_dir, "--hf-token-file": req.hf_token_file}
        with atomic_directory(req.output, force=req.force, inputs=inputs) as tmp:
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the context from other users
            write_context(context, tmp, files)
        return BuildResult(profile=str(req.profile), context=context, context_dir=str(req.output))

    token = _hf_token(req) if context.needs_secrets else None
    if context.needs_secrets:
        buildkit_command()  # fail before contacting the engine for minutes
    tag = req.tag or default_tag(profile, req.options.model_source)
    if not is_image_ref(tag) or "@" in tag:
        raise TrdeployError(f"--tag {tag!r} is not a valid image reference.", hint="Use [REGISTRY/]NAME[:TAG], lowercase.")
    client = docker_client()
    labels = {
        "org.opencontainers.image.created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "org.opencontainers.image.ref.name": tag,
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="trdeploy-context-") as tmp:
        context_dir = Path(tmp)
        write_context(context, context_dir, files)
        if context.needs_secrets:
            image_id = _buildkit_build(context_dir, labels, token, on_line, context.base_image)
            builder = "buildkit"
        else:
            image_id = _classic_build(client, context_dir, labels, on_line, context.base_image)
            builder = "classic"
    seconds = round(time.monotonic() - started, 1)
    repo, name = _split_tag(tag)
    try:
        client.api.tag(image_id, repo, name)
        size = client.api.inspect_image(image_id).get("Size")
    except Exception as exc:
        raise TrdeployError(f"Tagging {image_id[:19]} as {tag} failed: {exc}.", hint="Check the engine and the tag.") from exc
    pushed = False
    if req.push:
        _push(client, repo, name, on_line)
        pushed = True
    return BuildResult(
        profile=str(req.profile),
        context=context,
        image_id=image_id,
        tag=tag,
        pushed=pushed,
        size_bytes=size,
        build_seconds=seconds,
        builder=builder,
    )


def _push(client, repo: str, name: str, on_line: LineSink) -> None:
    # Credentials: the SDK reads the docker config (~/.docker/config.json, DOCKER_CONFIG) itself.
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        for chunk in client.api.push(repo, tag=name, stream=True, decode=True):
            if "error" in chunk:
                raise _fail(f"Push of {repo}:{name} failed: {chunk['error'].strip()}", tail)
            line = " ".join(str(chunk.get(k, "")) for k in ("id", "status") if chunk.get(k))
            if line:
                tail.append(line)
                on_line(line)
    except TrdeployError:
        raise
    except Exception as exc:
        raise _fail(f"Push of {repo}:{name} failed: {exc}", tail) from exc
