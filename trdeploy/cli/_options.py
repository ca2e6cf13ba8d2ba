"""Option types shared by every command (one place, like huggingface_hub's cli/_cli_utils.py)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from trdeploy.args import default_note, describe, flag

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON (stable keys) instead of tables.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing output.")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the result.")]


def opt(model: type[BaseModel], name: str, *flags: str, **kwargs: Any) -> Any:
    """A Typer option for `model.name`: its flag(s) and help come from the argument model (the
    default stays in the signature: `= default(Model, "name")`)."""
    text = describe(model, name)
    note = default_note(model, name)
    if note:
        text += f" \\[default: {note}]"
    return typer.Option(*(flags or (flag(model, name),)), help=text, **kwargs)


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum for Typer's choice list, from the allowed values of one Literal."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]
