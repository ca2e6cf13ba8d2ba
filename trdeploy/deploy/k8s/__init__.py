"""Kubernetes manifests for a DeploymentProfile: pure functions from the profile to plain dicts.

- plan.py: every number and name, decided once from the profile and the options (`make_plan`);
- objects.py: the workload, Service, PVC, autoscaler, PDB, NetworkPolicy (builders over the plan);
- observability.py: PromQL, the scrape object, the SLA alerts, the dashboard;
- knobs.py: how a value a Helm chart may change travels through the builders; helm.py: the chart, from the
  same builders (`render_chart`).

The serving container is `trdeploy build`'s image run as it is (trdeploy.deploy.container).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from trdeploy.deploy.k8s import objects, observability
from trdeploy.deploy.k8s.knobs import JsonText, plain
from trdeploy.deploy.k8s.observability import hpa_adapter_rule
from trdeploy.deploy.k8s.plan import Plan, RenderOptions, make_plan
from trdeploy.deployment import DeploymentProfile

__all__ = ["Plan", "RenderOptions", "Rendered", "build_files", "chart_texts", "dump_stream", "file_texts", "make_plan", "render"]


@dataclass
class Rendered:
    """The objects, grouped by the file each goes to (kustomization.yaml lists the files in order)."""

    files: dict[str, list[dict[str, Any]]]
    kustomization: dict[str, Any]
    facts: dict[str, Any]
    plan: Plan
    warnings: list[str] = field(default_factory=list)
    promql: list[str] = field(default_factory=list)  # every PromQL expression written anywhere

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [obj for name in self.kustomization["resources"] for obj in self.files[name]]


def _warnings(p: Plan, from_objects: list[str]) -> list[str]:
    warnings: list[str] = list(p.warnings)
    if not p.image_given:
        warnings.append(
            f"No --image: the pods run {p.image}, the tag `trdeploy build` gives this profile "
            f"({'--model-source mount' if p.model_source != 'image' else 'bake'}); push it to a registry the cluster pulls from "
            "(`trdeploy build PROFILE --tag REGISTRY/NAME:TAG --push`) and pass that as --image."
        )
    if p.model_source != "image" and p.image_given and p.image.rsplit(":", 1)[-1].endswith(("-bake", "-download")):
        warnings.append(
            f"--image {p.image} looks like a `build --model-source bake|download` image (its weights at {p.model_in_image}); "
            f"with --model-source {p.model_source} the pods serve {p.model_in_container} instead. Pass --model-source image to serve the baked weights."
        )
    if p.model_source == "pvc" and not p.model_is_hub:
        warnings.append(
            f"The model is the local folder {p.engine_model}: copy it onto the cache volume as "
            f"{objects.MODELS_SUBPATH}/{p.model_in_container.rsplit('/', 1)[-1]}/ (the pods read {p.model_in_container}), "
            "or bake it into the image and use --model-source image."
        )
    if not p.monitoring_labels:
        warnings.append(
            f"The {p.opts.monitor} and the PrometheusRule carry no label for a Prometheus to select them by: kube-prometheus-stack's "
            "Prometheus selects `release: <its Helm release>` only, so nothing is scraped, no alert fires and KEDA holds its "
            f"fallback of {p.fallback_replicas} replica(s). Pass --monitoring-label release=<release> (kubectl get prometheus -A -o "
            "jsonpath='{..serviceMonitorSelector}' shows what yours selects)."
        )
    return warnings + from_objects


def build_files(p: Plan) -> tuple[dict[str, list[dict[str, Any]]], list[str], list[str]]:
    """The objects of a plan, grouped by the file each goes to, every PromQL expression they hold and the warnings
    building them gave. The same builders make the kustomize folder (a plain plan) and the Helm chart's templates
    (a tagged plan, helm.py)."""
    opts = p.opts
    warnings: list[str] = []
    files: dict[str, list[dict[str, Any]]] = {}
    work = objects.workload(p)
    files["leaderworkerset.yaml" if p.nodes > 1 else "deployment.yaml"] = [work]
    files["service.yaml"] = [objects.service(p)]
    if opts.model_source == "pvc":
        files["pvc.yaml"] = [objects.pvc(p)]
    promql: list[str] = []
    if opts.autoscaler == "keda":
        files["scaledobject.yaml"] = [objects.scaled_object(p)]
        promql.append(observability.in_flight_total(p))
    elif opts.autoscaler == "hpa":
        files["hpa.yaml"] = [objects.hpa(p)]
    files["pdb.yaml"] = [objects.pdb(p)]
    files[f"{opts.monitor}.yaml"] = [observability.monitor(p)]
    rule, rule_exprs = observability.rules(p, warnings)
    files["prometheusrule.yaml"] = [rule]
    promql += rule_exprs
    files["networkpolicy.yaml"] = [objects.network_policy(p)]
    dash, dash_exprs = observability.dashboard(p)
    files["dashboard.yaml"] = [dash]
    promql += dash_exprs
    return files, promql, warnings


def render(profile: DeploymentProfile, opts: RenderOptions | None = None) -> Rendered:
    """Every manifest for `profile`, grouped by file, with the facts they were derived from."""
    opts = opts or RenderOptions()
    p = make_plan(profile, opts)
    files, promql, object_warnings = build_files(p)
    warnings = _warnings(p, object_warnings)
    work = files["leaderworkerset.yaml" if p.nodes > 1 else "deployment.yaml"][0]
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": list(files)}
    facts = {
        "name": p.name,
        "namespace": p.namespace,
        "kind": work["kind"],
        "image": p.image,
        "model_source": p.model_source,
        "model_in_container": p.model_in_container,
        "served_model_name": p.served_model_name,
        "profile_sha256": p.profile_sha256,
        "gpus_per_replica": p.gpus,
        "pods_per_replica": p.nodes,
        "gpus_per_pod": p.gpus_per_pod,
        "gpus_per_node": p.gpus_per_node,
        "replicas_min": p.replicas_min,
        "replicas_max": p.replicas_max,
        "target_in_flight_per_replica": p.target,
        "target_basis": p.target_basis,
        "predicted_cold_start_s": round(p.startup_cold_s, 1),
        "startup_basis": p.startup_basis,
        "startup_budget_s": p.startup_budget_s,
        "scale_up_stabilization_s": p.scale_up_window_s,
        "shutdown_timeout_s": p.shutdown_timeout_s,
        "prestop_s": p.prestop_s,
        "termination_grace_s": p.grace_s,
        "cache_access_mode": p.access_mode if p.model_source == "pvc" else None,
        "shm_gi": p.shm_gi,
        "cpu": p.cpu,
        "memory_gi": p.memory_gi,
        "cache_gi": p.cache_gi,
        "vllm_metrics": p.m.source,
        "hpa_adapter_rule": hpa_adapter_rule(p) if opts.autoscaler == "hpa" else None,
    }
    return Rendered(files=files, kustomization=kustomization, facts=facts, plan=p, warnings=warnings, promql=promql)


# ---------------------------------------------------------------------------------------------
# Serialisation (plain YAML: no anchors, so every object reads on its own)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


# A dashboard's JSON as a literal block: it reads as JSON in the file (and the chart templates values inside it).
_Dumper.add_representer(JsonText, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", str(v), style="|"))


def _dump_all(objs: list[Any]) -> str:
    return yaml.dump_all([plain(o) for o in objs], Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def dump_stream(rendered: Rendered) -> str:
    """`-o -`: one multi-document stream of every object kustomization.yaml lists."""
    return _dump_all(rendered.objects)


def file_texts(rendered: Rendered) -> dict[str, str]:
    """File name -> YAML text for the output folder (kustomization.yaml included)."""
    texts = {name: _dump_all(objs) for name, objs in rendered.files.items()}
    texts["kustomization.yaml"] = _dump_all([rendered.kustomization])
    return texts


def chart_texts(rendered: Rendered) -> dict[str, str]:
    """`--format helm`: path in the chart folder -> text (Chart.yaml, values.yaml, values.schema.json, templates/),
    from the same builders over the rendered plan with its knobs tagged (trdeploy.deploy.k8s.helm)."""
    from trdeploy.deploy.k8s import helm

    tagged, _, _ = build_files(helm.helm_plan(rendered.plan))
    return helm.chart_files(rendered.files, tagged, rendered.plan)
