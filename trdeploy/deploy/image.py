"""The serving image for a DeploymentProfile, rendered as a Docker build context (pure: no I/O).

`render_context(profile, options)` returns the files of the context (Dockerfile, .dockerignore,
entrypoint, health check, the profile itself) plus the facts a caller reports (base image, argv,
labels). The docker side lives in `trdeploy.deploy.docker_build`. The user, paths, environment,
entrypoint, port and health check come from the container contract (`trdeploy.deploy.container`),
which render-k8s runs too; the base image's CUDA build and the start-up budget come from the profile.
This module never re-derives what `tune` decided (no import of trdeploy.sizing).

Why the image looks the way it does (field problems with the stock vllm/vllm-openai image):
- it runs as root: we add a numbered user in group 0 and make every writable path group-0 writable,
  so an arbitrary UID (OpenShift, `runAsUser`) works too;
- it has no HEALTHCHECK: we probe /health with python3 (always in the base) on the port the server
  really uses, with a start period from the profile's start-up budget;
- compile caches vanish on restart (2-5 minute starts): every cache lives under one path, so one
  volume keeps restarts warm;
- tokens leak into layers through ARG/ENV: the API key is read from the environment at run time and
  the hub token for `download` is a BuildKit secret mount, never an ARG, ENV or file in a layer.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import BaseModel

from trdeploy import hub
from trdeploy.args import Args, arg
from trdeploy.deploy import container as ct
from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError
from trdeploy.fields import HubRepo, ImageRef, Revision

BASE_REPOSITORY = "vllm/vllm-openai"
# Tag suffix of each CUDA build of vllm/vllm-openai (from v0.20.0: the plain tag is CUDA 13.0, `-cu129` is
# CUDA 12.9). Which build a profile needs, and the driver it needs, is tune's decision (profile.gpu.cuda).
CUDA_TAG_SUFFIX: dict[str, str] = {"13.0": "", "12.9": "-cu129"}

ModelSource = Literal["mount", "bake", "download"]
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}\Z")


class BuildOptions(Args):
    """What `trdeploy build` may choose beyond the profile (the profile decides everything else)."""

    command: ClassVar[str] = "build"

    model_source: ModelSource = arg(
        "mount",
        help="mount: no weights in the image (a hub id downloads into the cache volume, a local folder is mounted); "
        "bake: copy --model-dir into the last layer; download: fetch from the hub at build time (token as a BuildKit secret).",
    )
    model_repo: HubRepo | None = arg(None, help="download: the hub repository.", default_note="the profile's model, if a hub id")
    revision: Revision | None = arg(None, help="download: the hub revision (branch, tag or commit); recorded in the labels.", default_note="main")
    base_image: ImageRef | None = arg(
        None,
        help="Base image instead of vllm/vllm-openai:vVERSION[-cuXYZ] (a local, mirrored or pre-pulled image); IMAGE:TAG or IMAGE@sha256:DIGEST.",
    )
    api_key: bool = arg(
        True,
        flag="--api-key/--no-api-key",
        help="The image refuses to start without an API key (VLLM_API_KEY or VLLM_API_KEY_FILE); --no-api-key builds one that serves openly.",
    )


class BuildContext(BaseModel):
    """A rendered build context and the facts about it."""

    files: dict[str, str]  # relative path -> text
    executable: list[str]  # files that need the execute bit
    base_image: str
    cuda: str
    argv: list[str]  # exactly what the container runs with no `docker run` arguments
    labels: dict[str, str]
    start_period_s: int
    model_source: str
    model_in_image: str | None  # absolute path of the weights inside the image (bake/download)
    needs_secrets: bool  # download: BuildKit secret mount
    notes: list[str]


def weights_in_image(model_source: str) -> bool:
    return model_source in ("bake", "download")


def choose_base(profile: DeploymentProfile, options: BuildOptions) -> str:
    """vllm/vllm-openai at the profile's vLLM version in the profile's CUDA build, unless --base-image."""
    if options.base_image:
        return options.base_image
    return release_image(profile)


def release_image(profile: DeploymentProfile) -> str:
    cuda = profile.gpu.cuda
    if cuda not in CUDA_TAG_SUFFIX:
        raise TrdeployError(
            f"The profile asks for CUDA {cuda!r}; vllm/vllm-openai is built for CUDA {', '.join(CUDA_TAG_SUFFIX)}.",
            hint="Re-run `trdeploy tune` (it picks a build the driver runs), or pass --base-image.",
        )
    return f"{BASE_REPOSITORY}:v{profile.vllm_version.lstrip('v')}{CUDA_TAG_SUFFIX[cuda]}"


def start_period_s(profile: DeploymentProfile) -> int:
    """HEALTHCHECK start period: the profile's start-up budget (tune's one margin over the cold start)."""
    return profile.prediction.startup.budget_s


def default_tag(profile: DeploymentProfile, model_source: str) -> str:
    """trdeploy/NAME:HASH-SOURCE: a `download` build never takes the tag of an earlier `mount` build."""
    name = re.sub(r"[^a-z0-9._-]+", "-", profile.name.lower()).strip("-._")[:100].strip("-._") or "model"
    return f"trdeploy/{name}:{ct.profile_sha256(profile)[:12]}-{model_source}"


def download_repo(profile: DeploymentProfile, options: BuildOptions) -> str:
    repo = options.model_repo or profile.engine_args.model
    if not hub.is_hub_id(repo, revision=False):
        raise TrdeployError(
            f"The profile's model {profile.engine_args.model!r} is a local folder, not a hub repository.",
            hint="Pass --model-repo ORG/NAME for --model-source download, or use --model-source bake --model-dir PATH.",
        )
    return repo


def _labels(profile: DeploymentProfile, options: BuildOptions, base: str) -> dict[str, str]:
    digest = ct.profile_sha256(profile)
    base_name, _, base_digest = base.partition("@")
    labels = {
        "org.opencontainers.image.title": profile.name,
        "org.opencontainers.image.description": (
            f"vLLM {profile.vllm_version} serving {profile.model.id} ({profile.quantization}) "
            f"on {profile.gpu.count}x {profile.gpu.tier}, rendered by trdeploy"
        ),
        "org.opencontainers.image.version": digest[:12],
        "org.opencontainers.image.vendor": "trdeploy",
        "org.opencontainers.image.base.name": base_name,
    }
    if base_digest:
        labels["org.opencontainers.image.base.digest"] = base_digest
    labels.update(
        {
            "io.trdeploy.model": profile.model.id,
            "io.trdeploy.model.revision": options.revision or ("local" if options.model_source == "bake" else "main"),
            "io.trdeploy.model.source": options.model_source,
            "io.trdeploy.quantization": profile.quantization,
            "io.trdeploy.gpu.tier": profile.gpu.tier,
            "io.trdeploy.gpu.count": str(profile.gpu.count),
            "io.trdeploy.vllm.version": profile.vllm_version,
            "io.trdeploy.cuda": profile.gpu.cuda if not options.base_image else "unknown (--base-image)",
            "io.trdeploy.min-driver": profile.gpu.min_driver,
            "io.trdeploy.profile.name": profile.name,
            "io.trdeploy.profile.sha256": digest,
            "io.trdeploy.served-model-name": profile.engine_args.served_model_name,
            "io.trdeploy.port": str(ct.PORT),
            "io.trdeploy.cache-path": ct.CACHE_ROOT,
            "io.trdeploy.api-key": "required" if options.api_key else "off",
        }
    )
    return labels


_DOWNLOAD = '''"""Build-time download of the weights (--model-source download).

