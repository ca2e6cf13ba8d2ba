"""`render-k8s --validate`: the rendered folder checked by real tools, no API server needed.

- kubernetes-validate, strict (unknown fields are errors), for every Kubernetes minor in K8S_VERSIONS.
  Custom resources (KEDA, prometheus-operator, LeaderWorkerSet) are skipped with the reason printed:
  their CRD schemas are not vendored here.
- checkov (`--skip-download`, kubernetes framework): no failed check outside CHECKOV_SKIPS, each
  of which says why it does not apply to a GPU inference server.
- `kubectl kustomize DIR` renders the folder to the same objects.
- every PromQL expression parses with promql-parser (the Rust promql-parser crate's Python binding).
- a Helm chart (`--format helm`): `helm lint --strict` passes, and `helm template NAME CHART --namespace NS`
  with default values renders exactly the objects of the kustomize folder, which the checks above validate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trdeploy.errors import TrdeployError

K8S_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0")

# Checks that fail by design, with the reason. Anything else failing is an error.
CHECKOV_SKIPS: dict[str, str] = {
    "CKV_K8S_43": "Image by digest: the tag is pinned to the vLLM release (or `build`'s tag); pass --image NAME@sha256:... to pin a digest.",
    "CKV_K8S_35": (
        "Secrets as files: vLLM reads the API key only from VLLM_API_KEY (or a literal flag) and huggingface_hub "
        "the token from HF_TOKEN; they come from Secrets by reference, never literal."
    ),
}


@dataclass
class ValidationReport:
    kubernetes: dict[str, int] = field(default_factory=dict)  # version -> objects validated
    skipped: list[str] = field(default_factory=list)  # "Kind name: reason"
    checkov: dict[str, Any] = field(default_factory=dict)
    kustomize_objects: int | None = None
    promql_parsed: int = 0
    helm: dict[str, Any] | None = None  # a chart: helm's version, lint result, objects `helm template` rendered

    def as_json(self) -> dict[str, Any]:
        return {
            "kubernetes_versions": self.kubernetes,
            "skipped": self.skipped,
            "checkov": self.checkov,
            "kustomize_objects": self.kustomize_objects,
            "promql_parsed": self.promql_parsed,
            "helm": self.helm,
        }


def _load_folder(folder: Path) -> list[dict[str, Any]]:
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    objs: list[dict[str, Any]] = []
    for name in kust["resources"]:
        objs.extend(o for o in yaml.safe_load_all((folder / name).read_text(encoding="utf-8")) if o)
    return objs


def pod_templates_as_deployments(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A LeaderWorkerSet's leader and worker pod templates wrapped as Deployments, so the schema check and
    checkov see inside the custom resource (they know PodTemplateSpec, not LeaderWorkerSet)."""
    out: list[dict[str, Any]] = []
    for obj in objects:
        if obj.get("kind") != "LeaderWorkerSet":
            continue
        lwt = obj["spec"]["leaderWorkerTemplate"]
        for role in ("leaderTemplate", "workerTemplate"):
            template = lwt.get(role)
            if template is None:
                continue
            meta = obj["metadata"]
            out.append({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                # The LeaderWorkerSet's annotations come along: checkov's skip annotations hold for its pods too.
                "metadata": {"name": f"{meta['name']}-{role.removesuffix('Template')}", "namespace": meta.get("namespace"),
                             **pod_template_metadata(obj)},
                "spec": {"selector": {"matchLabels": template["metadata"]["labels"]}, "template": template},
            })
    return out


def validate_kubernetes(objects: list[dict[str, Any]], report: ValidationReport) -> None:
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError
    except ImportError as exc:
        raise TrdeployError("kubernetes-validate is not installed.", hint="pip install 'trdeploy[k8s]'.") from exc
    skipped: set[str] = set()
    objects = [*objects, *pod_templates_as_deployments(objects)]
    for version in K8S_VERSIONS:
        count = 0
        for obj in objects:
            what = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                count += 1
            except SchemaNotFoundError:
                how = "its pod templates are checked as Deployments" if obj.get("kind") == "LeaderWorkerSet" else "checked by kubectl kustomize only"
                skipped.add(f"{what} ({obj.get('apiVersion')}): custom resource, its CRD schema is not vendored; {how}")
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(x) for x in exc.path) or "(top)"
                raise TrdeployError(f"Kubernetes {version} rejects {what}: {where}: {exc.message.splitlines()[0]}.", hint="This is a render-k8s bug; report it with the profile.") from exc
        report.kubernetes[version] = count
    report.skipped = sorted(skipped)


