"""The serving image for a DeploymentProfile, rendered as a Docker build context (pure: no I/O).

`render_context(profile, options)` returns the files of the context (Dockerfile, .dockerignore,
entrypoint, health check, the profile itself) plus the facts a caller reports (base image, argv,
labels). The docker side lives in `trdeploy.deploy.docker_build`. This module reads the profile only:
it never re-derives what `tune` decided (no import of trdeploy.sizing).

Why the image looks the way it does (field problems with the stock vllm/vllm-openai image):
- it runs as root: we add a numbered user in group 0 and make every writable path group-0 writable,
  so an arbitrary UID (OpenShift, `runAsUser`) works too;
- it has no HEALTHCHECK: we probe /health with python3 (always in the base), with a start period
  taken from the profile's predicted start-up;
- compile caches vanish on restart (2-5 minute starts): vLLM's torch.compile cache, FlashInfer's JIT,
  Triton and Inductor all live under one path, /cache, so one volume keeps restarts warm;
- tokens leak into layers through ARG/ENV: the API key is read from the environment at run time and
  the hub token for `download` is a BuildKit secret mount, never an ARG, ENV or file in a layer.
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
from pathlib import PurePosixPath
from typing import ClassVar, Literal

from pydantic import BaseModel, field_validator

from trdeploy import hub
from trdeploy.args import Args, arg
from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError

BASE_REPOSITORY = "vllm/vllm-openai"
CACHE_ROOT = "/cache"
MODELS_ROOT = "/models"
APP_DIR = "/opt/trdeploy"
DEFAULT_UID = 2000
DEFAULT_PORT = 8000

# HEALTHCHECK start period when the profile carries no start-up prediction (prediction.startup is
# None): vLLM's stock image is reported to take 2-5 minutes on a cold compile cache; 10 minutes
# covers that twice over. A long start period costs nothing: the first passing probe marks the
# container healthy at once; only failures inside the period are forgiven.
DEFAULT_START_PERIOD_S = 600
# Margin over the predicted cold start (storage slower than `read_gb_per_s`, a busy node).
START_PERIOD_MARGIN = 1.5
MIN_START_PERIOD_S = 60

# CUDA builds of vllm/vllm-openai and the NVIDIA Linux driver each needs. Tag scheme (seen on
# Docker Hub through v0.21/v0.22 and stated in vLLM's issue tracker): from v0.20.0 the unsuffixed tag
# `vX.Y.Z` is the CUDA 13.0 build and `vX.Y.Z-cu129` the CUDA 12.9 build. Minimum drivers are the
# toolkits' own (CUDA 13.0 GA: 580.65.06, CUDA 12.9 GA: 575.51.03, from NVIDIA's CUDA release
# notes), not the looser minor-version-compatibility floor: Triton and FlashInfer JIT-compile PTX,
# which fails on an older driver even where the runtime itself would load.
CUDA_BUILDS: dict[str, tuple[str, str]] = {
    # cuda: (tag suffix, minimum driver)
    "13.0": ("", "580.65.06"),
    "12.9": ("-cu129", "575.51.03"),
}

# The driver assumed for a GPU tier when neither --driver nor --cuda is given. An assumption, not a
# measurement: data-centre tiers on current managed node images run the R580 branch (NVIDIA's
# long-term branch of 2025-26); consumer and older cloud tiers often stay on R575. Pass --driver
# (what `nvidia-smi` prints on your nodes) to replace it.
TIER_DRIVER: dict[str, str] = {
    "h200": "580.65.06",
    "h100": "580.65.06",
    "a100-80gb": "580.65.06",
    "a100-40gb": "580.65.06",
    "l40s": "580.65.06",
    "l4": "580.65.06",
    "a10g": "575.51.03",
    "rtx4090": "575.51.03",
}

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


class BuildOptions(Args):
    """What `trdeploy build` may choose beyond the profile (the profile decides everything else)."""

    command: ClassVar[str] = "build"

    model_source: Literal["mount", "bake", "download"] = arg(
        "mount",
        help="mount: no weights in the image (HF_HOME on a volume); bake: copy --model-dir into the last layer; "
        "download: fetch from the hub at build time (token as a BuildKit secret).",
    )
    # bake: the local checkpoint folder's name (its files are placed in the context's model/ by the caller).
    model_dir_name: str | None = arg(None, help="bake: the checkpoint folder's name in the image.")
    model_repo: str | None = arg(None, help="download: the hub repository.", default_note="the profile's model, if a hub id")
    revision: str | None = arg(None, help="download: the hub revision (branch, tag or commit); recorded in the labels.", default_note="main")
    base_image: str | None = arg(None, help="Base image instead of vllm/vllm-openai:vVERSION[-cuXYZ]; IMAGE:TAG or IMAGE@sha256:DIGEST.")
    cuda: Literal["13.0", "12.9"] | None = arg(None, help="CUDA build of the base image.", default_note="the newest the tier's driver runs")
    driver: str | None = arg(None, help="NVIDIA driver on the nodes (nvidia-smi), to pick the CUDA build.", default_note="assumed per GPU tier")
    served_model_name: str | None = arg(None, help="Name clients send.", default_note="the profile's, else its model id")
    port: int = arg(DEFAULT_PORT, ge=1, le=65535, help="Port vLLM listens on in the container.")
    uid: int = arg(DEFAULT_UID, ge=1, help="Numeric user the image runs as (group 0, so any UID works).")

    @field_validator("driver")
    @classmethod
    def _driver(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+(\.\d+){0,2}", value):
            raise ValueError("driver must look like 580.65.06 (what nvidia-smi prints)")
        return value


class BuildContext(BaseModel):
    """A rendered build context and the facts about it."""

    files: dict[str, str]  # relative path -> text
    executable: list[str]  # files that need the execute bit
    base_image: str
    cuda: str | None  # None when --base-image was given without --cuda
    driver_assumed: str | None
    argv: list[str]  # exactly what the container runs with no `docker run` arguments
    labels: dict[str, str]
    start_period_s: int
    model_source: str
    model_in_image: str | None  # absolute path of the weights inside the image (bake/download)
    needs_secrets: bool  # download: BuildKit secret mount
    notes: list[str]


def profile_sha256(profile: DeploymentProfile) -> str:
    return hashlib.sha256(profile.to_yaml().encode("utf-8")).hexdigest()


def _driver_tuple(driver: str) -> tuple[int, ...]:
    return tuple(int(p) for p in driver.split("."))


def choose_base(profile: DeploymentProfile, options: BuildOptions) -> tuple[str, str | None, str | None]:
    """(base image, CUDA build, driver assumed) for the profile's vLLM version and the tier's driver."""
    if options.base_image:
        return options.base_image, options.cuda, options.driver
    version = profile.vllm_version.lstrip("v")
    if options.cuda:
        cuda, driver = options.cuda, options.driver
    else:
        driver = options.driver or TIER_DRIVER.get(profile.gpu.tier)
        if driver is None:
            raise TrdeployError(
                f"No driver is known for GPU tier {profile.gpu.tier!r}.",
                hint="Pass --driver (nvidia-smi's driver version on the nodes) or --cuda 12.9|13.0.",
            )
        fits = [c for c, (_, need) in CUDA_BUILDS.items() if _driver_tuple(driver) >= _driver_tuple(need)]
        if not fits:
            oldest = min((v[1] for v in CUDA_BUILDS.values()), key=_driver_tuple)
            raise TrdeployError(
                f"Driver {driver} is older than every CUDA build of vllm/vllm-openai v{version} "
                f"(the oldest needs >= {oldest}).",
                hint="Upgrade the node driver, or pass --base-image with an image built for your CUDA.",
            )
        cuda = max(fits, key=lambda c: tuple(int(p) for p in c.split(".")))
    suffix = CUDA_BUILDS[cuda][0]
    return f"{BASE_REPOSITORY}:v{version}{suffix}", cuda, driver


def start_period_s(profile: DeploymentProfile) -> int:
    """HEALTHCHECK start period: the predicted cold start (an empty cache volume) with a margin."""
    startup = profile.prediction.startup
    if startup is None:
        return DEFAULT_START_PERIOD_S
    seconds = max(MIN_START_PERIOD_S, startup.cold_s * START_PERIOD_MARGIN)
    return int(math.ceil(seconds / 10.0) * 10)


def served_name(profile: DeploymentProfile, options: BuildOptions) -> str:
    # Stable across placements: clients keep sending the same name whether weights are mounted,
    # baked or downloaded (vLLM's own default would be the path, which differs per placement).
    return options.served_model_name or profile.engine_args.served_model_name or profile.model.id


def _model_argument(profile: DeploymentProfile, options: BuildOptions) -> tuple[str, str | None]:
    """(the model argument of `vllm serve` inside the container, where weights live in the image)."""
    model = profile.engine_args.model
    if options.model_source == "bake":
        if not options.model_dir_name:
            raise TrdeployError("--model-source bake needs a local model folder.", hint="Pass --model-dir PATH.")
        path = f"{MODELS_ROOT}/{options.model_dir_name}"
        return path, path
    if options.model_source == "download":
        path = f"{MODELS_ROOT}/{download_repo(profile, options).split('/')[-1]}"
        return path, path
    if hub.is_hub_id(model, revision=False):
        return model, None  # vLLM downloads into HF_HOME on the cache volume at first start
    return f"{MODELS_ROOT}/{PurePosixPath(model.rstrip('/')).name}", None  # mount the folder there


def download_repo(profile: DeploymentProfile, options: BuildOptions) -> str:
    repo = options.model_repo or profile.engine_args.model
    if not hub.is_hub_id(repo, revision=False):
        raise TrdeployError(
            f"The profile's model {profile.engine_args.model!r} is a local folder, not a hub repository.",
            hint="Pass --model-repo ORG/NAME for --model-source download, or use --model-source bake --model-dir PATH.",
        )
    return repo


def serve_argv(profile: DeploymentProfile, options: BuildOptions) -> list[str]:
    """`vllm serve` exactly as the profile says, with the model placed, the served name and the port."""
    model, _ = _model_argument(profile, options)
    engine = profile.engine_args.model_copy(update={"model": model, "served_model_name": served_name(profile, options)})
    return [*engine.serve_command(), "--port", str(options.port)]


def _labels(profile: DeploymentProfile, options: BuildOptions, base: str, cuda: str | None) -> dict[str, str]:
    digest = profile_sha256(profile)
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
            "io.trdeploy.cuda": cuda or "unknown",
            "io.trdeploy.profile.name": profile.name,
            "io.trdeploy.profile.sha256": digest,
            "io.trdeploy.served-model-name": served_name(profile, options),
            "io.trdeploy.port": str(options.port),
            "io.trdeploy.cache-path": CACHE_ROOT,
        }
    )
    return labels


def _q(value: str) -> str:
    """A Dockerfile LABEL/ENV value in double quotes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _entrypoint(argv: list[str], profile_name: str, digest: str) -> str:
    lines = [
        "#!/bin/sh",
        f"# Rendered by trdeploy from DeploymentProfile {profile_name} (sha256 {digest[:12]}); do not edit.",
        "# Runs `vllm serve` with exactly the profile's engine arguments. Arguments given to `docker run`",
        "# are appended, and vLLM takes the last value of a repeated flag, so they override.",
        "# The API key is read from VLLM_API_KEY (or the file VLLM_API_KEY_FILE names) at run time; it is",
        "# never baked into the image and never put on the command line (where `ps` would show it).",
        "set -eu",
        'if [ -z "${VLLM_API_KEY:-}" ] && [ -n "${VLLM_API_KEY_FILE:-}" ]; then',
        '  VLLM_API_KEY="$(cat "$VLLM_API_KEY_FILE")"',
        "  export VLLM_API_KEY",
        "fi",
        'if [ -z "${VLLM_API_KEY:-}" ]; then',
        '  echo "trdeploy: VLLM_API_KEY is not set; the API answers without a key." >&2',
        "fi",
    ]
    # One flag and its value per line: `exec vllm serve MODEL`, then `--flag value`.
    groups: list[list[str]] = [argv[:3]]
    for word in argv[3:]:
        if len(groups) == 1 or word.startswith("--") or len(groups[-1]) == 2:
            groups.append([word])
        else:
            groups[-1].append(word)
    body = " \\\n  ".join(" ".join(shlex.quote(a) for a in g) for g in groups)
    lines.append(f'exec {body} \\\n  "$@"')
    return "\n".join(lines) + "\n"


