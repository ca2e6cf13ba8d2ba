"""Values a Helm chart may change, carried through the object builders as data.

The builders (objects.py, observability.py) take a Plan. For the kustomize folder its fields are plain
numbers and strings. For the Helm chart (helm.py) the same builders run over a Plan whose knob fields hold
*tagged* values: an int or a str that is the default value and also carries the Go-template expression that
computes it from `.Values` (or `.Release`). The few operations the builders apply to them (`ceil_div`, `add`,
`text`, `truncate`, ...) carry the expression along, so a chart template is the very object the folder holds,
with `{{ ... }}` wherever a value flows; with default values it renders to the same objects.

Structure a value can switch on or off is expressed with three markers: `Optional` (a mapping key present only
when the value is set), `merged` (a mapping extended by a map value) and `extended` (a list extended by one item
per element of a list value). In plain mode they are plain data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Stand-ins for the release's name and namespace in a Plan rendered for the chart: the builders put them into
# names, selectors and PromQL with ordinary string formatting; the chart writer replaces them in the text.
RELEASE_NAME = "zzreleasenamezz"
RELEASE_NAMESPACE = "zzreleasenszz"
RELEASE = {RELEASE_NAME: "$.Release.Name", RELEASE_NAMESPACE: "$.Release.Namespace"}
_RELEASE_RE = re.compile("|".join(RELEASE))


class Tagged:
    """A value that also knows its Go-template expression."""

    expr: str


def _go(x: Any) -> str:
    """`x` as a Go-template operand: a tagged value's expression (parenthesised), else a literal (a string that holds
    the release stand-ins becomes a `print` of its pieces)."""
    if isinstance(x, Tagged):
        return x.expr if " " not in x.expr else f"({x.expr})"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(int(x))
    if isinstance(x, str):
        if not _RELEASE_RE.search(x):
            return json.dumps(x)
        pieces: list[str] = []
        at = 0
        for hit in _RELEASE_RE.finditer(x):
            if hit.start() > at:
                pieces.append(json.dumps(x[at:hit.start()]))
            pieces.append(RELEASE[hit.group()])
            at = hit.end()
        if at < len(x):
            pieces.append(json.dumps(x[at:]))
        return "(print " + " ".join(pieces) + ")"
    raise TypeError(f"no Go-template literal for {type(x).__name__}")


class TInt(int, Tagged):
    def __new__(cls, value: int, expr: str) -> TInt:
        obj = int.__new__(cls, int(value))
        obj.expr = expr
        return obj

    def __add__(self, other: Any) -> Any:
        return add(self, other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> Any:
        return sub(self, other)

    def __rsub__(self, other: Any) -> Any:
        return sub(other, self)

    def __mul__(self, other: Any) -> Any:
        return TInt(int(self) * int(other), f"mul {_go(self)} {_go(other)}") if isinstance(other, int) else NotImplemented

    __rmul__ = __mul__


class TStr(str, Tagged):
    def __new__(cls, value: str, expr: str) -> TStr:
        obj = str.__new__(cls, value)
        obj.expr = expr
        return obj


class TBool(Tagged):
    """bool cannot be subclassed: a stand-in that tests as its value."""

    def __init__(self, value: bool, expr: str) -> None:
        self.value = bool(value)
        self.expr = expr

    def __bool__(self) -> bool:
        return self.value

    def __eq__(self, other: object) -> bool:
        return self.value == other

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"TBool({self.value}, {self.expr!r})"


class Optional(Tagged):
    """A mapping value that may be absent: the key is written only when `.Values` sets it."""

    def __init__(self, default: Any, expr: str) -> None:
        self.default = default
        self.expr = expr


class Cond(Tagged):
    """A mapping value present only while a condition holds (`when`)."""

    def __init__(self, holds: bool, value: Any, expr: str) -> None:
        self.holds = holds
        self.value = value
        self.expr = expr


class TMap(dict, Tagged):
    """A map value (its entries are the default) merged into a mapping by `merged`."""

    def __init__(self, default: Mapping[str, str], expr: str) -> None:
        super().__init__(default)
        self.expr = expr


class TList(tuple, Tagged):
    """A list value (its items are the default) that extends a list through `extended`."""

    def __new__(cls, default: Sequence[Any], expr: str) -> TList:
        obj = tuple.__new__(cls, default)
        obj.expr = expr
        return obj


class Splice:
    """Where a TMap or a TList goes in the chart (a mapping key, a list item)."""

    def __init__(self, value: TMap | TList, item: Callable[[Any], Any] | None = None) -> None:
        self.value = value
        self.item = item


class JsonText(str):
    """A string that is JSON of `obj` (a Grafana dashboard): the chart templates the values inside it."""

    def __new__(cls, obj: Any) -> JsonText:
        text = json.dumps(plain(obj), indent=1, sort_keys=True)
        inst = str.__new__(cls, text)
        inst.obj = obj
        return inst


# ---------------------------------------------------------------------------------------------
# Operations the builders apply (plain in, plain out; tagged in, tagged out)


def _tagged(*xs: Any) -> bool:
    return any(isinstance(x, Tagged) for x in xs)


def add(*xs: int) -> int:
    total = sum(int(x) for x in xs)
    return TInt(total, "add " + " ".join(_go(x) for x in xs)) if _tagged(*xs) else total


def sub(a: int, b: int) -> int:
    return TInt(int(a) - int(b), f"sub {_go(a)} {_go(b)}") if _tagged(a, b) else int(a) - int(b)


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for a positive divisor given as a plain int."""
    value = -(-int(a) // b)
    return TInt(value, f"div (add {_go(a)} {b - 1}) {b}") if _tagged(a) else value


def maximum(a: int, b: int) -> int:
    return TInt(max(int(a), int(b)), f"max {_go(a)} {_go(b)}") if _tagged(a, b) else max(int(a), int(b))


def minimum(a: int, b: int) -> int:
    return TInt(min(int(a), int(b)), f"min {_go(a)} {_go(b)}") if _tagged(a, b) else min(int(a), int(b))


def as_str(x: Any) -> str:
    """str(x); a tagged number becomes a tagged string (a Kubernetes quantity, a KEDA threshold)."""
    return TStr(str(int(x)) if isinstance(x, int) else str(x), x.expr) if isinstance(x, Tagged) else str(x)


def text(template: str, *args: Any) -> str:
    """template.format(*args) with "{}" placeholders; with a tagged argument, a tagged string (Go printf)."""
    value = template.format(*(int(a) if isinstance(a, int) else a for a in args))
    if not _tagged(*args):
        return value
    go_format = json.dumps(template.replace("%", "%%").replace("{}", "%v"))
    return TStr(value, "printf " + go_format + "".join(" " + _go(a) for a in args))


def truncate(s: str, n: int) -> str:
    return TStr(s[:n], f"trunc {n} {_go(s)}") if isinstance(s, Tagged) else s[:n]


def negate(b: Any) -> Any:
    return TBool(not b, f"not {_go(b)}") if isinstance(b, Tagged) else not b


def when(holds: Any, value: Any) -> Any:
    """`value` where a mapping entry exists only while `holds`: in plain mode the caller gets None when it does not."""
    if isinstance(holds, Tagged):
        return Cond(bool(holds), value, holds.expr)
    return value if holds else None


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """base with extra's entries (a TMap: spliced in by the chart)."""
    if isinstance(extra, TMap):
        return {**base, Splice(extra): None}
    return {**base, **extra}


def extended(items: list[Any], extra: Sequence[Any], item: Callable[[Any], Any]) -> list[Any]:
    """items, then item(x) for every x of extra (a TList: a `range` in the chart)."""
    if isinstance(extra, TList):
        return [*items, Splice(extra, item)]
    return [*items, *(item(x) for x in extra)]


def plain(obj: Any) -> Any:
    """The default: every tagged value as its plain value, optional keys with no default dropped."""
    if isinstance(obj, TBool):
        return obj.value
    if isinstance(obj, TInt):
        return int(obj)
    if isinstance(obj, JsonText):
        return str(obj)
    if isinstance(obj, TStr):
        return str(obj)
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            if isinstance(k, Splice):
                out.update(plain(dict(k.value)))
            elif isinstance(v, Optional):
                if v.default is not None:
                    out[k] = plain(v.default)
            elif isinstance(v, Cond):
                if v.holds:
                    out[k] = plain(v.value)
            else:
                out[k] = plain(v)
        return out
    if isinstance(obj, (list, tuple)):
        out_list: list[Any] = []
        for x in obj:
            if isinstance(x, Splice):
                out_list.extend(plain(x.item(v)) for v in x.value)  # type: ignore[misc]
            else:
                out_list.append(plain(x))
        return out_list
    return obj
