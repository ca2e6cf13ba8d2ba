"""Option types shared by every command (one place, like huggingface_hub's cli/_cli_utils.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON (stable keys) instead of tables.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing output.")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the result.")]
ProfileArg = Annotated[
    Path,
    typer.Option("--profile", "-p", help="DeploymentProfile written by `trdeploy tune` (trdeploy.yaml).", show_default=True),
]
