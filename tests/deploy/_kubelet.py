"""Run a rendered pod in the real Docker engine the way a kubelet would, without a cluster.

`run_pod(client, pod_spec, secrets=..., volumes_root=...)` runs the pod's init containers to
completion, in order, then its first container, with what the spec says and nothing else:
- image, `command` as the entrypoint and `args` as the command (both replace the image's when given), with
  Kubernetes' expansion: `$(VAR)` of a variable the container defines becomes its value, `$$` becomes `$`, any
  other `$(...)` stays as it is;
- `securityContext`: runAsUser/runAsGroup (container over pod), the pod's fsGroup and supplementalGroups as
  extra groups, readOnlyRootFilesystem, dropped and added capabilities, no-new-privileges;
- env: `value` as is, `valueFrom.secretKeyRef` from `secrets` ({(name, key): value}); a missing
  optional key is left out, a missing required one fails as the kubelet does (CreateContainerConfigError);
- volumes: each emptyDir or persistentVolumeClaim is a host folder under `volumes_root`, owned by root
  with the pod's fsGroup as its group and group-writable with setgid (what the kubelet's fsGroup does
  to a volume that supports it); `subPath` mounts a sub-folder (created as the kubelet does, root-owned
  0750, when missing); `readOnly` mounts read-only; an emptyDir with medium Memory at /dev/shm becomes
  the container's shm size. Host networking (this sandbox has no bridge).
- `ignores_fsgroup={"cache": (uid, gid, mode)}`: that volume is one whose driver does not apply fsGroup (most
  NFS-like ReadWriteMany volumes): its root keeps the owner and mode its provisioner gave.

`terminate_pod(container, spec)` stops it as the kubelet does: the preStop exec hook, then SIGTERM, then
SIGKILL once terminationGracePeriodSeconds (counted from the start of preStop) have passed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


class PodFailed(AssertionError):
    pass


def _quantity_bytes(text: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def _env(container: dict[str, Any], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        key = (ref["name"], ref["key"])
        if key in secrets:
            env[item["name"]] = secrets[key]
        elif not ref.get("optional"):
            raise PodFailed(f"CreateContainerConfigError: secret {ref['name']!r} key {ref['key']!r} not found")
    return env


def _expand(words: list[str] | None, env: dict[str, str]) -> list[str] | None:
    """Kubernetes' command/args expansion (k8s.io/kubernetes third_party/forked/golang/expansion)."""
    if words is None:
        return None
    out = []
    for word in words:
        text, i = [], 0
        while i < len(word):
            if word.startswith("$$", i):
                text.append("$")
                i += 2
            elif word.startswith("$(", i) and ")" in word[i + 2:]:
                end = word.index(")", i + 2)
                name = word[i + 2:end]
                text.append(env[name] if name in env else word[i:end + 1])
                i = end + 1
            else:
                text.append(word[i])
                i += 1
        out.append("".join(text))
    return out


def _volume_dirs(pod: dict[str, Any], root: Path, ignores_fsgroup: dict[str, tuple[int, int, int]]) -> dict[str, Path]:
    fs_group = (pod.get("securityContext") or {}).get("fsGroup")
    dirs = {}
    for vol in pod.get("volumes", []):
        if not ({"emptyDir", "persistentVolumeClaim"} & set(vol)):
            raise PodFailed(f"volume type not emulated: {vol}")
        path = root / vol["name"]
        path.mkdir(parents=True, exist_ok=True)
        if vol["name"] in ignores_fsgroup:
            uid, gid, mode = ignores_fsgroup[vol["name"]]
            os.chown(path, uid, gid)
            path.chmod(mode)
        elif fs_group is not None:
            os.chown(path, 0, fs_group)
            path.chmod(0o2775)
        dirs[vol["name"]] = path
    return dirs


def _mounts(container: dict[str, Any], pod: dict[str, Any], dirs: dict[str, Path]) -> tuple[dict[str, dict[str, str]], str | None]:
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    binds: dict[str, dict[str, str]] = {}
    shm = None
    for m in container.get("volumeMounts", []):
        vol = vols[m["name"]]
        if m["mountPath"] == "/dev/shm" and vol.get("emptyDir", {}).get("medium") == "Memory":
            shm = vol["emptyDir"].get("sizeLimit", "64Mi")
            continue
        host = dirs[m["name"]]
        if m.get("subPath"):
            host = host / m["subPath"]
            if not host.exists():
                host.mkdir(parents=True)
                host.chmod(0o750)  # the kubelet makes a missing subPath as root, 0750
        binds[str(host)] = {"bind": m["mountPath"], "mode": "ro" if m.get("readOnly") else "rw"}
    return binds, shm


