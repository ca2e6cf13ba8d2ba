"""`trdeploy render-k8s`: parse options, call trdeploy.deploy.k8s.render, write, optionally validate (thin)."""

from __future__ import annotations

import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from trdeploy.cli._options import ForceOpt, JsonOpt
from trdeploy.errors import TrdeployError
from trdeploy.output import atomic_directory, emit, warn

HELP = """Kubernetes manifests for a DeploymentProfile: the vLLM server, its autoscaling, monitoring and alerts.

Writes a kustomize folder: a Deployment (or a LeaderWorkerSet when a replica needs more GPUs than a node has, with --multi-node), Service, model-cache PVC, KEDA ScaledObject on vLLM's own in-flight requests (or --autoscaler hpa), PodDisruptionBudget, ServiceMonitor, PrometheusRule alerts derived from the SLA, NetworkPolicy and a Grafana dashboard ConfigMap. Probes, /dev/shm, resources, drain and autoscaling numbers come from the profile; every option below overrides one.

The API key (on by default) and the Hugging Face token are read from Secrets by reference; create them first:
kubectl -n llm create secret generic NAME-api-key --from-literal=api-key=...

[bold]Examples[/]

  trdeploy render-k8s trdeploy.yaml -o k8s/ --validate

  trdeploy render-k8s recipes/llama-3-8b-awq-l40s.yaml -o - | kubectl apply -f -

  trdeploy render-k8s trdeploy.yaml -o out/ --namespace prod --image registry.example/trdeploy/llama-8b:1 --replicas-min 2 --replicas-max 6

  trdeploy render-k8s big.yaml -o out/ --multi-node --autoscaler hpa --json
"""


class ModelSource(str, Enum):
    pvc = "pvc"
    download = "download"


class Autoscaler(str, Enum):
    keda = "keda"
    hpa = "hpa"
    none = "none"


class Monitor(str, Enum):
    servicemonitor = "servicemonitor"
    podmonitor = "podmonitor"


