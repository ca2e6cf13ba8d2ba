"""ruff, as configured in pyproject.toml, finds nothing in the package, the tests or the scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def test_ruff_is_clean() -> None:
    beside = Path(sys.executable).with_name("ruff")  # the venv's own ruff (the `test` extra)
    ruff = str(beside) if beside.is_file() else shutil.which("ruff")
    if ruff is None:
        if os.environ.get("CI"):
            pytest.fail("ruff is not installed (it is in the `test` extra)")
        pytest.skip("ruff is not installed (pip install 'trdeploy[test]')")
    result = subprocess.run([ruff, "check", "trdeploy", "tests", "scripts"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