The hub token arrives as a BuildKit secret mounted at /run/secrets/hf_token for this RUN only: it is
in no layer, no ENV, no ARG and no history entry. Without the secret the download is anonymous.
"""

import sys
from pathlib import Path

from huggingface_hub import snapshot_download

repo, revision, dest = sys.argv[1:4]
secret = Path("/run/secrets/hf_token")
token = secret.read_text().strip() if secret.is_file() else None
snapshot_download(repo_id=repo, revision=revision, local_dir=dest, token=token or False)
'''


def render_context(profile: DeploymentProfile, options: BuildOptions) -> BuildContext:
    """The build context for `profile`: files and facts. Pure: same inputs, same bytes."""
    try:
        return _render_context(profile, options)
    except ValueError as exc:  # a quoting function refused a value (the profile's validation normally does first)
        raise TrdeployError(f"Cannot render the build context: {exc}.", hint="Fix the profile (or re-run `trdeploy tune`).") from None


def _render_context(profile: DeploymentProfile, options: BuildOptions) -> BuildContext:
    base = choose_base(profile, options)
    if options.base_image and _DIGEST.search(options.base_image) is None and ":" not in options.base_image.rsplit("/", 1)[-1]:
        raise TrdeployError(
            f"--base-image {options.base_image!r} has neither a tag nor a digest.",
            hint="Pin it: IMAGE:TAG or IMAGE@sha256:DIGEST.",
        )
    in_image = weights_in_image(options.model_source)
    if options.model_source == "download":
        repo = download_repo(profile, options)
    argv = ct.serve_argv(profile, weights_in_image=in_image)
    model_in_image = ct.model_path(profile, weights_in_image=True) if in_image else None
    labels = _labels(profile, options, base)
    digest = ct.profile_sha256(profile)
    period = start_period_s(profile)
    startup = profile.prediction.startup
    uid, gid = ct.UID, ct.GID
    env = ct.environment()
    app_files = [ct.ENTRYPOINT, ct.HEALTHCHECK, ct.PROFILE_FILE]

    d: list[str] = [
        ct.comment(f"# Rendered by trdeploy from a DeploymentProfile (sha256 {digest[:12]}, {ct.PROFILE_FILE} in the image)."),
        "# Do not edit: change the profile and run `trdeploy build` again.",
    ]
    if not options.base_image:
        d.append(ct.comment(
            f"# vLLM {profile.vllm_version}, CUDA {profile.gpu.cuda} build: needs NVIDIA driver >= {profile.gpu.min_driver} "
            f"on the nodes (profile: {profile.gpu.driver}, {profile.gpu.driver_source})."
        ))
    d += [
        f"FROM {base}",
        "",
        "# The base image runs as root; the user is switched below, after the root-only steps.",
        "USER 0",
        "",
        f"# Every compile cache (vLLM torch.compile, Inductor, Triton, FlashInfer JIT) and the hub cache under one path: a volume at {ct.CACHE_ROOT}",
        "# keeps restarts warm. USER/LOGNAME: torch calls getpass.getuser(), which fails for a UID without a passwd entry unless set.",
        "ENV " + " \\\n    ".join(f"{k}={ct.dockerfile_string(v)}" for k, v in env.items()),
        "",
        "COPY " + " ".join(["entrypoint.sh", "healthcheck.py", "trdeploy.yaml", *(["download.py"] if options.model_source == "download" else [])])
        + f" {ct.APP_DIR}/",
        "",
        "# A numbered user in group 0; group 0 may write every writable path, so any UID in group 0 works as well.",
        "# No useradd in the base (minimal images): a passwd line does the same.",
        f"RUN (useradd --uid {uid} --gid {gid} --no-create-home --home-dir {env['HOME']} --shell /usr/sbin/nologin {ct.USER_NAME} \\",
        f"     || echo '{ct.USER_NAME}:x:{uid}:{gid}:vLLM:{env['HOME']}:/usr/sbin/nologin' >> /etc/passwd) \\",
        f" && mkdir -p {' '.join(env[v] for v in ct.CACHE_DIRS)} {ct.MODELS_ROOT} \\",
        f" && chown -R {uid}:{gid} {ct.CACHE_ROOT} {ct.MODELS_ROOT} \\",
        f" && chmod -R g=u {ct.CACHE_ROOT} {ct.MODELS_ROOT} \\",
        f" && chmod 0755 {app_files[0]} && chmod 0644 {' '.join(app_files[1:])}",
        "",
        f"USER {uid}:{gid}",
        f"EXPOSE {ct.PORT}",
        "",
        "LABEL " + " \\\n      ".join(f"{k}={ct.dockerfile_string(v)}" for k, v in labels.items()),
        "",
        ct.comment(f"# Start period: the profile's start-up budget ({startup.budget_basis or 'tune'}; cold start {startup.cold_s:.0f} s)."),
        "# Failures inside it do not count; the first passing probe marks the container healthy. The probe finds the",
        "# server's port on its command line, so `docker run IMAGE --port N` is probed on N.",
        f"HEALTHCHECK --interval=15s --timeout=5s --start-period={period}s --retries=3 \\",
        f"  CMD {ct.dockerfile_json(['python3', ct.HEALTHCHECK])}",
        f"ENTRYPOINT {ct.dockerfile_json([ct.ENTRYPOINT])}",
    ]
    notes: list[str] = []
    offline = " \\\n    ".join(f"{k}={v}" for k, v in ct.OFFLINE_ENV.items())
    if options.model_source == "bake":
        d += [
            "",
            "# Weights in the last layer: a new checkpoint rebuilds and re-pulls only this layer.",
            f"ENV {offline}",
            f"COPY --chown={uid}:{gid} {ct.dockerfile_json(['model/', f'{model_in_image}/'])}",
        ]
    elif options.model_source == "download":
        revision = options.revision or "main"
        d += [
            "",
            "# Weights downloaded at build time into the last layer. The hub token is a BuildKit secret:",
            "# mounted for this RUN only, so it is in no layer and no history entry.",
            f"RUN --mount=type=secret,id=hf_token,required=false,uid={uid} \\",
            f"    python3 {ct.APP_DIR}/download.py {ct.sh_word(repo)} {ct.sh_word(revision)} {ct.sh_word(model_in_image or '')}",
            f"ENV {offline}",
        ]
    elif hub.is_hub_id(profile.engine_args.model, revision=False):
        notes.append(
            f"Weights are not in the image: vLLM downloads {profile.engine_args.model} into {ct.environment()['HF_HOME']} on first start; "
            f"mount a volume at {ct.CACHE_ROOT} and pass HF_TOKEN at run time."
        )
    else:
        notes.append(f"Weights are not in the image: mount {profile.engine_args.model} at {argv[2]} (read-only).")

    dockerignore = ["# Only what the Dockerfile copies: nothing else (a stray token file) reaches the engine.", "*",
                    "!entrypoint.sh", "!healthcheck.py", "!trdeploy.yaml"]
    files = {
        "Dockerfile": ct.check_dockerfile_lines("\n".join(d) + "\n"),
        "entrypoint.sh": ct.entrypoint_script(profile, weights_in_image=in_image, api_key_required=options.api_key),
        "healthcheck.py": ct.HEALTHCHECK_SCRIPT,
        "trdeploy.yaml": profile.to_yaml(),
    }
    if options.model_source == "download":
        files["download.py"] = _DOWNLOAD
        dockerignore.append("!download.py")
    if options.model_source == "bake":
        dockerignore.append("!model")
    files[".dockerignore"] = "\n".join(dockerignore) + "\n"
    return BuildContext(
        files=files,
        executable=["entrypoint.sh"],
        base_image=base,
        cuda=profile.gpu.cuda,
        argv=argv,
        labels=labels,
        start_period_s=period,
        model_source=options.model_source,
        model_in_image=model_in_image,
        needs_secrets=options.model_source == "download",
        notes=notes,
    )
