"""Property-based: every command driven with random option values ends cleanly.

Whatever the values, a run exits 0, 1 (bench: SLA failed) or 2 (bad input); an error is one
`Error:` line on stderr (usage errors add click's two-line usage hint; quantize its one progress
line), never a traceback; and a failed run leaves no file behind. In-process and fast: bench points
at a closed local port, quantize only ever fails before loading a model, profile reads a tiny corpus.
"""

from __future__ import annotations

import math
import socket
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._cli import CliResult, invoke

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

ints = st.one_of(st.integers(-3, 70_000), st.sampled_from([0, 1, -1, 2**31, 10**12]))
floats = st.one_of(
    st.floats(min_value=-1e4, max_value=1e7, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1e-12, 0.5, 1.0, 1e308, math.nan, math.inf, -math.inf]),
)
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


CLOSED_URL = f"http://127.0.0.1:{_closed_port()}"


def usually(valid: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly plausible values (so runs get past validation), sometimes hostile ones."""
    return st.integers(0, 7).flatmap(lambda pick: hostile if pick == 7 else valid)


def _options(draw, spec: dict[str, st.SearchStrategy]) -> list[str]:
    args: list[str] = []
    for name, strategy in spec.items():
        if draw(st.integers(0, 3)) == 0:  # each option in about a quarter of the runs
            value = draw(strategy)
            if value is True:
                args.append(name)
            elif value is not False:
                args += [name, value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)]
    return args


def _check(result: CliResult, folder: Path, before: set[str]) -> None:
    assert result.code in (0, 1, 2), (result.code, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    if result.code == 2:
        lines = [
            line
            for line in result.error_lines
            if not line.startswith(("Usage: ", "Try 'trdeploy", "warning:", "... "))
        ]
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        left = {p.name for p in folder.iterdir()} - before
        assert not left, f"a failed run left {left}"


def _run(args: list[str], folder: Path) -> None:
    before = {p.name for p in folder.iterdir()}
    _check(invoke(*args), folder, before)


@st.composite
def tune_args(draw) -> list[str]:
    args = ["tune", "--gpu", draw(usually(st.sampled_from(["h100", "l40s", "rtx4090", "a100-80gb", "l4"]), st.sampled_from(["tpu", ""])))]
    args += ["--model", draw(usually(st.sampled_from(["llama-3-8b", "llama-3.1-8b", "llama-3.1-70b"]), st.just("./nope")))]
    return args + _options(draw, {
        "--gpus": usually(st.integers(1, 8), ints), "--quantization": st.sampled_from(["none", "awq", "fp8", "none", "awq", "int3"]),
        "--kv-cache-dtype": st.sampled_from(["auto", "fp8"]), "--context-words": usually(st.integers(1, 3000), ints),
        "--tokens-per-word": usually(st.floats(1.0, 4.0), floats), "--percentile": usually(st.floats(1, 100), floats),
        "--max-model-len": usually(st.integers(16, 9000), ints), "--prompt-tokens": usually(st.integers(1, 4000), ints),
        "--output-tokens": usually(st.integers(1, 2000), ints), "--concurrency": usually(st.integers(1, 512), ints),
        "--requests-per-day": usually(st.floats(1, 1e7), floats), "--peak-factor": usually(st.floats(1, 10), floats),
        "--sla-ttft-p95-ms": usually(st.floats(1, 1e5), floats), "--sla-e2e-p95-ms": usually(st.floats(1, 1e6), floats),
        "--sla-tpot-ms": usually(st.floats(1, 500), floats), "--max-num-seqs": usually(st.integers(1, 1024), ints),
        "--max-num-batched-tokens": usually(st.integers(16, 65536), ints),
        "--gpu-memory-utilization": usually(st.floats(0.5, 0.98), floats), "--compile-cache": st.sampled_from(["cold", "warm", "hot"]),
        "--served-model-name": texts, "--json": st.booleans(), "--request-rate": usually(st.floats(0.01, 100), floats),
        "--calibration": st.sampled_from(["./no-such-calibration.yaml", "pyproject.toml"]),
    })  # fmt: skip


@SETTINGS
@given(tune_args(), st.booleans())
def test_tune_with_random_options(args: list[str], write: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _run(args + (["-o", str(folder / "trdeploy.yaml")] if write else []), folder)


@st.composite
def profile_args(draw) -> list[str]:
    return ["profile", *_options(draw, {
        "--limit": usually(st.integers(1, 5), ints), "--min-count": usually(st.integers(1, 3), ints),
        "--top-words": usually(st.integers(0, 5), ints), "--resamples": usually(st.integers(100, 300), st.integers(-5, 99)), "--seed": ints,
        "--format": st.sampled_from(["auto", "text", "auto", "text", "csv", "xml"]), "--field": texts,
        "--tokenizer": st.sampled_from(["llama3", "nope-tokenizer", "./missing.model"]), "--json": st.booleans(),
    })]  # fmt: skip


@SETTINGS
@given(profile_args(), st.booleans())
def test_profile_with_random_options(args: list[str], write: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = folder / "corpus.txt"
        corpus.write_text("Merhaba dünya, nasılsınız?\nBugün hava çok güzel, denize gidelim.\nKargom nerede?\n")
        _run(args + ["--corpus", str(corpus)] + (["-o", str(folder / "profile.json")] if write else []), folder)


@st.composite
def bench_args(draw) -> list[str]:
    hostile_url = st.sampled_from(["http://127.0.0.1:0", "ftp://x", "http://[::1", "http://h:99999", "http://h:x"])
    args = ["bench", "--url", draw(usually(st.sampled_from([CLOSED_URL, CLOSED_URL + "/v1"]), hostile_url))]
    args += ["-m", "x", "-n", str(draw(usually(st.integers(1, 4), st.integers(-1, 0)))), "--no-server-metrics"]
    return args + _options(draw, {
        "--api": st.sampled_from(["chat", "completions", "chat", "completions", "embeddings"]),
        "--concurrency": usually(st.integers(1, 4), st.integers(-1, 0)),
        "--request-rate": usually(st.floats(1, 1000), floats), "--burstiness": usually(st.floats(0.1, 5), floats),
        "--sweep": st.sampled_from(["concurrency=1,2", "request-rate=50", "c=1", "concurrency=", "concurrency=0"]),
        "--output-tokens": usually(st.integers(1, 500), ints), "--min-tokens": usually(st.integers(0, 10), ints),
        "--temperature": usually(st.floats(0, 2), floats), "--timeout": st.sampled_from([0.5, 2.0, 2.0, 0.0, -1.0, math.nan]),
        "--max-error-rate": usually(st.floats(0, 1), floats), "--percentiles": st.sampled_from(["50,95,99", "99.9", "0", "101", "a,b", ""]),
        "--warmup": st.integers(-1, 2), "--seed": ints, "--extra-body": st.sampled_from(['{"top_k": 5}', '{"top_k": 5}', "[1]", "{", '{"a": NaN}']),
        "--api-key": usually(st.text("abcXYZ-_.0123456789", min_size=1, max_size=12), texts),
        "--sla-ttft-p95-ms": usually(st.floats(1, 1e4), floats), "--ignore-eos": st.booleans(), "--json": st.booleans(),
        "--http-client": st.sampled_from(["auto", "raw", "httpx", "auto", "curl"]),
    })  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(bench_args(), st.booleans())
def test_bench_with_random_options(args: list[str], write: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _run(args + (["-o", str(folder / "bench.json")] if write else []), folder)


@st.composite
def calibrate_args(draw) -> list[str]:
    args = ["calibrate"]
    if draw(st.integers(0, 3)) == 0:
        args += ["--from-bench", draw(st.sampled_from(["./missing.json", "pyproject.toml", "README.md"]))]
    else:
        args += ["--url", draw(usually(st.just(CLOSED_URL), st.sampled_from(["ftp://x", "http://[::1", "http://h:99999", ""])))]
    return args + _options(draw, {
        "--budget-minutes": usually(st.floats(0.01, 10), floats), "--prior": st.sampled_from(["shipped", "datasheet", "guess"]),
        "--seed": ints, "--prompt-salt": ints, "--timeout": usually(st.floats(0.5, 5), floats), "--model": texts,
        "--api-key": usually(st.text("abcXYZ-_.0123456789", min_size=1, max_size=12), texts), "--name": texts,
        "--no-leave-one-out": st.booleans(), "--json": st.booleans(), "--check": st.sampled_from(["./none.yaml", "pyproject.toml"]),
    })  # fmt: skip


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(calibrate_args(), st.booleans())
def test_calibrate_with_random_options(args: list[str], write: bool) -> None:
    """No server answers and no input is a bench report: every run is one line and exit 2, nothing written."""
    from trdeploy.sizing.tuning import TuneRequest, tune

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tune(TuneRequest(gpu="h100", max_model_len=8192, served_model_name="m")).profile.save(folder / "p.yaml")
        before = {p.name for p in folder.iterdir()}
        result = invoke(*args, "--profile", str(folder / "p.yaml"), *(["-o", str(folder / "cal.yaml")] if write else []))
        assert result.code == 2, (result.code, result.stderr[-2000:])
        _check(result, folder, before)


@st.composite
def quantize_args(draw) -> list[str]:
    return _options(draw, {
        "--num-samples": ints, "--max-seq-len": ints, "--eval-tokens": ints, "--eval-seq-len": ints,
        "--max-ppl-increase": floats, "--seed": ints, "--format": st.sampled_from(["compressed-tensors", "awq", "gguf"]),
        "--compare": st.sampled_from(["rtn", "gptq"]), "--dataset-split": texts, "--json": st.booleans(),
    })  # fmt: skip


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(quantize_args(), st.sampled_from(["missing", "no-config", "no-output"]))
def test_quantize_fails_fast_with_random_options(args: list[str], case: str) -> None:
    # Only inputs that fail before a model loads: a missing folder, a folder without config.json, no -o.
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "empty").mkdir()
        model = {"missing": str(folder / "nope"), "no-config": str(folder / "empty")}.get(case, str(folder / "empty"))
        out = [] if case == "no-output" else ["-o", str(folder / "out")]
        before = {p.name for p in folder.iterdir()}
        result = invoke("quantize", model, *out, *args)
        assert result.code == 2, (result.code, result.stderr[-2000:])
        _check(result, folder, before)
