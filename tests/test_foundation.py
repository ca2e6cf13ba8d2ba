"""The foundation: one error type, exit code 2, no traceback, --json, atomic writes, the profile contract."""

from __future__ import annotations

import pytest
from conftest import run_cli

from trdeploy.errors import TrdeployError
from trdeploy.output import atomic_directory, write_atomic


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("profile", "tune", "quantize", "bench"):
        assert command in result.stdout


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("trdeploy ")


def test_unknown_command_is_usage_error():
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_write_atomic_refuses_overwrite(tmp_path):
    target = tmp_path / "out.txt"
    write_atomic(target, "one")
    with pytest.raises(TrdeployError, match="already exists"):
        write_atomic(target, "two")
    assert target.read_text() == "one"
    write_atomic(target, "two", force=True)
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (target / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_write_atomic_file_mode_follows_umask(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "report.json", "{}")
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_typer_exit_code_is_propagated(monkeypatch):
    import typer

    from trdeploy import cli

    @cli.app.command("exit-three", hidden=True)
    def _exit_three() -> None:
        raise typer.Exit(3)

    with pytest.raises(SystemExit) as info:
        cli.main(["exit-three"])
    assert info.value.code == 3


def test_error_message_keeps_square_brackets():
    from trdeploy import cli

    @cli.app.command("fail-brackets", hidden=True)
    def _fail() -> None:
        raise TrdeployError("torch is missing.", hint="Run pip install 'trdeploy[quantize]'.")

    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer), pytest.raises(SystemExit) as info:
        cli.main(["fail-brackets"])
    assert info.value.code == 2
    assert "pip install 'trdeploy[quantize]'" in buffer.getvalue()
    assert "Traceback" not in buffer.getvalue()
