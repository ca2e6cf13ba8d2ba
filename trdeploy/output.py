"""Output at the edges: human tables on stdout, `--json` on stdout, progress on stderr, atomic files."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
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


# 128 + SIGPIPE: what a shell reports for a writer whose reader went away (`trdeploy ... | head -c1`),
# kept apart from bench's 1 (SLA failed).
EXIT_BROKEN_PIPE = 141


def silence_stdout() -> None:
    """Point stdout's descriptor at /dev/null: what is still buffered for a closed or full stdout
    would fail again at interpreter exit ("Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture stdout)
        pass


def broken_pipe_exit() -> None:
    """The reader of stdout went away: end quietly, as `cat` or `grep` do (no traceback, no message)."""
    silence_stdout()
    raise SystemExit(EXIT_BROKEN_PIPE)


# rich's own handler exits 1 (bench's "SLA failed"); every closed pipe ends the same way instead.
console.on_broken_pipe = broken_pipe_exit  # type: ignore[method-assign]


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None: JSON has no NaN (json.dumps would
    write the non-standard `NaN`/`Infinity`, which strict parsers such as jq and JavaScript reject)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def redact_url(url: str) -> str:
    """`url` with any user name and password replaced by `***` (for reports, messages and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The credentials a URL carries (user info, password), to scrub from anything written."""
    from urllib.parse import unquote, urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    if "@" not in parts.netloc:
        return []
    userinfo = parts.netloc.rsplit("@", 1)[0]
    found = [userinfo, unquote(userinfo)]
    if parts.password:
        found += [parts.password, unquote(parts.password)]
    return [x for x in found if x]


def scrub(value: Any, secrets: list[str]) -> Any:
    """`value` (strings, lists, dicts) with every occurrence of each secret in a text value replaced by `***`.
    Keys are left alone, and so are secrets shorter than 4 characters (replacing those would mangle
    ordinary text; the URL itself is redacted whole by `redact_url` wherever it is written)."""
    secrets = sorted({x for x in secrets if len(x) >= 4}, key=len, reverse=True)
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, secrets) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return finite(value.model_dump(mode="json"))
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return finite(value.item())
    if isinstance(value, set | frozenset | tuple):
        return finite(list(value))
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def to_json(data: Any) -> str:
    """Strict JSON: NaN and infinities become null (allow_nan=False guards anything that slips by)."""
    return json.dumps(finite(data), indent=2, ensure_ascii=False, default=_json_default, allow_nan=False)


def emit(data: Any, *, as_json: bool, render: Callable[[Console], None]) -> None:
    """Print `data` as JSON (machines) or call `render` with the console (humans)."""
    if as_json:
        try:
            sys.stdout.write(to_json(data) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            broken_pipe_exit()
    else:
        render(console)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)  # one line a warning, for logs and greps


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


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def ensure_writable(path: Path, *, force: bool, folder: bool = False) -> None:
    """Refuse, before any work is done, an output that cannot or must not be written.

    An existing path needs `force`; even then a symbolic link, a device, a FIFO or a socket is never
    replaced (nor written through), and a file output never replaces a folder (nor a folder output a
    file). The parent folder must exist and take a new file (checked by creating one), so a run of
    minutes is not lost at the end to a read-only or missing folder.
    """
    path = Path(path)
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        raise TrdeployError(f"Cannot use {path} as output: {exc.strerror or exc}.", hint="Choose another path.") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise TrdeployError(f"{path} is a symbolic link; trdeploy does not write through links.", hint="Pass the link's target, or another path.")
        wanted = stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)
        if not wanted:
            what = _kind_of(st.st_mode) if not stat.S_ISREG(st.st_mode) else "a file"
            raise TrdeployError(f"{path} is {what}, not {'a folder' if folder else 'a file'}; it is never replaced, even with --force.", hint="Choose another path.")
        if not force:
            raise TrdeployError(f"{path} already exists.", hint="Pass --force to overwrite it, or choose another path.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise TrdeployError(f"The folder {parent} does not exist.", hint="Create it first or choose another path.")
    if not parent.is_dir():
        raise TrdeployError(f"{parent} is not a folder, so {path} cannot be written.", hint="Choose another path.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TrdeployError(f"Cannot write to the folder {parent}: {exc.strerror or exc}.", hint="Choose a folder you can write to.") from None


def refuse_input_as_output(output: Path | None, inputs: dict[str, Any] | list[tuple[str, Any]]) -> None:
    """Refuse `-o` naming one of the command's input files (it would be replaced by the report).
    `inputs` maps option -> value, or lists (option, value) pairs for a repeated option."""
    if output is None:
        return
    for option, value in inputs.items() if isinstance(inputs, dict) else inputs:
        if value is None:
            continue
        candidate = Path(str(value))
        try:
            same = candidate.exists() and Path(output).exists() and os.path.samefile(candidate, output)
        except OSError:
            same = False
        if same or Path(output).resolve() == candidate.resolve():
            raise TrdeployError(f"-o {output} is the {option} input; the output would replace it.", hint="Choose another output path.")


def write_atomic(path: str | Path, content: str | bytes, *, force: bool = False) -> Path:
    """Write a file through a temporary path in the same folder and rename it into place."""
    path = Path(path)
    ensure_writable(path, force=force)
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as exc:
        raise TrdeployError(f"Cannot write {path}: {exc.strerror or exc}.", hint="Choose a folder you can write to.") from None
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
    except OSError as exc:  # a full disk, a quota, a folder made read-only meanwhile
        Path(tmp).unlink(missing_ok=True)
        raise TrdeployError(f"Cannot write {path}: {exc.strerror or exc}.", hint="Free space or choose another path.") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


OUTPUT_MARKER = ".trdeploy-output"  # in every folder trdeploy writes: the files it wrote there


def _folder_target(path: Path) -> Path:
    """`path` made absolute without following its last component (`.`, `DIR/sub/..` and the like become the
    folder they name, so the temporary folder lands beside it, not inside it)."""
    target = Path(os.path.abspath(path))
    if target == Path(target.anchor):
        raise TrdeployError(f"-o {path} names the file system root.", hint="Choose a new folder for the output.")
    return target


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _foreign_entries(target: Path) -> list[str]:
    """Entries of an existing output folder that trdeploy did not write there (per its marker)."""
    marker = target / OUTPUT_MARKER
    try:
        listed = set(json.loads(marker.read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        listed = None
    foreign: list[str] = []
    for root, dirs, files in os.walk(target):
        for name in dirs + files:
            full = Path(root) / name
            rel = full.relative_to(target).as_posix()
            if rel == OUTPUT_MARKER or (full.is_dir() and not full.is_symlink()):
                continue
            if listed is None or rel not in listed:
                foreign.append(rel)
                if len(foreign) >= 3:
                    return foreign
    if listed is None and not foreign and any(target.iterdir()):
        foreign.append("(no trdeploy marker)")
    return foreign


@contextmanager
def atomic_directory(path: str | Path, *, force: bool = False, inputs: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; move it into place only if the block succeeds.

    Nothing the command did not create is ever deleted or replaced: `-o` that contains one of `inputs`
    (option -> path) is refused, and with `--force` an existing folder is replaced only when every entry in
    it is one trdeploy wrote there (listed in its `.trdeploy-output` marker). An interrupted or failed run
    leaves no temporary folder and no half-written output.
    """
    target = _folder_target(Path(path))
    for option, value in (inputs or {}).items():
        if value is None:
            continue
        candidate = Path(os.path.abspath(str(value)))
        for a, b in ((candidate, target), (Path(os.path.realpath(candidate)), Path(os.path.realpath(target)))):
            if _inside(a, b):
                raise TrdeployError(
                    f"-o {path} contains the {option} input {value}; the output folder would replace it.",
                    hint="Choose an output folder that holds none of the command's inputs.",
                )
    ensure_writable(target, force=force, folder=True)
    if target.exists():
        if os.path.ismount(target):
            raise TrdeployError(f"-o {path} is a mount point, which cannot be replaced.", hint="Choose a new folder inside it.")
        foreign = _foreign_entries(target)
        if foreign:
            raise TrdeployError(
                f"-o {path} holds files trdeploy did not write there ({', '.join(foreign)}); --force only replaces a folder trdeploy made.",
                hint="Choose a new or empty folder, or move those files away first.",
            )
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as exc:
        raise TrdeployError(f"Cannot create {path}: {exc.strerror or exc}.", hint="Choose a folder you can write to.") from None
    backup: Path | None = None
    try:
        yield tmp
        try:
            written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if not p.is_dir() or p.is_symlink())
            (tmp / OUTPUT_MARKER).write_text(json.dumps({"written_by": "trdeploy", "files": written}, indent=1) + "\n", encoding="utf-8")
            if target.exists():
                backup = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, backup)
                try:
                    os.replace(tmp, target)
                except OSError:
                    os.replace(backup, target)  # put the old output back
                    backup = None
                    raise
            else:
                os.replace(tmp, target)
        except OSError as exc:
            raise TrdeployError(f"Cannot write {path}: {exc.strerror or exc}.", hint="Free space or choose another folder.") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if backup is not None and backup.exists():
            shutil.rmtree(backup, ignore_errors=True)
