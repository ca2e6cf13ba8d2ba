"""`trdeploy build`: the vLLM serving image for a DeploymentProfile (Dockerfile, context, image)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trdeploy.cli._options import ForceOpt, JsonOpt
from trdeploy.errors import TrdeployError
from trdeploy.output import emit, err_console


class ModelSource(str, Enum):
    mount = "mount"
    bake = "bake"
    download = "download"


class Cuda(str, Enum):
    cu130 = "13.0"
    cu129 = "12.9"


def build(
    profile: Annotated[Path, typer.Argument(help="DeploymentProfile written by `trdeploy tune` (trdeploy.yaml).", show_default=False)],
    tag: Annotated[Optional[str], typer.Option("--tag", "-t", help="Image tag. \\[default: trdeploy/PROFILE-NAME:PROFILE-HASH]")] = None,
    push: Annotated[bool, typer.Option("--push", help="Push the tag after the build (credentials from the docker config).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write the build context to -o DIR; build nothing, no engine needed.")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Dry run: the folder to write the context into.")] = None,
    model_source: Annotated[ModelSource, typer.Option("--model-source", help="mount: no weights in the image (HF_HOME on a volume); bake: copy --model-dir into the last layer; download: fetch from the hub at build time (token as a BuildKit secret).")] = ModelSource.mount,
    model_dir: Annotated[Optional[Path], typer.Option("--model-dir", help="bake: the local checkpoint folder. \\[default: the profile's model path]")] = None,
    model_repo: Annotated[Optional[str], typer.Option("--model-repo", help="download: the hub repository. \\[default: the profile's model, if a hub id]")] = None,
    revision: Annotated[Optional[str], typer.Option("--revision", help="download: the hub revision (branch, tag or commit); recorded in the labels. \\[default: main]")] = None,
    hf_token_file: Annotated[Optional[Path], typer.Option("--hf-token-file", help="download: a file holding the hub token. \\[default: $HF_TOKEN]")] = None,
    base_image: Annotated[Optional[str], typer.Option("--base-image", help="Base image instead of vllm/vllm-openai:vVERSION[-cuXYZ]; IMAGE:TAG or IMAGE@sha256:DIGEST.")] = None,
    cuda: Annotated[Optional[Cuda], typer.Option("--cuda", help="CUDA build of the base image. \\[default: the newest the tier's driver runs]")] = None,
    driver: Annotated[Optional[str], typer.Option("--driver", help="NVIDIA driver on the nodes (nvidia-smi), to pick the CUDA build. \\[default: assumed per GPU tier]")] = None,
    served_model_name: Annotated[Optional[str], typer.Option("--served-model-name", help="Name clients send. \\[default: the profile's, else its model id]")] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port vLLM listens on in the container.")] = 8000,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Render a build context for the profile and build the vLLM serving image.

    The entrypoint runs `vllm serve` with exactly the profile's engine arguments (arguments after the
    image name in `docker run` are appended and override); the API key comes from VLLM_API_KEY at run
    time. Non-root user (any UID works), HEALTHCHECK on /health, one cache volume at /cache, OCI and
    trdeploy labels. Build steps stream to stderr; --json prints the result on stdout.

    Examples:

        trdeploy build trdeploy.yaml --tag registry.example.com/tr/llama3:v1 --push

        trdeploy build recipes/llama-3-8b-awq-l40s.yaml --model-source bake --model-dir ./Meta-Llama-3-8B-Instruct-awq

        HF_TOKEN=hf_... trdeploy build trdeploy.yaml --model-source download --revision main

        trdeploy build trdeploy.yaml --dry-run -o build-context/ --driver 575.57.08

        trdeploy build trdeploy.yaml --base-image vllm/vllm-openai@sha256:<digest> --cuda 12.9 --json
    """
    from trdeploy.deploy.docker_build import BuildRequest
    from trdeploy.deploy.docker_build import build as run_build
    from trdeploy.deploy.image import BuildOptions

    try:
        req = BuildRequest(
            profile=profile,
            options=BuildOptions(
                model_source=model_source.value,
                model_repo=model_repo,
                revision=revision,
                base_image=base_image,
                cuda=cuda.value if cuda else None,
                driver=driver,
                served_model_name=served_model_name,
                port=port,
            ),
            model_dir=model_dir,
            tag=tag,
            push=push,
            dry_run=dry_run,
            output=output,
            force=force,
            hf_token_file=hf_token_file,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TrdeployError(f"Invalid option {'.'.join(map(str, first['loc']))}: {first['msg']}.") from exc
    if output is not None and not dry_run:
        raise TrdeployError("-o DIR is for --dry-run.", hint="Add --dry-run, or drop -o to build the image.")

    def show(line: str) -> None:
        err_console.print(f"[dim]{escape(line)}[/]", highlight=False, soft_wrap=True)

    result = run_build(req, on_line=show)
    emit(result.as_json(), as_json=as_json, render=lambda console: _render(console, result))


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
    table.add_row("base", c.base_image + (f"  (CUDA {c.cuda})" if c.cuda else ""))
    table.add_row("model", f"{c.model_source}" + (f" -> {c.model_in_image}" if c.model_in_image else ""))
    table.add_row("health", f"/health, start period {c.start_period_s} s")
    console.print(table)
    console.print("[bold]Runs:[/]")
    console.print(" ".join(c.argv), soft_wrap=True, highlight=False, markup=False)
    for note in c.notes:
        console.print(f"[dim]{escape(note)}[/]")


def register(app: typer.Typer) -> None:
    app.command("build", no_args_is_help=True)(build)