def pod_template_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj["metadata"].items() if k == "annotations"}


def _checkov_binary() -> str | None:
    env = os.environ.get("TRDEPLOY_CHECKOV")
    candidates = [env] if env else []
    root = Path(__file__).resolve().parents[2]
    candidates += [
        str(root / ".venv" / "tools" / "checkov" / "bin" / "checkov"),  # scripts/ci/k8s-tools.sh
        str(Path(sys.executable).with_name("checkov")),
        shutil.which("checkov") or "",
    ]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def validate_checkov(folder: Path, report: ValidationReport) -> None:
    binary = _checkov_binary()
    if binary is None:
        raise TrdeployError("checkov is not installed.", hint="Run scripts/ci/k8s-tools.sh (checkov gets its own virtual environment).")
    # Files, not -d: checkov skips hidden folders, and the atomic write renders into one.
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    files = [arg for name in kust["resources"] for arg in ("-f", str(folder / name))]
    with tempfile.TemporaryDirectory(prefix="trdeploy-checkov-") as extra:
        wrapped = pod_templates_as_deployments(_load_folder(folder))
        if wrapped:
            path = Path(extra) / "lws-pod-templates.yaml"
            path.write_text(yaml.safe_dump_all(wrapped, sort_keys=False), encoding="utf-8")
            files += ["-f", str(path)]
        _run_checkov(binary, files, folder, report)


