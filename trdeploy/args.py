"""Typed command arguments: one pydantic model per command is the single source of every option's
default, range and allowed values (like vLLM's EngineArgs). The library functions take the model; the
Typer options read their defaults and help from it (`trdeploy.cli._options.opt`); a ValidationError
becomes the one-line error once, in the CLI entry point (`validation_error`).

Every float rejects NaN and infinity (`allow_inf_nan=False`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from trdeploy.errors import TrdeployError

_MODELS: dict[str, type[Args]] = {}


class Args(BaseModel):
    """Base of the argument models. `command` names the CLI command; a field's flag is `--field-name`
    unless `arg(flag=...)` says otherwise."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)
    command: ClassVar[str] = ""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _MODELS[cls.__name__] = cls


def arg(default: Any = None, *, help: str, flag: str | None = None, default_note: str | None = None, **constraints: Any) -> Any:
    """A field of an argument model: its help, its CLI flag and, where the default is derived later
    (None here), what the default is (`default_note`, shown in `--help`)."""
    extra = {k: v for k, v in (("flag", flag), ("default_note", default_note)) if v is not None}
    return Field(default, description=help, json_schema_extra=extra or None, **constraints)


def _field(model: type[BaseModel], name: str) -> FieldInfo:
    return model.model_fields[name]


def _extra(model: type[BaseModel], name: str) -> dict[str, Any]:
    extra = _field(model, name).json_schema_extra
    return extra if isinstance(extra, dict) else {}


def flag(model: type[BaseModel], name: str) -> str:
    return str(_extra(model, name).get("flag") or "--" + name.replace("_", "-"))


def default(model: type[BaseModel], name: str) -> Any:
    return _field(model, name).default


def describe(model: type[BaseModel], name: str) -> str:
    return _field(model, name).description or ""


def default_note(model: type[BaseModel], name: str) -> str | None:
    note = _extra(model, name).get("default_note")
    return str(note) if note is not None else None


def validation_error(exc: ValidationError) -> TrdeployError:
    """The one line for the first problem pydantic found, naming the option as the user typed it."""
    first = exc.errors()[0]
    model = _MODELS.get(exc.title)
    loc = first.get("loc") or ()
    msg = str(first.get("msg", "is not valid")).removeprefix("Value error, ")
    if model is not None and loc and loc[0] in model.model_fields:
        what = flag(model, str(loc[0]))
        got = first.get("input")
        text = f"{what}: {msg[:1].lower()}{msg[1:]} (got {got!r})." if "input" in first else f"{what}: {msg}."
        hint = f"See `trdeploy {model.command} --help`." if model.command else "See --help."
        return TrdeployError(text, hint=hint)
    where = ".".join(str(p) for p in loc)
    return TrdeployError(f"{exc.title}{': ' + where if where else ''}: {msg}.", hint="See --help.")