def render_k8s(
    profile: Annotated[Path, typer.Argument(help="DeploymentProfile written by `trdeploy tune` (trdeploy.yaml).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (kustomize), or - for one multi-document YAML stream on stdout.", show_default=False)],
    name: Annotated[Optional[str], typer.Option("--name", help="Object name. \\[default: the profile's name]")] = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="Namespace for every object.")] = "llm",
    image: Annotated[Optional[str], typer.Option("--image", help="Serving image (e.g. what `trdeploy build` tagged). \\[default: vllm/vllm-openai:v<profile's vLLM>]")] = None,
    replicas_min: Annotated[Optional[int], typer.Option("--replicas-min", min=1, help="Fewest replicas (also the PDB floor). \\[default: planned replicas / peak factor]")] = None,
    replicas_max: Annotated[Optional[int], typer.Option("--replicas-max", min=1, help="Most replicas. \\[default: the profile's planned replicas at peak]")] = None,
    target_concurrency: Annotated[Optional[int], typer.Option("--target-concurrency", min=1, help="Requests in flight per replica to scale at. \\[default: where the profile's SLA holds]")] = None,
    gpus_per_node: Annotated[Optional[int], typer.Option("--gpus-per-node", min=1, help="GPUs in one node of the tier. \\[default: 8 for the known tiers]")] = None,
    multi_node: Annotated[bool, typer.Option("--multi-node", help="Allow a replica across nodes (LeaderWorkerSet, vLLM over Ray).")] = False,
    runtime_class: Annotated[Optional[str], typer.Option("--runtime-class", help="runtimeClassName for the pods (e.g. nvidia).")] = None,
    model_source: Annotated[ModelSource, typer.Option("--model-source", help="pvc: a ReadWriteMany cache volume shared by replicas; download: each pod fetches into an emptyDir.")] = ModelSource.pvc,
    storage_class: Annotated[Optional[str], typer.Option("--storage-class", help="storageClassName of the cache PVC (one that offers ReadWriteMany).")] = None,
    cache_size_gi: Annotated[Optional[int], typer.Option("--cache-size-gi", min=1, help="Cache volume size in GiB. \\[default: from the weights]")] = None,
    api_key: Annotated[bool, typer.Option("--api-key/--no-api-key", help="Require an API key on /v1 (VLLM_API_KEY from a Secret).")] = True,
    api_key_secret: Annotated[Optional[str], typer.Option("--api-key-secret", help="Secret holding key 'api-key'. \\[default: NAME-api-key]")] = None,
    hf_token_secret: Annotated[Optional[str], typer.Option("--hf-token-secret", help="Secret holding key 'token' (optional, for gated models). \\[default: NAME-hf-token]")] = None,
    autoscaler: Annotated[Autoscaler, typer.Option("--autoscaler", help="keda (ScaledObject on Prometheus), hpa (custom metric via prometheus-adapter) or none.")] = Autoscaler.keda,
    monitor: Annotated[Monitor, typer.Option("--monitor", help="prometheus-operator scrape object.")] = Monitor.servicemonitor,
    prometheus_url: Annotated[str, typer.Option("--prometheus-url", help="Prometheus the KEDA trigger queries.")] = "http://prometheus-operated.monitoring.svc:9090",
    monitoring_namespace: Annotated[str, typer.Option("--monitoring-namespace", help="Namespace allowed to scrape (NetworkPolicy).")] = "monitoring",
    port: Annotated[int, typer.Option("--port", help="vLLM's HTTP port.")] = 8000,
    validate: Annotated[bool, typer.Option("--validate", help="Check the output: kubernetes-validate strict (1.29-1.35), checkov, kubectl kustomize, PromQL parsing.")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    from trdeploy.deploy.k8s import RenderOptions, dump_stream, file_texts, render
    from trdeploy.deployment import DeploymentProfile

    to_stdout = str(output) == "-"
    if to_stdout and as_json:
        raise TrdeployError("--json and -o - both want stdout.", hint="Write a folder with -o DIR to get the JSON summary.")
    try:
        opts = RenderOptions(
            name=name, namespace=namespace, image=image, replicas_min=replicas_min, replicas_max=replicas_max,
            target_concurrency=target_concurrency, gpus_per_node=gpus_per_node, multi_node=multi_node,
            runtime_class=runtime_class, model_source=model_source.value, storage_class=storage_class,
            cache_size_gi=cache_size_gi, api_key=api_key, api_key_secret=api_key_secret, hf_token_secret=hf_token_secret,
            autoscaler=autoscaler.value, monitor=monitor.value, prometheus_url=prometheus_url,
            monitoring_namespace=monitoring_namespace, port=port,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TrdeployError(f"--{'-'.join(str(x) for x in first['loc']).replace('_', '-')}: {first['msg']}.", hint="See `trdeploy render-k8s --help`.") from exc
    prof = DeploymentProfile.load(profile)
    rendered = render(prof, opts)
    texts = file_texts(rendered)
    report = None

    def write(folder: Path) -> None:
        nonlocal report
        for fname, text in texts.items():
            (folder / fname).write_text(text, encoding="utf-8")
        if validate:
            from trdeploy.deploy.validate import validate_folder

            report = validate_folder(folder)

    if to_stdout:
        if validate:
            with tempfile.TemporaryDirectory(prefix="trdeploy-k8s-") as tmp:
                write(Path(tmp))
        for w in rendered.warnings:
            warn(w)
        sys.stdout.write(dump_stream(rendered))
        return
    with atomic_directory(output, force=force) as tmp:
        write(tmp)
    if not as_json:
        for w in rendered.warnings:
            warn(w)
    data = {
        "written": str(output),
        "files": list(texts),
        "facts": rendered.facts,
        "warnings": rendered.warnings,
        "validation": report.as_json() if report else None,
    }
    emit(data, as_json=as_json, render=lambda console: _render(console, data))


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
    table.add_row("drain / grace", f"{f['drain_s']} s / {f['termination_grace_s']} s")
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
    console.print(f"Wrote {data['written']} ({', '.join(data['files'])})")


def register(app: typer.Typer) -> None:
    app.command("render-k8s", help=HELP, no_args_is_help=True)(render_k8s)
