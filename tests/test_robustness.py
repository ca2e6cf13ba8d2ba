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


# ---------------------------------------------------------------------------------------------
# bench: bad --url / --api-key / NaN are one line before any request; SIGTERM keeps the report


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://localhost:99999", "Port out of range"),
        ("http://localhost:abc", "Port could not be cast"),
        ("http://[::1", "Invalid IPv6"),
        ("http://[zz]:80", "IPv4 or IPv6"),
        ("http://local host:80", "control characters"),
    ],
)
def test_bad_url_is_one_line(url: str, says: str) -> None:
    # Before: ValueError tracebacks from urllib/httpx.
    assert_one_line_error(invoke("bench", "--url", url, "-m", "x", "-n", "1"), contains=says)


@pytest.mark.parametrize("key", ["abc\r\nX-Injected: 1", "abc\n", "schlüssel"])
def test_api_key_that_cannot_be_a_header_is_refused(key: str) -> None:
    # Before: CR/LF went out on the wire (header injection) or UnicodeEncodeError traceback.
    assert_one_line_error(invoke("bench", "--url", "http://127.0.0.1:9", "-m", "x", "-n", "1", "--api-key", key), contains="HTTP header")


@pytest.mark.parametrize(("option", "value"), [("--extra-body", '{"top_p": NaN}'), ("--extra-body", '{"x": [Infinity]}'), ("--temperature", "nan")])
def test_no_nan_is_sent_to_the_server(option: str, value: str) -> None:
    # Before: sent as the non-JSON literal NaN (every request failed, exit 1).
    assert_one_line_error(invoke("bench", "--url", "http://127.0.0.1:9", "-m", "x", "-n", "1", option, value))


def test_bench_output_equal_to_its_prompts_file_is_refused(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Merhaba, nasılsın?\n")
    # Before: the benchmark ran and replaced the prompts with its report.
    result = invoke("bench", "--url", "http://127.0.0.1:9", "-m", "x", "-n", "1", "--prompts", str(prompts), "-o", str(prompts), "--force")
    assert_one_line_error(result, contains="--prompts input")
    assert prompts.read_text() == "Merhaba, nasılsın?\n"


def test_sigterm_writes_the_partial_report_like_ctrl_c(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from tests._bench_servers import start_timed_server
    from tests.conftest import ROOT

    server = start_timed_server(tmp_path / "timed.log", ttft_s=0.05, itl_s=0.01)
    try:
        out = tmp_path / "partial.json"
        cmd = [sys.executable, "-m", "trdeploy", "bench", "--url", server.url, "-c", "2", "-n", "5000",
               "--output-tokens", "8", "--json", "-o", str(out), "--no-server-metrics"]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        server.stop()
    # Before: killed at once (exit -15), no report.
    assert proc.returncode == 130, stderr
    report = json.loads(stdout)
    assert report["interrupted"] and 0 < report["runs"][0]["completed"] < 5000
    assert json.loads(out.read_text()) == report and "Traceback" not in stderr


# ---------------------------------------------------------------------------------------------
# Usage errors and stdout failures


@pytest.mark.parametrize("args", [(), ("tune",), ("render-k8s",), ("build",), ("quantize",), ("tune", "--gpu", "h100", "--bogus"), ("nope",)])
def test_usage_errors_are_one_line_on_stderr_and_nothing_on_stdout(args: tuple[str, ...]) -> None:
    # Before: a bare `trdeploy`, `tune`, `render-k8s` or `build` printed its whole help on stdout.
    result = invoke(*args)
    assert result.code == 2 and result.stdout == "", (result.code, result.stdout[:300])
    lines = result.error_lines
    assert lines[0].startswith("Usage: trdeploy") and lines[-1].startswith("Error: ") and len(lines) == 3, result.stderr


@pytest.mark.parametrize("args", [("--version",), ("profile", "--json", "--limit", "20")])
def test_full_disk_on_stdout_is_one_line(args: tuple[str, ...]) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "trdeploy", *args], cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    # Before: an OSError traceback.
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == ["Error: Cannot write the output (stdout): No space left on device."]


def test_closed_pipe_ends_quietly() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "trdeploy", "profile", "--limit", "200"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(1)
    proc.stdout.close()  # like `| head -c1`
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == 141 and stderr == "", (proc.returncode, stderr)


# ---------------------------------------------------------------------------------------------
# Broken user tokenizers, corrupt checkpoints, configs with zero heads


def _tiktoken_file(path: Path, tokens: list[bytes], ranks: list[int] | None = None) -> Path:
    import base64

    ranks = list(range(len(tokens))) if ranks is None else ranks
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in zip(tokens, ranks, strict=True)))
    return path


def _corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "c.txt"
    corpus.write_text("Merhaba dünya, nasılsınız?\nBugün hava çok güzel.\n")
    return corpus


