"""`trdeploy build`: the vLLM serving image for a DeploymentProfile (Dockerfile, context, image)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trdeploy.args import default, describe
from trdeploy.cli._options import ForceOpt, JsonOpt, choices, opt
from trdeploy.deploy.docker_build import BuildRequest
from trdeploy.deploy.image import BuildOptions
from trdeploy.errors import TrdeployError
from trdeploy.output import emit, err_console

BO = BuildOptions
BR = BuildRequest
ModelSource = choices("ModelSource", get_args(BO.model_fields["model_source"].annotation))


def build(
    profile: Annotated[Path, typer.Argument(help=describe(BR, "profile"), show_default=False)],
    tag: Annotated[str | None, opt(BR, "tag")] = default(BR, "tag"),
    push: Annotated[bool, opt(BR, "push")] = default(BR, "push"),
    dry_run: Annotated[bool, opt(BR, "dry_run")] = default(BR, "dry_run"),
    output: Annotated[Path | None, opt(BR, "output", "--output", "-o")] = default(BR, "output"),
    model_source: Annotated[ModelSource, opt(BO, "model_source")] = default(BO, "model_source"),
    model_dir: Annotated[Path | None, opt(BR, "model_dir")] = default(BR, "model_dir"),
    model_repo: Annotated[str | None, opt(BO, "model_repo")] = default(BO, "model_repo"),
    revision: Annotated[str | None, opt(BO, "revision")] = default(BO, "revision"),
    hf_token_file: Annotated[Path | None, opt(BR, "hf_token_file")] = default(BR, "hf_token_file"),
    base_image: Annotated[str | None, opt(BO, "base_image")] = default(BO, "base_image"),
    api_key: Annotated[bool, opt(BO, "api_key")] = default(BO, "api_key"),
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Render a build context for the profile and build the vLLM serving image.

    The entrypoint runs `vllm serve` with exactly the profile's engine arguments and served model name
    (arguments after the image name in `docker run` are appended and override, `--port` included: the
    HEALTHCHECK follows it); the API key comes from VLLM_API_KEY at run time. The base image is vLLM's
    release in the CUDA build the profile names (`tune --driver/--cuda`). Non-root user (any UID in
    group 0 works), HEALTHCHECK on /health with the profile's start-up budget, one cache volume at
    /cache, OCI and trdeploy labels. The default tag differs by --model-source. Build steps stream to
    stderr; --json prints the result on stdout. `render-k8s` runs this same image.

    Examples:

        trdeploy build trdeploy.yaml --tag registry.example.com/tr/llama3:v1 --push

        trdeploy build recipes/llama-3-8b-awq-l40s.yaml --model-source bake --model-dir ./Meta-Llama-3-8B-Instruct-awq

        HF_TOKEN=hf_... trdeploy build trdeploy.yaml --model-source download --revision main

        trdeploy build trdeploy.yaml --dry-run -o build-context/

        trdeploy build trdeploy.yaml --base-image registry.example.com/mirror/vllm-openai:v0.25.0 --json

        docker run --gpus all -e VLLM_API_KEY=sk-... -v vllm-cache:/cache -p 8000:8000 trdeploy/NAME:HASH-mount
    """
    from trdeploy.deploy.docker_build import build as run_build

    # A ValidationError here becomes main's one-line error naming the flag.
    req = BuildRequest(
        profile=profile,
        options=BuildOptions(
            model_source=_value(model_source),
            model_repo=model_repo,
            revision=revision,
            base_image=base_image,
            api_key=api_key,
        ),
        model_dir=model_dir,
        tag=tag,
        push=push,
        dry_run=dry_run,
        output=output,
        force=force,
        hf_token_file=hf_token_file,
    )
    if output is not None and not dry_run:
        raise TrdeployError("-o DIR is for --dry-run.", hint="Add --dry-run, or drop -o to build the image.")

    def show(line: str) -> None:
        err_console.print(f"[dim]{escape(line)}[/]", highlight=False, soft_wrap=True)

    result = run_build(req, on_line=show)
    emit(result.as_json(), as_json=as_json, render=lambda console: _render(console, result))


def _value(choice: Any) -> Any:
    return choice.value if isinstance(choice, Enum) else choice


def _render(console: Console, result) -> None:
    c = result.context
    table = Table(show_header=False, box=None)
    table.add_column("key", style="bold")
    table.add_column("value")
    if result.image_id:
        table.add_row("image", f"{result.tag}  ({result.image_id[:19]})")
        table.add_row("size", f"{result.size_bytes / 1e6:,.1f} MB, built in {result.build_seconds:.1f} s ({result.builder} builder)")
        if result.pushed:
            table.add_row("pushed", result.tag)
    else:
        table.add_row("context", f"{result.context_dir} ({', '.join(sorted(c.files))})")
    table.add_row("base", c.base_image + f"  (CUDA {c.cuda})")
    table.add_row("model", f"{c.model_source}" + (f" -> {c.model_in_image}" if c.model_in_image else ""))
    table.add_row("health", f"/health, start period {c.start_period_s} s")
    console.print(table)
    console.print("[bold]Runs:[/]")
    console.print(" ".join(c.argv), soft_wrap=True, highlight=False, markup=False)
    for note in c.notes:
        console.print(f"[dim]{escape(note)}[/]")


def register(app: typer.Typer) -> None:
    app.command("build", no_args_is_help=True)(build)
