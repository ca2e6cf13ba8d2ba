"""`trdeploy render-k8s`: parse options, call trdeploy.deploy.k8s.render, write, optionally validate (thin)."""

from __future__ import annotations

import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, get_args

import typer
import yaml
from rich.console import Console
from rich.table import Table

from trdeploy.args import default
from trdeploy.cli._options import ForceOpt, JsonOpt, choices, opt
from trdeploy.deploy.k8s import RenderOptions
from trdeploy.errors import TrdeployError
from trdeploy.output import atomic_directory, emit, warn

HELP = (
    "Kubernetes manifests for a DeploymentProfile: the vLLM server, its autoscaling, monitoring and alerts.\n\n"
    "The pods run the image `trdeploy build` made from the same profile (its entrypoint, user, paths and port), with "
    "--model-source pvc or download for a `mount` build and --model-source image for a `bake`/`download` build; push it "
    "and pass --image.\n\n"
    "Writes a kustomize folder (or, with --format helm, a Helm chart of the same objects): a Deployment (or a "
    "LeaderWorkerSet when a replica needs more GPUs than a node has, with --multi-node), Service, model-cache PVC, KEDA "
    "ScaledObject on this deployment's own in-flight requests (or --autoscaler hpa), PodDisruptionBudget, ServiceMonitor, "
    "PrometheusRule alerts derived from the SLA, NetworkPolicy and a Grafana dashboard ConfigMap. Probes, /dev/shm, "
    "resources, drain and autoscaling numbers come from the profile; every option overrides one. On a real cluster: "
    "--monitoring-label release=<your kube-prometheus-stack release>, --storage-class/--access-mode for the cache, "
    "--allow-namespace for your ingress controller (README, \"On a real cluster\").\n\n"
    "The API key (on by default) and the Hugging Face token are read from Secrets by reference; create them first:\n"
    "kubectl -n llm create secret generic NAME-api-key --from-literal=api-key=...\n\n"
    """[bold]Examples[/]

  trdeploy render-k8s trdeploy.yaml -o k8s/ --validate

  trdeploy render-k8s recipes/llama-3-8b-awq-l40s.yaml -o - | kubectl apply -f -

  trdeploy render-k8s trdeploy.yaml -o out/ --namespace prod --image registry.example/trdeploy/llama-8b:1 --replicas-min 2 --replicas-max 6

  trdeploy render-k8s trdeploy.yaml -o out/ --model-source image --image registry.example/trdeploy/llama-8b:1-bake

  trdeploy render-k8s trdeploy.yaml -o out/ --monitoring-label release=kube-prometheus-stack --allow-namespace ingress-nginx --storage-class efs-sc

  trdeploy render-k8s trdeploy.yaml --format helm -o chart/ --validate && helm install llama chart/ --namespace llm

  trdeploy render-k8s big.yaml -o out/ --multi-node --autoscaler hpa --json
"""
)


def _choices(field: str) -> type[Enum]:
    annotation = RenderOptions.model_fields[field].annotation
    args = get_args(annotation)
    if args and all(not isinstance(a, str) for a in args):  # Optional[Literal[...]]
        args = next(get_args(a) for a in args if a is not type(None))
    return choices(field.title().replace("_", ""), args)


ModelSource = _choices("model_source")
Autoscaler = _choices("autoscaler")
Monitor = _choices("monitor")
AccessMode = _choices("access_mode")
DriverLabels = _choices("driver_labels")
Format = choices("Format", ("kustomize", "helm"))
R = RenderOptions


