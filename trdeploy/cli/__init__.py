"""The `trdeploy` command line. Thin: parse options, call one core function, print.

Each command lives in its own module under trdeploy/cli/ and delegates to a library function
that is usable without the CLI. Errors the user can fix are `TrdeployError`: one line on stderr,
exit code 2, no traceback unless `--debug` (or TRDEPLOY_DEBUG=1).
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import Annotated

import typer
from pydantic import ValidationError

try:  # typer >= 0.22 vendors click as typer._click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as _click_exc

from rich.markup import escape

from trdeploy import __version__
from trdeploy.args import validation_error
from trdeploy.errors import TrdeployError
from trdeploy.output import broken_pipe_exit, err_console, silence_stdout

app = typer.Typer(
    name="trdeploy",
    help=(
        "From a Turkish Llama-3 checkpoint to a vLLM service that meets its SLA.\n\n"
        "profile: what Turkish text costs a tokenizer.  tune: exact vLLM engine arguments for a GPU tier (writes the "
        "DeploymentProfile).  quantize: AWQ 4-bit with Turkish calibration.  build: the serving image for a profile.  "
        "render-k8s: Kubernetes manifests that run that image.  bench: measure a live endpoint against the SLA.  "
        "calibrate: fit tune's predictions to your GPU (measured, with their held-out error)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": os.environ.get("TRDEPLOY_DEBUG", "") not in ("", "0")}


def _version(value: bool) -> None:
    if value:
        try:
            print(f"trdeploy {__version__}", flush=True)
        except BrokenPipeError:
            broken_pipe_exit()
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    if debug:
        _state["debug"] = True


def _register() -> None:
    # Imported here so each command module can import the app-level helpers above without cycles.
    from trdeploy.cli import bench, build, calibrate, profile, quantize, tune

    for module in (profile, tune, quantize, bench, calibrate, build):
        module.register(app)
    from trdeploy.cli import render_k8s

    render_k8s.register(app)


_register()


def _command():
    """The click command behind `app`, with no command printing its full help for missing arguments:
    a bare `trdeploy` or `trdeploy tune` is a usage error (one line and the usage hint on stderr,
    nothing on stdout), like any other; `-h` prints the help."""
    import typer.main

    command = typer.main.get_command(app)
    command.no_args_is_help = False
    for sub in getattr(command, "commands", {}).values():
        sub.no_args_is_help = False
    return command


# What a write to a full, over-quota or broken stdout raises; any other OSError is not blamed on stdout.
_STDOUT_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EBADF})


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, render `TrdeployError` as one line with exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    if "--debug" in args:
        _state["debug"] = True
    try:
        try:
            # Without standalone mode click returns the code of `typer.Exit(code)` instead of exiting.
            code = _command().main(args=args, prog_name="trdeploy", standalone_mode=False)
        finally:
            sys.stdout.flush()  # a full disk or closed pipe shows here, inside the handlers below
    except BrokenPipeError:
        broken_pipe_exit()
    except OSError as exc:
        if _state["debug"]:
            traceback.print_exc()
        silence_stdout()
        reason = exc.strerror or str(exc)
        if exc.filename:
            text = f"{exc.filename}: {reason}."
        elif exc.errno in _STDOUT_WRITE_ERRNOS:
            text = f"Cannot write the output (stdout): {reason}."
        else:  # not a failed write: do not blame stdout
            text = f"{reason} (run with --debug for the traceback)."
        err_console.print(f"[bold red]Error:[/] {escape(text)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (TrdeployError, ValidationError) as exc:
        if _state["debug"]:
            traceback.print_exc()
        # An argument model's ValidationError becomes the one-line error here, and only here.
        error = validation_error(exc) if isinstance(exc, ValidationError) else exc
        err_console.print(f"[bold red]Error:[/] {escape(error.one_line())}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except RecursionError:
        # A backstop: every reader bounds nesting itself (trdeploy.inputs); an input that still nests past
        # Python's recursion limit somewhere is one line, never a traceback.
        if _state["debug"]:
            traceback.print_exc()
        err_console.print("[bold red]Error:[/] An input is nested too deeply to process. Simplify it (see README, Errors and limits).", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("Aborted.")
        sys.exit(130)
    except _click_exc.ClickException as exc:  # usage errors: exit 2, as click does
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("Interrupted.")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