def test_tiktoken_file_without_single_bytes_is_one_line(tmp_path: Path) -> None:
    tok = _tiktoken_file(tmp_path / "t.tiktoken", [bytes([b, b]) for b in range(10)])
    # Before: tiktoken's Rust core panicked mid-encode (PanicException and a Rust backtrace).
    result = invoke("profile", "-t", str(tok), "--corpus", str(_corpus(tmp_path)))
    assert_one_line_error(result, contains="single-byte tokens")


def test_tiktoken_file_with_duplicate_ranks_is_one_line(tmp_path: Path) -> None:
    tok = _tiktoken_file(tmp_path / "t.tiktoken", [bytes([b]) for b in range(256)], [0, *range(255)])
    # Before: PanicException "Encoder and decoder must be of equal length".
    assert_one_line_error(invoke("profile", "-t", str(tok), "--corpus", str(_corpus(tmp_path))), contains="same rank")


def test_complete_byte_level_tiktoken_file_still_works(tmp_path: Path) -> None:
    tok = _tiktoken_file(tmp_path / "t.tiktoken", [bytes([b]) for b in range(256)] + [b"er", b"ba"])
    result = invoke("profile", "-t", str(tok), "--corpus", str(_corpus(tmp_path)), "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["turkish_tokens"] > 0


def test_tokenizer_json_that_raises_at_encode_is_one_line(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"a": 0}, unk_token="[UNK]"))  # its unk token is not in the vocab
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(tmp_path / "tokenizer.json"))
    # Before: a plain Exception traceback from the Rust side at the first batch.
    for spec in (tmp_path / "tokenizer.json", tmp_path):
        assert_one_line_error(invoke("profile", "-t", str(spec), "--corpus", str(_corpus(tmp_path))), contains="Missing [UNK]")