def _user(container: dict[str, Any], pod: dict[str, Any]) -> str | None:
    psc, csc = pod.get("securityContext") or {}, container.get("securityContext") or {}
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup"))
    if uid is None:
        return None
    return f"{uid}:{gid}" if gid is not None else str(uid)


def start_container(client, pod: dict[str, Any], container: dict[str, Any], dirs: dict[str, Path],
                    secrets: dict[tuple[str, str], str], name: str, extra_env: dict[str, str] | None = None):
    binds, shm = _mounts(container, pod, dirs)
    sc = container.get("securityContext") or {}
    user = _user(container, pod)
    env = {**_env(container, secrets), **(extra_env or {})}
    psc = pod.get("securityContext") or {}
    groups = [str(g) for g in ([psc["fsGroup"]] if psc.get("fsGroup") is not None else []) + list(psc.get("supplementalGroups") or [])]
    return client.containers.run(
        container["image"],
        entrypoint=_expand(container.get("command"), env),
        command=_expand(container.get("args"), env),
        environment=env,
        user=user,
        group_add=groups or None,
        read_only=bool(sc.get("readOnlyRootFilesystem")),
        cap_drop=(sc.get("capabilities") or {}).get("drop"),
        cap_add=(sc.get("capabilities") or {}).get("add"),
        security_opt=["no-new-privileges"] if sc.get("allowPrivilegeEscalation") is False else None,
        volumes=binds,
        shm_size=_quantity_bytes(shm) if shm else None,
        network_mode="host",
        detach=True,
        name=name,
    )


def run_pod(client, pod: dict[str, Any], *, secrets: dict[tuple[str, str], str], volumes_root: Path, name: str,
            extra_env: dict[str, str] | None = None, init_timeout: float = 120,
            ignores_fsgroup: dict[str, tuple[int, int, int]] | None = None):
    """Init containers to completion, then the first container, started. Returns (container, volume dirs)."""
    dirs = _volume_dirs(pod, volumes_root, ignores_fsgroup or {})
    for i, init in enumerate(pod.get("initContainers", [])):
        c = start_container(client, pod, init, dirs, secrets, f"{name}-init{i}", extra_env)
        try:
            result = c.wait(timeout=init_timeout)
            if result.get("StatusCode") != 0:
                raise PodFailed(f"init container {init['name']} exited {result.get('StatusCode')}: {c.logs().decode()[-2000:]}")
        finally:
            c.remove(force=True)
    return start_container(client, pod, pod["containers"][0], dirs, secrets, name, extra_env), dirs


def wait_for(url: str, container, budget_s: float, *, status: int = 200) -> tuple[float, list[int]]:
    """Poll `url` until it answers `status`, within `budget_s`; (seconds taken, statuses seen). Fails if the
    container exits first."""
    from tests.deploy._http import http_status

    t0 = time.monotonic()
    seen: list[int] = []
    while time.monotonic() - t0 < budget_s:
        code = http_status(url)
        if not seen or seen[-1] != code:
            seen.append(code)
        if code == status:
            return time.monotonic() - t0, seen
        container.reload()
        if container.status not in ("created", "running"):
            raise PodFailed(f"container exited ({container.status}) before {url} answered {status}: {container.logs().decode()[-2000:]}")
        time.sleep(0.2)
    raise PodFailed(f"{url} did not answer {status} within {budget_s} s (seen {seen}): {container.logs().decode()[-2000:]}")


def terminate_pod(container, pod: dict[str, Any]) -> dict[str, Any]:
    """Stop the pod's first container as the kubelet does; returns what happened, with timings."""
    spec = pod["containers"][0]
    grace = float(pod.get("terminationGracePeriodSeconds", 30))
    t0 = time.monotonic()
    hook = ((spec.get("lifecycle") or {}).get("preStop") or {}).get("exec")
    if hook:
        result = container.exec_run(hook["command"], user=_user(spec, pod) or "")
        if result.exit_code != 0:
            raise PodFailed(f"preStop exited {result.exit_code}: {result.output.decode()[-500:]}")
    prestop = time.monotonic() - t0
    container.kill(signal="SIGTERM")
    deadline = t0 + grace
    while True:  # the kubelet's clock, not a client timeout: poll until the container exits or the grace period ends
        container.reload()
        if container.status not in ("created", "running", "restarting"):
            killed = False
            break
        if time.monotonic() >= deadline:
            container.kill(signal="SIGKILL")
            killed = True
            break
        time.sleep(0.2)
    status = container.wait(timeout=60)["StatusCode"]
    return {"prestop_s": prestop, "stopped_after_s": time.monotonic() - t0, "exit_code": status, "killed": killed}
