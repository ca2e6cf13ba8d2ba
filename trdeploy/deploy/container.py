"""The serving container, defined once. `build` bakes it into an image (trdeploy.deploy.image); `render-k8s`
runs that image with the same user, entrypoint, port and health check (trdeploy.deploy.k8s); neither
defines any of these itself, so the image and the pod cannot drift apart.

The contract:
- user: UID `UID` in group `GID` (0). Every writable path in the image is group-0 writable, so an
  arbitrary UID in group 0 (OpenShift, `runAsUser`) works as well.
- paths: every cache (vLLM's torch.compile cache, Inductor, Triton, FlashInfer JIT, the hub cache, HOME)
  under `CACHE_ROOT`, one volume that keeps restarts warm; weights that are not a hub download live at
  `MODELS_ROOT/<name>` (`model_path`), whether baked into the image or mounted.
- process: `ENTRYPOINT` runs `serve_argv` (exactly the profile's `vllm serve` arguments, the served model
  name, the port); arguments after the image name (`docker run IMAGE ...`, a pod's `args`) are appended,
  and vLLM keeps the last value of a repeated flag, so they override.
- API key: read from `VLLM_API_KEY` (or the file `VLLM_API_KEY_FILE` names) at run time, never baked.
- health: GET `HEALTH_PATH` on the port the server really listens on (the healthcheck reads the server's
  own command line, so `docker run IMAGE --port 9000` stays healthy).
- identity: the image carries the profile and its SHA-256; a pod that sets `EXPECT_PROFILE_ENV` refuses
  to start on an image built from another profile.

Every profile value that reaches a generated file passes through one of the quoting functions here.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import PurePosixPath

from trdeploy import hub
from trdeploy.deployment import DeploymentProfile

UID = 10001  # above 10000: clear of host users (checkov CKV_K8S_40)
GID = 0
USER_NAME = "vllm"
PORT = 8000  # vLLM's own default
CACHE_ROOT = "/cache"
MODELS_ROOT = "/models"
APP_DIR = "/opt/trdeploy"
ENTRYPOINT = f"{APP_DIR}/entrypoint.sh"
HEALTHCHECK = f"{APP_DIR}/healthcheck.py"
PROFILE_FILE = f"{APP_DIR}/trdeploy.yaml"
HEALTH_PATH = "/health"
API_KEY_ENV = "VLLM_API_KEY"
API_KEY_FILE_ENV = "VLLM_API_KEY_FILE"
EXPECT_PROFILE_ENV = "TRDEPLOY_EXPECT_PROFILE_SHA256"
EXIT_WRONG_PROFILE = 64  # the image was built from another profile than the pod expects
EXIT_NO_API_KEY = 65  # no API key and the image was not built to serve without one
# BuildKit refuses Dockerfile lines over 64 KiB; nothing we render comes near, but a rendered line that would
# is refused in one line rather than by the engine mid-build.
MAX_DOCKERFILE_LINE = 60_000

# Cache variable -> folder under CACHE_ROOT. USER/LOGNAME: torch calls getpass.getuser(), which fails for
# a UID without a passwd entry (arbitrary UIDs) unless they are set.
CACHE_DIRS: dict[str, str] = {
    "HOME": "home",
    "XDG_CACHE_HOME": "xdg",
    "VLLM_CACHE_ROOT": "vllm",
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",
    "TRITON_CACHE_DIR": "triton",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "HF_HOME": "huggingface",
}
OFFLINE_ENV: dict[str, str] = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def environment() -> dict[str, str]:
    """The image's environment (Dockerfile ENV); a pod inherits it from the image unchanged."""
    env = {"TRDEPLOY_CACHE": CACHE_ROOT}
    env.update({var: f"{CACHE_ROOT}/{sub}" for var, sub in CACHE_DIRS.items()})
    env.update({"USER": USER_NAME, "LOGNAME": USER_NAME, "TRDEPLOY_PORT": str(PORT), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
    return env


def profile_sha256(profile: DeploymentProfile) -> str:
    return hashlib.sha256(profile.to_yaml().encode("utf-8")).hexdigest()


def model_name(engine_model: str) -> str:
    """The folder name the weights get under MODELS_ROOT: a local folder's own name, a hub id's repository name."""
    if hub.is_hub_id(engine_model, revision=False):
        return engine_model.split("/")[-1]
    return PurePosixPath(engine_model.rstrip("/")).name


def model_path(profile: DeploymentProfile, *, weights_in_image: bool) -> str:
    """`vllm serve`'s model argument inside the container (the one model-path rule).

    Weights in the image (`build --model-source bake|download`) and a local checkpoint folder mounted as a
    volume both live at MODELS_ROOT/<name>; a hub id without weights in the image stays a hub id, which
    vLLM downloads into HF_HOME on the cache volume at first start."""
    model = profile.engine_args.model
    if not weights_in_image and hub.is_hub_id(model, revision=False):
        return model
    return f"{MODELS_ROOT}/{model_name(model)}"


def serve_argv(profile: DeploymentProfile, *, weights_in_image: bool) -> list[str]:
    """What the container runs with no extra arguments: the profile's serve command, model placed, port set."""
    engine = profile.engine_args.model_copy(update={"model": model_path(profile, weights_in_image=weights_in_image)})
    return [*engine.serve_command(), "--port", str(PORT)]


# --- quoting: every profile or option value that reaches a generated file goes through one of these --------


def comment(text: str) -> str:
    """Text for a `#` comment line of a generated file: one line, whatever the value held."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _printable(value: str, what: str) -> str:
    if any(not ch.isprintable() for ch in value):
        # The profile's validation refuses these first; this guards every other caller.
        raise ValueError(f"{what} must not contain control characters or line breaks: {value[:60]!r}")
    return value


def sh_word(value: str) -> str:
    """One POSIX shell word (single-quoted: nothing inside is expanded, a newline stays inside the word)."""
    return shlex.quote(value)


def dockerfile_string(value: str) -> str:
    """A Dockerfile LABEL/ENV value: double-quoted, with the backslash, the quote and `$` (the Dockerfile's
    own variable substitution in LABEL, ENV, COPY, FROM) escaped. A line break would end the instruction,
    so there can be none."""
    _printable(value, "A Dockerfile value")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def dockerfile_json(words: list[str]) -> str:
    """The JSON (exec) form of an instruction's arguments: `["a", "b"]`. JSON has no escape for the
    Dockerfile's `$` substitution, so a word with `$` (or a line break) is refused, never passed through."""
    for word in words:
        _printable(word, "A Dockerfile argument")
        if "$" in word:
            raise ValueError(f"A Dockerfile argument must not contain '$': {word[:60]!r}")
    return json.dumps(words)


def k8s_text(value: str) -> str:
    """A value for a container's command, args or env: Kubernetes expands `$(VAR)` there (a served name
    `$(VLLM_API_KEY)` would put the key into a metric label); `$$(` is its escape for a literal `$(`."""
    return value.replace("$(", "$$(")


def promql_string(value: str) -> str:
    """A PromQL string literal (a label matcher's value): double-quoted, backslash, quote and line breaks
    escaped, so no value can close the matcher and add an expression of its own."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return '"' + escaped + '"'


def check_dockerfile_lines(text: str) -> str:
    for number, line in enumerate(text.splitlines(), 1):
        if len(line.encode("utf-8")) > MAX_DOCKERFILE_LINE:
            raise ValueError(f"Dockerfile line {number} would be {len(line):,} bytes, over BuildKit's 64 KiB")
    return text


def entrypoint_script(profile: DeploymentProfile, *, weights_in_image: bool, api_key_required: bool = True) -> str:
    """The image's ENTRYPOINT: checks, then `exec vllm serve ...` with the docker-run/pod arguments appended.

    Without an API key (VLLM_API_KEY empty or unset, the file VLLM_API_KEY_FILE names empty, no `--api-key`
    among the arguments) it refuses to start, unless the image was built to serve without one
    (`build --no-api-key`): an open endpoint is then a decision, never an accident."""
    argv = serve_argv(profile, weights_in_image=weights_in_image)
    digest = profile_sha256(profile)
    lines = [
        "#!/bin/sh",
        f"# Rendered by trdeploy from a DeploymentProfile (sha256 {digest[:12]}, {PROFILE_FILE}); do not edit.",
        "# Runs `vllm serve` with exactly the profile's engine arguments. Arguments given after the image name",
        "# (docker run, a pod's args) are appended, and vLLM takes the last value of a repeated flag, so they override.",
        f"# The API key is read from {API_KEY_ENV} (or the file {API_KEY_FILE_ENV} names) at run time; it is never",
        "# baked into the image and never put on the command line (where `ps` would show it).",
        "set -eu",
        f"PROFILE_SHA256={sh_word(digest)}",
        f'if [ -n "${{{EXPECT_PROFILE_ENV}:-}}" ] && [ "${{{EXPECT_PROFILE_ENV}}}" != "$PROFILE_SHA256" ]; then',
        f'  echo "trdeploy: this image was built from profile sha256 $PROFILE_SHA256, but {EXPECT_PROFILE_ENV} asks for'
        ' ${' + EXPECT_PROFILE_ENV + '}: build the image from the same profile the manifests were rendered from." >&2',
        "  exit 64",
        "fi",
        "# Group-writable files too: another UID in the group (a later pod, an arbitrary UID) can write what this one made.",
        "umask 0002",
        f"# A fresh volume at {CACHE_ROOT} hides the image's cache folders: make them (as this user) before vLLM starts.",
        "mkdir -p " + " ".join(f'"${{{var}:-{CACHE_ROOT}/{sub}}}"' for var, sub in CACHE_DIRS.items()) + " 2>/dev/null || true",
        f'if [ -z "${{{API_KEY_ENV}:-}}" ] && [ -n "${{{API_KEY_FILE_ENV}:-}}" ]; then',
        f'  if [ ! -r "${{{API_KEY_FILE_ENV}}}" ]; then echo "trdeploy: {API_KEY_FILE_ENV} names ${{{API_KEY_FILE_ENV}}}, which cannot be read." >&2; exit {EXIT_NO_API_KEY}; fi',
        f'  {API_KEY_ENV}="$(cat "${{{API_KEY_FILE_ENV}}}")"',
        "fi",
        "# A key of nothing but white space (an empty key file) is no key.",
        f'if [ -z "$(printf %s "${{{API_KEY_ENV}:-}}" | tr -d "[:space:]")" ]; then',
        f"  unset {API_KEY_ENV}",
        "else",
        f"  export {API_KEY_ENV}",
        "fi",
        "HAS_KEY_ARG=0",
        'for arg in "$@"; do case "$arg" in --api-key|--api-key=?*) HAS_KEY_ARG=1 ;; esac; done',
        f'if [ -z "${{{API_KEY_ENV}:-}}" ] && [ "$HAS_KEY_ARG" = 0 ]; then',
    ]
    if api_key_required:
        lines += [
            f'  echo "trdeploy: no API key: set {API_KEY_ENV} (or {API_KEY_FILE_ENV}); this image was built to refuse serving without one'
            ' (trdeploy build --no-api-key builds one that serves openly)." >&2',
            f"  exit {EXIT_NO_API_KEY}",
        ]
    else:
        lines.append('  echo "trdeploy: no API key; the API answers without one (built with --no-api-key)." >&2')
    lines.append("fi")
    # One flag and its value per line: `exec vllm serve MODEL`, then `--flag value`.
    groups: list[list[str]] = [argv[:3]]
    for word in argv[3:]:
        if len(groups) == 1 or word.startswith("--") or len(groups[-1]) == 2:
            groups.append([word])
        else:
            groups[-1].append(word)
    body = " \\\n  ".join(" ".join(sh_word(a) for a in g) for g in groups)
    lines.append(f'exec {body} \\\n  "$@"')
    return "\n".join(lines) + "\n"


# The HEALTHCHECK probe. It reads the port from the server's own command line (PID 1 after the entrypoint's
# exec, else any `vllm serve` process), the last `--port` winning as in vLLM's argparse, so arguments
# appended at `docker run` that move the server move the probe too.
HEALTHCHECK_SCRIPT = f'''"""HEALTHCHECK probe: GET {HEALTH_PATH} on the port the server listens on (python3 is in every vLLM image)."""

import os
import sys
import urllib.request


def serve_args():
    pids = ["1"] + sorted((p for p in os.listdir("/proc") if p.isdigit() and p != "1"), key=int)
    for pid in pids:
        try:
            with open(f"/proc/{{pid}}/cmdline", "rb") as handle:
                args = [a.decode("utf-8", "replace") for a in handle.read().split(b"\\0") if a]
        except OSError:
            continue
        if "serve" in args:
            return args
    return []


def last_value(args, flag):
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


args = serve_args()
port = last_value(args, "--port") or os.environ.get("TRDEPLOY_PORT") or "{PORT}"
host = last_value(args, "--host") or "127.0.0.1"
if host in ("", "0.0.0.0", "::", "[::]"):
    host = "127.0.0.1"
if ":" in host and not host.startswith("["):
    host = f"[{{host}}]"
try:
    with urllib.request.urlopen(f"http://{{host}}:{{int(port)}}{HEALTH_PATH}", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception:  # refused while starting, timeout, 5xx, a bad port: all mean "not healthy yet"
    sys.exit(1)
'''
