"""In-process CLI runner for the robustness and property tests (fast: no interpreter start-up)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass


@dataclass
class CliResult:
    code: int | str | None
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def invoke(*args: str) -> CliResult:
    """Run trdeploy.cli.main in-process, capturing stdout, stderr and the exit code.

    Any exception other than SystemExit escaping main is a bug; it is reported as the code
    'EXC <type>: <message>' so assertions show it."""
    from trdeploy.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:
            code = f"EXC {type(exc).__name__}: {exc}"
    return CliResult(code if code is not None else 0, out.getvalue(), err.getvalue())


def assert_one_line_error(result: CliResult, *, contains: str | None = None) -> None:
    assert result.code == 2, (result.code, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.error_lines
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    if contains is not None:
        assert contains in lines[0], lines[0]