_HEALTHCHECK = '''"""HEALTHCHECK probe: GET /health on the served port (python3 is in every vLLM image; curl may not be)."""

import os
import sys
import urllib.request

port = os.environ.get("TRDEPLOY_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception:  # refused while starting, timeout, 5xx: all mean "not healthy yet"
    sys.exit(1)
'''

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
    base, cuda, driver = choose_base(profile, options)
    if options.base_image and _DIGEST.search(options.base_image) is None and ":" not in options.base_image.rsplit("/", 1)[-1]:
        raise TrdeployError(
            f"--base-image {options.base_image!r} has neither a tag nor a digest.",
            hint="Pin it: IMAGE:TAG or IMAGE@sha256:DIGEST.",
        )
    argv = serve_argv(profile, options)
    _, model_in_image = _model_argument(profile, options)
    labels = _labels(profile, options, base, cuda)
    digest = profile_sha256(profile)
    period = start_period_s(profile)
    uid = options.uid
    cache_dirs = ["home", "xdg", "vllm", "flashinfer", "triton", "inductor", "huggingface"]
    startup = profile.prediction.startup
    period_why = (
        f"{START_PERIOD_MARGIN}x the predicted cold start ({startup.cold_s:.0f} s)"
        if startup is not None
        else "no start-up prediction in the profile: the conservative default"
    )

    d: list[str] = [
        f"# Rendered by trdeploy from DeploymentProfile {profile.name} (sha256 {digest[:12]}).",
        "# Do not edit: change the profile and run `trdeploy build` again.",
    ]
    if cuda:
        need = CUDA_BUILDS[cuda][1]
        d.append(f"# vLLM {profile.vllm_version}, CUDA {cuda} build: needs NVIDIA driver >= {need} on the node"
                 + (f" (assumed for {profile.gpu.tier}: {driver})." if driver else "."))
    d += [
        f"FROM {base}",
        "",
        "# The base image runs as root; the user is switched below, after the root-only steps.",
        "USER 0",
        "",
        "# Every compile cache (vLLM torch.compile, Inductor, Triton, FlashInfer JIT) and the hub cache under",
        f"# one path: a volume at {CACHE_ROOT} keeps restarts warm. USER/LOGNAME: torch calls getpass.getuser(),",
        "# which fails for a UID without a passwd entry (arbitrary UIDs) unless these are set.",
        f"ENV TRDEPLOY_CACHE={CACHE_ROOT} \\",
        f"    HOME={CACHE_ROOT}/home \\",
        f"    XDG_CACHE_HOME={CACHE_ROOT}/xdg \\",
        f"    VLLM_CACHE_ROOT={CACHE_ROOT}/vllm \\",
        f"    FLASHINFER_WORKSPACE_BASE={CACHE_ROOT}/flashinfer \\",
        f"    TRITON_CACHE_DIR={CACHE_ROOT}/triton \\",
        f"    TORCHINDUCTOR_CACHE_DIR={CACHE_ROOT}/inductor \\",
        f"    HF_HOME={CACHE_ROOT}/huggingface \\",
        "    USER=vllm \\",
        "    LOGNAME=vllm \\",
        f"    TRDEPLOY_PORT={options.port} \\",
        "    VLLM_NO_USAGE_STATS=1 \\",
        "    DO_NOT_TRACK=1",
        "",
        f"COPY entrypoint.sh healthcheck.py trdeploy.yaml {'download.py ' if options.model_source == 'download' else ''}{APP_DIR}/",
        "",
        "# A numbered user in group 0; group 0 may write every writable path, so any UID works as well.",
        "# No useradd in the base (minimal images): a passwd line does the same.",
        f"RUN (useradd --uid {uid} --gid 0 --no-create-home --home-dir {CACHE_ROOT}/home --shell /usr/sbin/nologin vllm \\",
        f"     || echo 'vllm:x:{uid}:0:vLLM:{CACHE_ROOT}/home:/usr/sbin/nologin' >> /etc/passwd) \\",
        f" && mkdir -p {' '.join(f'{CACHE_ROOT}/{c}' for c in cache_dirs)} {MODELS_ROOT} \\",
        f" && chown -R {uid}:0 {CACHE_ROOT} {MODELS_ROOT} \\",
        f" && chmod -R g=u {CACHE_ROOT} {MODELS_ROOT} \\",
        f" && chmod 0755 {APP_DIR}/entrypoint.sh",
        "",
        f"USER {uid}:0",
        f"EXPOSE {options.port}",
        "",
    ]
    d.append("LABEL " + " \\\n      ".join(f"{k}={_q(v)}" for k, v in labels.items()))
    d += [
        "",
        f"# Start period: {period_why}.",
        "# Failures inside it do not count; the first passing probe marks the container healthy.",
        f"HEALTHCHECK --interval=15s --timeout=5s --start-period={period}s --retries=3 \\",
        f'  CMD ["python3", "{APP_DIR}/healthcheck.py"]',
        f'ENTRYPOINT ["{APP_DIR}/entrypoint.sh"]',
    ]
    notes: list[str] = []
    if options.model_source == "bake":
        d += [
            "",
            "# Weights in the last layer: a new checkpoint rebuilds and re-pulls only this layer.",
            "ENV HF_HUB_OFFLINE=1 \\",
            "    TRANSFORMERS_OFFLINE=1",
            f"COPY --chown={uid}:0 model/ {model_in_image}/",
        ]
    elif options.model_source == "download":
        repo = download_repo(profile, options)
        revision = options.revision or "main"
        d += [
            "",
            "# Weights downloaded at build time into the last layer. The hub token is a BuildKit secret:",
            "# mounted for this RUN only, so it is in no layer and no history entry.",
            f"RUN --mount=type=secret,id=hf_token,required=false,uid={uid} \\",
            f"    python3 {APP_DIR}/download.py {shlex.quote(repo)} {shlex.quote(revision)} {model_in_image}",
            "ENV HF_HUB_OFFLINE=1 \\",
            "    TRANSFORMERS_OFFLINE=1",
        ]
    else:
        if hub.is_hub_id(profile.engine_args.model, revision=False):
            notes.append(
                f"Weights are not in the image: vLLM downloads {profile.engine_args.model} into "
                f"{CACHE_ROOT}/huggingface on first start; mount a volume at {CACHE_ROOT} and pass HF_TOKEN at run time."
            )
        else:
            notes.append(f"Weights are not in the image: mount {profile.engine_args.model} at {argv[2]} (read-only).")

    dockerignore = ["# Only what the Dockerfile copies: nothing else (a stray token file) reaches the engine.", "*",
                    "!entrypoint.sh", "!healthcheck.py", "!trdeploy.yaml"]
    files = {
        "Dockerfile": "\n".join(d) + "\n",
        "entrypoint.sh": _entrypoint(argv, profile.name, digest),
        "healthcheck.py": _HEALTHCHECK,
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
        cuda=cuda,
        driver_assumed=driver,
        argv=argv,
        labels=labels,
        start_period_s=period,
        model_source=options.model_source,
        model_in_image=model_in_image,
        needs_secrets=options.model_source == "download",
        notes=notes,
    )
