"""`render-k8s --format helm`: the chart is the folder's objects. With default values `helm template` (the real
helm 3.17 that scripts/ci/k8s-tools.sh installs) renders exactly the kustomize folder, under any release name
and namespace; every value of values.yaml changes the objects exactly as the same change to the plan does; the
committed charts/ lint clean and stay in sync (tests/deploy/test_k8s.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, run_cli
from trdeploy.deploy.k8s import RenderOptions, build_files, chart_texts, render
from trdeploy.deploy.k8s.helm import KNOBS, knobs_for, values
from trdeploy.deploy.k8s.knobs import plain
from trdeploy.deploy.validate import helm_binary, helm_template, validate_chart
from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
L40S_AWQ = ROOT / "recipes" / "llama-3-8b-awq-l40s.yaml"


@pytest.fixture(scope="module", autouse=True)
def _helm():
    if helm_binary() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("helm missing (scripts/ci/k8s-tools.sh installs it)", pytrace=False)
        pytest.skip("helm missing (scripts/ci/k8s-tools.sh installs it)")


def _key(obj: dict) -> tuple:
    return (obj["kind"], obj["metadata"]["name"])


def _norm(objs: list[dict]) -> list[dict]:
    return sorted((yaml.safe_load(yaml.safe_dump(plain(o))) for o in objs), key=_key)


def _folder_objects(folder: Path) -> list[dict]:
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return [o for name in kust["resources"] for o in yaml.safe_load_all((folder / name).read_text()) if o]


def _write_chart(rendered, folder: Path) -> Path:
    for name, text in chart_texts(rendered).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_every_recipe_chart_lints_clean_and_renders_its_folder():
    from trdeploy.deploy.validate import ValidationReport

    assert RECIPES
    for recipe in RECIPES:
        report = ValidationReport()
        validate_chart(ROOT / "charts" / recipe.stem, _folder_objects(ROOT / "k8s" / recipe.stem), recipe.stem, "llm", report)
        assert report.helm["equal_to_folder"] and report.helm["version"].startswith("v3.17.") and report.helm["objects"] == 9


def test_names_follow_the_release_and_its_namespace():
    prof = DeploymentProfile.load(L40S_AWQ)
    chart = ROOT / "charts" / L40S_AWQ.stem
    got = sorted(helm_template(chart, "tr-llm", "prod"), key=_key)
    want = _norm(render(prof, RenderOptions(name="tr-llm", namespace="prod")).objects)
    assert got == want
    query = next(o for o in got if o["kind"] == "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    assert 'namespace="prod",job="tr-llm"' in query
    assert next(o for o in got if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"][1]["valueFrom"][
        "secretKeyRef"]["name"] == "tr-llm-api-key"


def _changed(knob, default: Any) -> tuple[Any, Any]:
    """(the value for --set-json, the Plan field's value) of a change to `knob`."""
    special = {
        "image": "registry.example/tr/llama:9",
        "autoscaling.prometheusUrl": "http://prometheus.example:9090",
        "networkPolicy.monitoringNamespace": "observability",
        "apiKey.secretName": "shared-llm-key",
        "hfToken.secretName": "hub-token",
        "cache.accessMode": "ReadWriteOnce" if default == "ReadWriteMany" else "ReadWriteMany",
        "cache.storageClass": "fast-nfs",
        "runtimeClassName": "nvidia",
        "cache.supplementalGroups": [7000],
        "monitoring.labels": {"release": "kube-prometheus-stack", "team": "llm"},
        "networkPolicy.allowNamespaces": ["ingress-nginx", "envoy-gateway-system"],
        "rollout.surge": 2,
    }
    if knob.path in special:
        new = special[knob.path]
    elif knob.kind == "bool":
        new = not default
    else:
        new = default + 3
    plan_value = {"map": dict, "list": tuple}.get(knob.kind, lambda v: v)(new)
    return new, plan_value


@pytest.mark.parametrize("recipe, opts", [
    (L40S_AWQ, RenderOptions()),
    (ROOT / "recipes" / "llama-3-8b-bf16-l40s.yaml",
     RenderOptions(autoscaler="hpa", monitor="podmonitor", model_source="download", storage_class="x", cache_group=5, runtime_class="rc",
                   read_only_root=True, monitoring_label=["release=a"], allow_namespace=["b"], api_key_secret="given")),
    (ROOT / "recipes" / "llama-3-8b-bf16-h100.yaml", RenderOptions(cache_chown=True, access_mode="ReadWriteMany", storage_class="s", surge=1)),
    (L40S_AWQ, RenderOptions(model_source="image", image="reg/x:1", autoscaler="none", api_key=False)),
], ids=["keda-pvc", "hpa-podmonitor-download", "hub-pvc-chown", "image-no-autoscaler"])
def test_every_value_changes_the_objects_as_the_same_change_to_the_plan(recipe, opts, tmp_path):
    rendered = render(DeploymentProfile.load(recipe), opts)
    p = rendered.plan
    chart = _write_chart(rendered, tmp_path / "chart")
    knobs = knobs_for(p)
    assert {k.path for k in knobs} <= {k.path for k in KNOBS} and len(knobs) >= 12
    for knob in knobs:
        default = values(p)
        for part in knob.path.split("."):
            default = default[part]
        new, plan_value = _changed(knob, default)
        files, _, _ = build_files(dataclasses.replace(p, **{knob.field: plan_value}))
        want = _norm([o for objs in files.values() for o in objs])
        got = sorted(helm_template(chart, p.name, p.namespace, "--set-json", f"{knob.path}={json.dumps(new)}"), key=_key)
        assert got == want, knob.path
        assert got != _norm(rendered.objects), f"{knob.path} changes nothing"


def test_values_yaml_schema_and_templates_agree(tmp_path):
    rendered = render(DeploymentProfile.load(L40S_AWQ))
    chart = _write_chart(rendered, tmp_path / "chart")
    assert yaml.safe_load((chart / "values.yaml").read_text()) == values(rendered.plan)
    templates = "\n".join(p.read_text() for p in (chart / "templates").glob("*.yaml"))
    used = set(re.findall(r"\$\.Values\.([A-Za-z.]+)", templates))
    assert used == {k.path for k in knobs_for(rendered.plan)}
    assert "ZZKNOB" not in templates and "zzrelease" not in templates
    chart_meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    assert chart_meta["apiVersion"] == "v2" and chart_meta["appVersion"] == "0.25.0" and chart_meta["annotations"]["trdeploy.io/profile-sha256"]
    # values.schema.json refuses what the cluster would refuse later (helm checks it before rendering).
    for bad in ("replicas.min=0", 'cache.accessMode="ReadWriteSome"', 'monitoring.labels={"release": 1}', 'replicaz={"min": 1}'):
        with pytest.raises(TrdeployError, match=r"helm template .* fails"):
            helm_template(chart, "x", "llm", "--set-json", bad)


def test_validation_catches_a_chart_that_drifts_from_the_folder(tmp_path):
    rendered = render(DeploymentProfile.load(L40S_AWQ))
    chart = _write_chart(rendered, tmp_path / "chart")
    from trdeploy.deploy.validate import ValidationReport

    want = _norm(rendered.objects)
    validate_chart(chart, want, rendered.plan.name, "llm", ValidationReport())
    text = (chart / "templates" / "pdb.yaml").read_text()
    (chart / "templates" / "pdb.yaml").write_text(text.replace("maxUnavailable: 1", "minAvailable: 1"))
    with pytest.raises(TrdeployError, match=r"renders PodDisruptionBudget .* unlike the folder's"):
        validate_chart(chart, want, rendered.plan.name, "llm", ValidationReport())
    (chart / "templates" / "pdb.yaml").write_text(text.replace("maxUnavailable: 1", "maxUnavailable: {{ .Values.nope.x }}"))
    with pytest.raises(TrdeployError, match=r"helm lint .* fails"):
        validate_chart(chart, want, rendered.plan.name, "llm", ValidationReport())


def test_cli_writes_a_chart_and_validates_it(tmp_path):
    out = tmp_path / "chart"
    proc = run_cli("render-k8s", str(L40S_AWQ), "--format", "helm", "-o", str(out), "--validate", "--json", "--monitoring-label", "release=kps")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["format"] == "helm" and data["files"][:3] == ["Chart.yaml", "values.yaml", "values.schema.json"]
    assert data["validation"]["helm"]["equal_to_folder"] and data["validation"]["checkov"]["failed"] == []
    assert yaml.safe_load((out / "values.yaml").read_text())["monitoring"]["labels"] == {"release": "kps"}
    again = run_cli("render-k8s", str(L40S_AWQ), "--format", "helm", "-o", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    stream = run_cli("render-k8s", str(L40S_AWQ), "--format", "helm", "-o", "-")
    assert stream.returncode == 2 and "--format helm writes a chart folder" in stream.stderr
