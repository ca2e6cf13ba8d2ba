"""Reading untrusted input: limits checked before parsing, parsers that cannot be made to explode.

Profiles are files people share, copy and edit by hand; corpora, prompt files, model configs and
`--extra-body` come from anywhere. Everything read here is bounded:
- size: a file is refused before it is read when it is larger than the limit for its kind;
- depth: YAML nesting is counted while composing (before any object is built), JSON nesting that
  exhausts the parser's recursion is one line, not a traceback;
- aliases: a YAML alias (`*name`) is refused outright, so neither a billion-laughs expansion nor a
  recursive alias can be built (tune never writes one);
- numbers: an integer too long for Python to convert (over 4,300 digits) is one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.composer import Composer
from yaml.nodes import Node

from trdeploy.errors import TrdeployError

M = TypeVar("M", bound=BaseModel)

MAX_PROFILE_BYTES = 1024 * 1024  # a profile tune writes is about 6 KB
MAX_YAML_DEPTH = 32  # a profile nests 4 levels deep
MAX_JSON_DEPTH = 64


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and counts nesting while composing."""

    def __init__(self, stream: str, max_depth: int) -> None:
        super().__init__(stream)
        self._depth = 0
        self._max_depth = max_depth

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"a YAML alias (*{event.anchor}) at line {event.start_mark.line + 1}; aliases are not accepted")
        self._depth += 1
        try:
            if self._depth > self._max_depth:
                mark = self.peek_event().start_mark
                raise _Refused(f"nesting deeper than {self._max_depth} levels at line {mark.line + 1}")
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1


class _Refused(Exception):
    pass


def read_limited(path: Path, *, limit: int, what: str, hint: str) -> str:
    """The text of `path` (UTF-8), refused in one line when larger than `limit` bytes."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise TrdeployError(f"{path} is {size:,} bytes, more than a {what} may be ({limit:,}).", hint=hint)
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise TrdeployError(f"Cannot read {path}: {exc.strerror or exc}.", hint=hint) from None
    if len(data) > limit:  # grew, or a special file that reports no size
        raise TrdeployError(f"{path} is more than {limit:,} bytes, more than a {what} may be.", hint=hint)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrdeployError(f"{path} is not UTF-8 text (byte {exc.start}).", hint=hint) from None


def load_yaml(text: str, *, where: str, hint: str, max_depth: int = MAX_YAML_DEPTH) -> Any:
    """One YAML document, with no aliases and at most `max_depth` levels of nesting."""
    loader = _LimitedLoader(text, max_depth)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        raise TrdeployError(f"{where} holds {exc}.", hint=hint) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise TrdeployError(f"{where} is not valid YAML{at} ({exc.__class__.__name__}).", hint=hint) from None
    except (ValueError, RecursionError, OverflowError) as exc:  # an integer of over 4,300 digits, a float that overflows
        raise TrdeployError(f"{where} holds a value YAML cannot convert ({str(exc)[:80]}).", hint=hint) from None
    finally:
        loader.dispose()


def validate_document(model: type[M], data: Any, *, where: str, what: str, hint: str) -> M:
    """`model` validated from parsed `data`; pydantic's first complaint as the one line:
    `WHERE is not a valid WHAT: field.path: message.`"""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise TrdeployError(f"{where} is not a valid {what}: {loc}: {msg}.", hint=hint) from None


def loads_json(text: str | bytes, *, where: str, hint: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON, with nesting deeper than `max_depth` and unconvertible numbers as one-line errors."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise TrdeployError(f"{where} is nested too deeply to read.", hint=hint) from None
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
        raise TrdeployError(f"{where} is not valid JSON ({str(exc)[:100]}).", hint=hint) from None
    if json_depth(value) > max_depth:
        raise TrdeployError(f"{where} nests more than {max_depth} levels deep.", hint=hint)
    return value


def json_depth(value: Any, limit: int = 10_000) -> int:
    """Nesting depth of a parsed JSON/YAML value (iterative: no recursion to exhaust)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest
