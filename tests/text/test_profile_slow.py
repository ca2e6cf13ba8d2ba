"""Slow checks for `trdeploy profile`: the speed benchmark script runs and agrees with itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_script_counts_agree(tmp_path):
    # The script exits non-zero when the raw batch encode, the single loop and the profile count
    # different totals; timings are reported, not asserted (this is not a timed test).
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_tokenize.py"), "--size-mb", "3", "--repeats", "1", "--workdir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["megabytes"] >= 3.0
    (row,) = report["results"]
    assert row["tokenizer"] == "llama3" and row["tokens"] > 500_000
    assert set(row["seconds_median"]) == {"raw", "loop", "profile"}
    assert row["profile_over_raw"] > 0
