"""Hostile inputs: each one once printed a traceback or did damage; now one line, exit 2, nothing left.

Every test here failed before its fix (issue 12, robustness half)."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest

from tests._cli import assert_one_line_error, invoke
from trdeploy.errors import TrdeployError
from trdeploy.output import atomic_directory, ensure_writable, to_json, write_atomic

# ---------------------------------------------------------------------------------------------
# Outputs: --force never replaces a folder, a device, a FIFO or a link; unwritable folders fail first


def test_force_onto_a_folder_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "out.yaml"
    target.mkdir()
    (target / "keep").write_text("x")
    # Before: IsADirectoryError traceback from os.replace.
    assert_one_line_error(invoke("tune", "--gpu", "h100", "-o", str(target), "--force"), contains="is a folder")
    assert (target / "keep").read_text() == "x"


def test_force_onto_a_fifo_is_refused_and_it_stays_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    # Before: the FIFO was silently replaced by a regular file.
    assert_one_line_error(invoke("tune", "--gpu", "h100", "-o", str(fifo), "--force"), contains="FIFO")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_force_onto_a_device_is_refused(tmp_path: Path) -> None:
    # A private copy of /dev/null: before the fix, `-o /dev/null --force` (as root) replaced the
    # system's /dev/null with a regular file. Never point this test at the real one.
    device = tmp_path / "null"
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("cannot create a device node here (not root)")
    assert_one_line_error(invoke("tune", "--gpu", "h100", "-o", str(device), "--force"), contains="device")
    assert stat.S_ISCHR(device.lstat().st_mode)


def test_force_onto_a_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "out.yaml"
    link.symlink_to(victim)
    assert_one_line_error(invoke("tune", "--gpu", "h100", "-o", str(link), "--force"), contains="symbolic link")
    assert link.is_symlink() and victim.read_text() == "precious"


def test_folder_output_never_replaces_a_file(tmp_path: Path) -> None:
    file = tmp_path / "out"
    file.write_text("x")
    with pytest.raises(TrdeployError, match="not a folder"):
        with atomic_directory(file, force=True):
            pass
    assert file.read_text() == "x"


def test_unwritable_folder_fails_before_any_work(tmp_path: Path) -> None:
    # /proc takes no new files even for root; before: FileNotFoundError traceback after the work.
    assert_one_line_error(invoke("profile", "-o", "/proc/trdeploy-profile.json"), contains="Cannot write to the folder /proc")


def test_write_failure_is_one_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(TrdeployError, match="No space left"):
        write_atomic(tmp_path / "x.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_parent_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(TrdeployError, match="is not a folder"):
        ensure_writable(tmp_path / "f" / "x.json", force=False)


# ---------------------------------------------------------------------------------------------
# JSON never carries NaN or Infinity


def test_to_json_writes_null_for_nan_and_infinity() -> None:
    import numpy as np

    text = to_json({"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": np.float64("nan"), "d": (math.nan,)})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [None, None, 1.5], "c": None, "d": [None]}
