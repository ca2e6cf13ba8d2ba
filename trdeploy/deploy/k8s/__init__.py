"""Kubernetes manifests for a DeploymentProfile: pure functions from the profile to plain dicts.

- plan.py: every number and name, decided once from the profile and the options (`make_plan`);
- objects.py: the workload, Service, PVC, autoscaler, PDB, NetworkPolicy (builders over the plan);
- observability.py: PromQL, the scrape object, the SLA alerts, the dashboard.

The serving container is `trdeploy build`'s image run as it is (trdeploy.deploy.container).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from trdeploy.deploy.k8s import objects, observability
from trdeploy.deploy.k8s.observability import hpa_adapter_rule
from trdeploy.deploy.k8s.plan import Plan, RenderOptions, make_plan
from trdeploy.deployment import DeploymentProfile

__all__ = ["Plan", "RenderOptions", "Rendered", "dump_stream", "file_texts", "make_plan", "render"]


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


def _warnings(p: Plan) -> list[str]:
    warnings: list[str] = []
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
    if p.nodes > 1:
        warnings.append(
            f"One replica spans {p.nodes} nodes with the profile's tensor_parallel_size {p.gpus} (vLLM over Ray): its all-reduce "
            "crosses the network, which tune's latency prediction (one node's interconnect) does not include; vLLM recommends "
            "tensor parallelism within a node and pipeline parallelism across nodes (re-tune for that, or measure with `trdeploy bench`)."
        )
    return warnings


def render(profile: DeploymentProfile, opts: RenderOptions | None = None) -> Rendered:
    """Every manifest for `profile`, grouped by file, with the facts they were derived from."""
    opts = opts or RenderOptions()
    p = make_plan(profile, opts)
    warnings = _warnings(p)
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
        "drain_s": p.drain_s,
        "termination_grace_s": p.grace_s,
        "shm_gi": p.shm_gi,
        "cpu": p.cpu,
        "memory_gi": p.memory_gi,
        "cache_gi": p.cache_gi,
        "vllm_metrics": p.m.source,
        "hpa_adapter_rule": hpa_adapter_rule(p.m) if opts.autoscaler == "hpa" else None,
    }
    return Rendered(files=files, kustomization=kustomization, facts=facts, plan=p, warnings=warnings, promql=promql)


# ---------------------------------------------------------------------------------------------
# Serialisation (plain YAML: no anchors, so every object reads on its own)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump_all(objs: list[Any]) -> str:
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def dump_stream(rendered: Rendered) -> str:
    """`-o -`: one multi-document stream of every object kustomization.yaml lists."""
    return _dump_all(rendered.objects)


def file_texts(rendered: Rendered) -> dict[str, str]:
    """File name -> YAML text for the output folder (kustomization.yaml included)."""
    texts = {name: _dump_all(objs) for name, objs in rendered.files.items()}
    texts["kustomization.yaml"] = _dump_all([rendered.kustomization])
    return texts
