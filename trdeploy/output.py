"""Output at the edges: human tables on stdout, `--json` on stdout, progress on stderr, atomic files."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from trdeploy.errors import TrdeployError

# Human output on stdout; progress and warnings on stderr so `--json` stdout stays parseable.
console = Console(soft_wrap=False)
err_console = Console(stderr=True)


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=_json_default)


def emit(data: Any, *, as_json: bool, render: Callable[[Console], None]) -> None:
    """Print `data` as JSON (machines) or call `render` with the console (humans)."""
    if as_json:
        sys.stdout.write(to_json(data) + "\n")
        sys.stdout.flush()
    else:
        render(console)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}")


def progress(*, transient: bool = True, disable: bool = False) -> Progress:
    """A progress bar on stderr for anything that takes seconds."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=disable or not err_console.is_terminal,
    )


def ensure_writable(path: Path, *, force: bool) -> None:
    """Refuse to overwrite an existing path unless `force`."""
    if path.exists() and not force:
        raise TrdeployError(f"{path} already exists.", hint="Pass --force to overwrite it, or choose another path.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise TrdeployError(f"The folder {parent} does not exist.", hint="Create it first or choose another path.")


def write_atomic(path: str | Path, content: str | bytes, *, force: bool = False) -> Path:
    """Write a file through a temporary path in the same folder and rename it into place."""
    path = Path(path)
    ensure_writable(path, force=force)
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_directory(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; move it into place only if the block succeeds.

    An interrupted or failed run leaves no folder at `path` (and nothing that looks like output).
    """
    path = Path(path)
    ensure_writable(path, force=force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent if str(path.parent) else "."))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        backup = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, backup)
        os.replace(tmp, path)
        if backup.is_dir():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            backup.unlink(missing_ok=True)
    else:
        os.replace(tmp, path)