def _run_checkov(binary: str, files: list[str], folder: Path, report: ValidationReport) -> None:
    cmd = [binary, *files, "--framework", "kubernetes", "--skip-download", "--compact",
           "-o", "json", "--skip-check", ",".join(CHECKOV_SKIPS)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TrdeployError(f"checkov gave no JSON (exit {proc.returncode}): {last}", hint="Run it by hand to see why.") from exc
    runs = data if isinstance(data, list) else [data]
    failed: list[str] = []
    passed = 0
    for run in runs:
        if not isinstance(run, dict):
            continue
        passed += int(run.get("summary", {}).get("passed", 0))
        for chk in run.get("results", {}).get("failed_checks", []):
            failed.append(f"{chk['check_id']} {chk.get('resource')} ({chk.get('check_name')})")
    report.checkov = {"passed": passed, "failed": failed, "skipped": sorted(CHECKOV_SKIPS)}
    if passed == 0 and not failed:
        raise TrdeployError(f"checkov checked nothing in {folder} (exit {proc.returncode}).", hint="Run it by hand to see why.")
    if failed:
        raise TrdeployError(f"checkov fails {len(failed)} check(s): {'; '.join(failed[:3])}.", hint="Fix the renderer or justify the skip in CHECKOV_SKIPS.")


def validate_kustomize(folder: Path, expected: int, report: ValidationReport) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise TrdeployError("kubectl is not installed (needed for `kubectl kustomize`).", hint="Run scripts/ci/k8s-tools.sh or install kubectl.")
    proc = subprocess.run([kubectl, "kustomize", str(folder)], check=False, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TrdeployError(f"kubectl kustomize {folder} fails: {last}", hint="This is a render-k8s bug.")
    objs = [o for o in yaml.safe_load_all(proc.stdout) if o]
    if len(objs) != expected:
        raise TrdeployError(f"kubectl kustomize renders {len(objs)} objects, the folder holds {expected}.", hint="This is a render-k8s bug.")
    report.kustomize_objects = len(objs)


def validate_promql(expressions: list[str], report: ValidationReport) -> None:
    try:
        import promql_parser
    except ImportError as exc:
        raise TrdeployError("promql-parser is not installed.", hint="pip install 'trdeploy[k8s]'.") from exc
    for expr in expressions:
        try:
            promql_parser.parse(expr)
        except ValueError as exc:
            raise TrdeployError(f"PromQL does not parse ({exc}): {expr}", hint="This is a render-k8s bug.") from exc
    report.promql_parsed = len(expressions)


def promql_in_folder(folder: Path) -> list[str]:
    """Every PromQL expression the folder holds: alert rules, the KEDA query, dashboard targets."""
    exprs: list[str] = []
    for obj in _load_folder(folder):
        kind = obj.get("kind")
        spec = obj.get("spec", {})
        if kind == "PrometheusRule":
            exprs += [r["expr"] for g in spec["groups"] for r in g["rules"]]
        elif kind == "ScaledObject":
            exprs += [t["metadata"]["query"] for t in spec["triggers"] if t["type"] == "prometheus"]
        elif kind == "ConfigMap" and obj["metadata"].get("labels", {}).get("grafana_dashboard"):
            for text in obj["data"].values():
                exprs += [t["expr"] for p in json.loads(text)["panels"] for t in p["targets"]]
    return exprs


def helm_binary() -> str | None:
    """helm: $TRDEPLOY_HELM, the one scripts/ci/k8s-tools.sh installs (.venv/tools/helm/helm), or on PATH."""
    env = os.environ.get("TRDEPLOY_HELM")
    root = Path(__file__).resolve().parents[2]
    candidates = [env] if env else []
    candidates += [str(root / ".venv" / "tools" / "helm" / "helm"), shutil.which("helm") or ""]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def _helm(args: list[str]) -> subprocess.CompletedProcess[str]:
    binary = helm_binary()
    if binary is None:
        raise TrdeployError("helm is not installed (needed to check a chart).", hint="Run scripts/ci/k8s-tools.sh or install helm 3.")
    env = {**os.environ, "HELM_CACHE_HOME": tempfile.gettempdir() + "/trdeploy-helm-cache", "HELM_CONFIG_HOME": tempfile.gettempdir() + "/trdeploy-helm-config"}
    return subprocess.run([binary, *args], check=False, capture_output=True, text=True, timeout=120, env=env)


def helm_template(chart: str | Path, name: str, namespace: str, *extra: str) -> list[dict[str, Any]]:
    """The objects `helm template NAME CHART --namespace NS [extra]` renders."""
    proc = _helm(["template", name, str(chart), "--namespace", namespace, *extra])
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TrdeployError(f"helm template {chart} fails: {last}", hint="This is a render-k8s bug.")
    return [o for o in yaml.safe_load_all(proc.stdout) if o]


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return (obj.get("apiVersion", ""), obj.get("kind", ""), obj.get("metadata", {}).get("name", ""))


def validate_chart(chart: str | Path, expected: list[dict[str, Any]], name: str, namespace: str, report: ValidationReport) -> None:
    """helm lint --strict, then `helm template` with default values must render exactly `expected` (the folder's objects)."""
    lint = _helm(["lint", "--strict", str(chart)])
    if lint.returncode != 0:
        bad = [line for line in lint.stdout.splitlines() if line.startswith(("[ERROR]", "[WARNING]"))] or lint.stderr.strip().splitlines()[-1:]
        raise TrdeployError(f"helm lint {chart} fails: {'; '.join(bad[:3])}", hint="This is a render-k8s bug.")
    got = sorted(helm_template(chart, name, namespace), key=_key)
    want = sorted((yaml.safe_load(yaml.safe_dump(o)) for o in expected), key=_key)
    if [_key(o) for o in got] != [_key(o) for o in want]:
        raise TrdeployError(f"helm template renders {[_key(o)[1:] for o in got]}, the folder holds {[_key(o)[1:] for o in want]}.", hint="This is a render-k8s bug.")
    for g, w in zip(got, want, strict=True):
        if g != w:
            raise TrdeployError(f"helm template renders {_key(g)[1]} {_key(g)[2]} unlike the folder's.", hint="This is a render-k8s bug.")
    version = _helm(["version", "--short"]).stdout.strip()
    report.helm = {"version": version, "lint": "passed (--strict)", "objects": len(got), "equal_to_folder": True}


def validate_folder(folder: str | Path, *, checkov: bool = True) -> ValidationReport:
    folder = Path(folder)
    report = ValidationReport()
    objects = _load_folder(folder)
    validate_kubernetes(objects, report)
    validate_promql(promql_in_folder(folder), report)
    validate_kustomize(folder, len(objects), report)
    if checkov:
        validate_checkov(folder, report)
    return report