def _llama_config(folder: Path, **overrides) -> Path:
    folder.mkdir(exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
              "num_hidden_layers": 2, "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 8192}  # fmt: skip
    config.update(overrides)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _safetensors(path: Path, header: dict) -> None:
    import struct

    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


@pytest.mark.parametrize("heads", [{"num_attention_heads": 0}, {"num_attention_heads": 0, "head_dim": 128}, {"num_attention_heads": 1e400}])
def test_config_with_zero_heads_is_one_line(tmp_path: Path, heads: dict) -> None:
    # Before: ZeroDivisionError (hidden_size // 0) or OverflowError traceback.
    assert_one_line_error(invoke("tune", "--gpu", "h100", "--model", str(_llama_config(tmp_path / "m", **heads))))


@pytest.mark.parametrize(
    "tensor",
    [{"dtype": "BF16", "shape": ["a"], "data_offsets": [0, 2]}, {"dtype": "BF16", "shape": None, "data_offsets": [0, 2]},
     {"dtype": "BF16", "shape": [1], "data_offsets": [0]}, {"dtype": "BF16", "shape": [-4], "data_offsets": [0, 2]}],
)  # fmt: skip
def test_corrupt_safetensors_header_is_one_line(tmp_path: Path, tensor: dict) -> None:
    folder = _llama_config(tmp_path / "m")
    _safetensors(folder / "model.safetensors", {"w": tensor})
    # Before: ValueError/TypeError tracebacks from the header arithmetic.
    assert_one_line_error(invoke("tune", "--gpu", "h100", "--model", str(folder)), contains="corrupt safetensors header")


@pytest.mark.parametrize("qc", [[1], {"quant_method": "awq", "bits": "four"}, {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": 3}}}])
def test_malformed_quantization_config_is_one_line(tmp_path: Path, qc) -> None:
    # Before: AttributeError / ValueError tracebacks.
    assert_one_line_error(invoke("tune", "--gpu", "h100", "--model", str(_llama_config(tmp_path / "m", quantization_config=qc))))


# ---------------------------------------------------------------------------------------------
# CSV: an open quote or a missing header row is said, never a silent miscount


def test_csv_quote_open_at_the_end_is_an_error(tmp_path: Path) -> None:
    corpus = tmp_path / "c.csv"
    corpus.write_text('id,text\n1,"açık kalan tırnak\n2,ikinci satır\n3,üçüncü satır\n')
    # Before: exit 0 with one document (the open quote swallowed rows 2 and 3).
    assert_one_line_error(invoke("profile", "--corpus", str(corpus)), contains="unexpected end of data")


def test_csv_quote_that_swallows_rows_warns(tmp_path: Path) -> None:
    corpus = tmp_path / "c.csv"
    corpus.write_text('id,text\n1,"açık kalan tırnak\n2,ikinci satır\n3,üçüncü satır"\n4,dördüncü\n')
    result = invoke("profile", "--corpus", str(corpus), "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["corpus"]["documents"] == 2
    # Before: silence.
    assert "look like rows are inside quoted text" in result.stderr


def test_csv_multiline_text_without_swallowed_rows_stays_quiet(tmp_path: Path) -> None:
    corpus = tmp_path / "c.csv"
    corpus.write_text('id,text\n1,"iki satırlık\nbir metin"\n2,ikinci\n')
    result = invoke("profile", "--corpus", str(corpus), "--json")
    assert result.code == 0 and result.stderr == "", result.stderr


def test_single_column_csv_without_a_header_row_warns(tmp_path: Path) -> None:
    corpus = tmp_path / "c.csv"
    corpus.write_text("Merhaba dünya nasılsınız\nBugün hava çok güzel\n")
    result = invoke("profile", "--corpus", str(corpus), "--json")
    assert result.code == 0, result.stderr
    # Before: the first document silently became the column name (one document uncounted).
    assert "was read as the column name" in result.stderr


# ---------------------------------------------------------------------------------------------
# Found by tests/test_property.py


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("bench", "--url", "http://127.0.0.1:9", "-m", "x", "-n", "1"), "--seed must be 0 or more"),
        (("profile", "--limit", "5"), "--seed: input should be greater than or equal to 0"),
    ],
)
def test_negative_seed_is_one_line(args: tuple[str, ...], says: str) -> None:
    # Before: numpy's "ValueError: expected non-negative integer" traceback.
    assert_one_line_error(invoke(*args, "--seed", "-1"), contains=says)


def test_warnings_are_one_line_each(tmp_path: Path) -> None:
    corpus = tmp_path / "c.csv"
    corpus.write_text("Merhaba dünya nasılsınız bugün hava çok güzel ve deniz sakin mi\nİkinci satır\n")
    result = invoke("profile", "--corpus", str(corpus), "--json")
    # Before: rich wrapped a warning over three lines at 80 columns.
    assert result.code == 0 and len(result.error_lines) == 1 and result.error_lines[0].startswith("warning:"), result.stderr


def test_quantize_refuses_a_truncated_safetensors_file_before_loading(tmp_path: Path) -> None:
    import struct

    folder = _llama_config(tmp_path / "m", model_type="llama", hidden_size=128, intermediate_size=256, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=1024, max_position_embeddings=128, num_hidden_layers=1)  # fmt: skip
    raw = json.dumps({"model.norm.weight": {"dtype": "F32", "shape": [128], "data_offsets": [0, 512]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 100)  # 412 bytes short
    # Before: safetensors' SafetensorError traceback ("incomplete metadata, file not fully covered") at the load.
    result = invoke("quantize", str(folder), "-o", str(tmp_path / "out"))
    assert result.code == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.error_lines[-1].startswith("Error:") and "is truncated" in result.error_lines[-1], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_safetensors_size_check_accepts_a_whole_file(tmp_path: Path) -> None:
    import struct

    from trdeploy.sizing.architectures import check_safetensors_file

    raw = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "ok.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)
    check_safetensors_file(tmp_path / "ok.safetensors")


def test_an_error_quoting_a_value_with_line_breaks_stays_one_line(tmp_path: Path) -> None:
    # Before: the path's newline split the error over two lines.
    assert_one_line_error(invoke("profile", "--corpus", str(tmp_path / "a\nb.txt")), contains="a\\nb.txt")


def test_quantize_output_equal_to_the_model_folder_is_refused(tmp_path: Path) -> None:
    folder = _llama_config(tmp_path / "m")
    # Before: with --force the quantized checkpoint would have replaced the model it was made from.
    result = invoke("quantize", str(folder), "-o", str(tmp_path / "m" / ".." / "m"), "--force")
    assert_one_line_error(result, contains="MODEL input")
    assert (folder / "config.json").is_file()


def test_profile_output_equal_to_its_corpus_is_refused(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    text = corpus.read_text()
    # Before: the corpus was replaced by the report.
    assert_one_line_error(invoke("profile", "--corpus", str(corpus), "-o", str(corpus), "--force"), contains="--corpus input")
    assert corpus.read_text() == text


def test_profile_output_equal_to_the_first_parallel_file_is_refused(tmp_path: Path) -> None:
    tr, en = tmp_path / "tr.txt", tmp_path / "en.txt"
    tr.write_text("Merhaba dünya.\nBugün hava güzel.\n", encoding="utf-8")
    en.write_text("Hello world.\nThe weather is nice today.\n", encoding="utf-8")
    # Before: a dict comprehension with one static key kept only the last --parallel file, so -o onto the first
    # (Turkish) file went through and replaced it.
    result = invoke("profile", "--parallel", str(tr), str(en), "-o", str(tr), "--force")
    assert_one_line_error(result, contains="--parallel input")
    assert tr.read_text(encoding="utf-8").startswith("Merhaba")


def test_an_oserror_that_is_not_a_write_is_not_blamed_on_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    import trdeploy.sizing.tuning as tuning

    def refused(*_args, **_kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(tuning, "tune", refused)
    result = invoke("tune", "--gpu", "h100")
    # Before: main's OSError handler called every OSError without a file name a failed write to stdout.
    assert_one_line_error(result, contains="Connection refused")
    assert "stdout" not in result.stderr