def render_k8s(
    profile: Annotated[Path, typer.Argument(help="DeploymentProfile written by `trdeploy tune` (trdeploy.yaml).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (kustomize or a Helm chart), or - for one multi-document YAML stream on stdout.", show_default=False)],
    output_format: Annotated[Format, typer.Option("--format", help="kustomize: a kustomize folder; helm: a Helm chart (Chart.yaml, values.yaml, templates/) of the same objects.")] = "kustomize",  # type: ignore[assignment]
    name: Annotated[str | None, opt(R, "name")] = default(R, "name"),
    namespace: Annotated[str, opt(R, "namespace", "--namespace")] = default(R, "namespace"),
    image: Annotated[str | None, opt(R, "image")] = default(R, "image"),
    replicas_min: Annotated[int | None, opt(R, "replicas_min")] = default(R, "replicas_min"),
    replicas_max: Annotated[int | None, opt(R, "replicas_max")] = default(R, "replicas_max"),
    target_concurrency: Annotated[int | None, opt(R, "target_concurrency")] = default(R, "target_concurrency"),
    multi_node: Annotated[bool, opt(R, "multi_node")] = default(R, "multi_node"),
    runtime_class: Annotated[str | None, opt(R, "runtime_class")] = default(R, "runtime_class"),
    model_source: Annotated[ModelSource, opt(R, "model_source")] = default(R, "model_source"),
    storage_class: Annotated[str | None, opt(R, "storage_class")] = default(R, "storage_class"),
    access_mode: Annotated[AccessMode | None, opt(R, "access_mode")] = default(R, "access_mode"),
    cache_group: Annotated[int | None, opt(R, "cache_group")] = default(R, "cache_group"),
    cache_chown: Annotated[bool, opt(R, "cache_chown")] = default(R, "cache_chown"),
    cache_size_gi: Annotated[int | None, opt(R, "cache_size_gi")] = default(R, "cache_size_gi"),
    api_key: Annotated[bool, opt(R, "api_key")] = default(R, "api_key"),
    api_key_secret: Annotated[str | None, opt(R, "api_key_secret")] = default(R, "api_key_secret"),
    hf_token_secret: Annotated[str | None, opt(R, "hf_token_secret")] = default(R, "hf_token_secret"),
    autoscaler: Annotated[Autoscaler, opt(R, "autoscaler")] = default(R, "autoscaler"),
    monitor: Annotated[Monitor, opt(R, "monitor")] = default(R, "monitor"),
    prometheus_url: Annotated[str, opt(R, "prometheus_url")] = default(R, "prometheus_url"),
    monitoring_namespace: Annotated[str, opt(R, "monitoring_namespace")] = default(R, "monitoring_namespace"),
    monitoring_label: Annotated[list[str] | None, opt(R, "monitoring_label")] = None,
    allow_namespace: Annotated[list[str] | None, opt(R, "allow_namespace")] = None,
    fallback_replicas: Annotated[int | None, opt(R, "fallback_replicas")] = default(R, "fallback_replicas"),
    surge: Annotated[int, opt(R, "surge")] = default(R, "surge"),
    read_only_root: Annotated[bool, opt(R, "read_only_root")] = default(R, "read_only_root"),
    driver_labels: Annotated[DriverLabels, opt(R, "driver_labels")] = default(R, "driver_labels"),
    port: Annotated[int, opt(R, "port")] = default(R, "port"),
    validate: Annotated[bool, typer.Option("--validate", help="Check the output: kubernetes-validate strict (1.29-1.35), checkov, kubectl kustomize, PromQL parsing.")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    from trdeploy.deploy.k8s import chart_texts, dump_stream, file_texts, render
    from trdeploy.deployment import DeploymentProfile

    to_stdout = str(output) == "-"
    helm = _value(output_format) == "helm"
    if to_stdout and as_json:
        raise TrdeployError("--json and -o - both want stdout.", hint="Write a folder with -o DIR to get the JSON summary.")
    if to_stdout and helm:
        raise TrdeployError("--format helm writes a chart folder, not a stream.", hint="Pass -o DIR.")
    # A ValidationError here becomes the one-line error naming the option (trdeploy.cli.main).
    opts = RenderOptions(
        name=name, namespace=namespace, image=image, replicas_min=replicas_min, replicas_max=replicas_max,
        target_concurrency=target_concurrency, multi_node=multi_node,
        runtime_class=runtime_class, model_source=_value(model_source), storage_class=storage_class,
        access_mode=_value(access_mode) if access_mode is not None else None, cache_group=cache_group, cache_chown=cache_chown,
        cache_size_gi=cache_size_gi, api_key=api_key, api_key_secret=api_key_secret, hf_token_secret=hf_token_secret,
        autoscaler=_value(autoscaler), monitor=_value(monitor), prometheus_url=prometheus_url,
        monitoring_namespace=monitoring_namespace, monitoring_label=monitoring_label or [], allow_namespace=allow_namespace or [],
        fallback_replicas=fallback_replicas, surge=surge, read_only_root=read_only_root, driver_labels=_value(driver_labels), port=port,
    )
    prof = DeploymentProfile.load(profile)
    rendered = render(prof, opts)
    folder_texts = file_texts(rendered)
    texts = chart_texts(rendered) if helm else folder_texts
    report = None

    def write(folder: Path) -> None:
        nonlocal report
        for fname, text in texts.items():
            (folder / fname).parent.mkdir(parents=True, exist_ok=True)
            (folder / fname).write_text(text, encoding="utf-8")
        if validate:
            from trdeploy.deploy.validate import validate_chart, validate_folder

            if not helm:
                report = validate_folder(folder)
                return
            # The chart's objects are the folder's: validate the folder, then check the chart renders exactly it.
            with tempfile.TemporaryDirectory(prefix="trdeploy-k8s-") as tmp:
                for fname, text in folder_texts.items():
                    (Path(tmp) / fname).write_text(text, encoding="utf-8")
                report = validate_folder(tmp)
            expected = [o for o in yaml.safe_load_all(dump_stream(rendered)) if o]
            validate_chart(folder, expected, rendered.plan.name, rendered.plan.namespace, report)

    if to_stdout:
        if validate:
            with tempfile.TemporaryDirectory(prefix="trdeploy-k8s-") as tmp:
                write(Path(tmp))
        for w in rendered.warnings:
            warn(w)
        sys.stdout.write(dump_stream(rendered))
        return
    with atomic_directory(output, force=force, inputs={"PROFILE": profile}) as tmp:
        write(tmp)
    if not as_json:
        for w in rendered.warnings:
            warn(w)
    data = {
        "written": str(output),
        "format": _value(output_format),
        "files": list(texts),
        "facts": rendered.facts,
        "warnings": rendered.warnings,
        "validation": report.as_json() if report else None,
    }
    emit(data, as_json=as_json, render=lambda console: _render(console, data))


def _value(choice: Enum | str) -> str:
    return choice.value if isinstance(choice, Enum) else choice


def _render(console: Console, data: dict) -> None:
    f = data["facts"]
    table = Table(title=f"{f['kind']} {f['namespace']}/{f['name']}", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value")
    table.add_row("image", f["image"])
    table.add_row("GPUs per replica", f"{f['gpus_per_replica']} ({f['pods_per_replica']} pod(s) x {f['gpus_per_pod']})")
    table.add_row("replicas", f"{f['replicas_min']}-{f['replicas_max']}")
    table.add_row("scale at (in flight per replica)", f"{f['target_in_flight_per_replica']} ({f['target_basis']})")
    table.add_row("startupProbe budget", f"{f['startup_budget_s']} s (cold start {f['predicted_cold_start_s']} s: {f['startup_basis']})")
    table.add_row("scale-up stabilisation", f"{f['scale_up_stabilization_s']} s")
    table.add_row("drain (vLLM --shutdown-timeout) / grace", f"{f['shutdown_timeout_s']} s / {f['termination_grace_s']} s (preStop {f['prestop_s']} s)")
    if f["cache_access_mode"]:
        table.add_row("cache volume", f"{f['cache_access_mode']}, {f['cache_gi']} GiB")
    table.add_row("CPU / memory / shm", f"{f['cpu']} / {f['memory_gi']} GiB / {f['shm_gi']} GiB")
    console.print(table)
    v = data["validation"]
    if v:
        versions = ", ".join(x.rsplit(".", 1)[0] for x in v["kubernetes_versions"])
        console.print(f"[green]valid[/]: Kubernetes {versions} (strict); checkov {v['checkov']['passed']} passed, "
                      f"skipped {', '.join(v['checkov']['skipped'])}; kubectl kustomize {v['kustomize_objects']} objects; "
                      f"{v['promql_parsed']} PromQL expressions parse")
        for s in v["skipped"]:
            console.print(f"[dim]not schema-checked: {s}[/]")
        if v.get("helm"):
            console.print(f"[green]chart[/]: helm {v['helm']['version']} lint {v['helm']['lint']}; helm template renders the same "
                          f"{v['helm']['objects']} objects as the folder")
    console.print(f"Wrote {data['written']} ({', '.join(data['files'])})")


def register(app: typer.Typer) -> None:
    app.command("render-k8s", help=HELP, no_args_is_help=True)(render_k8s)
