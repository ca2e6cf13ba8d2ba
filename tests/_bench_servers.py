"""Real OpenAI-compatible servers for the `trdeploy bench` tests.

- `make_tiny_model(hf_home)`: a tiny random-weight LlamaForCausalLM with a BPE tokenizer trained on the
  embedded Turkish corpus and a Llama-3 style chat template, laid out in a Hugging Face cache folder
  as the hub repo `trdeploy/tiny-tr`, so `transformers serve` lists it in /v1/models offline.
- `start_transformers_serve(...)`: the `transformers serve` command that ships with transformers.
- `start_vllm_like_server(...)`: tests/_vllm_like_server.py, a small FastAPI server that runs the same
  real model with `model.generate` for the vLLM extensions `transformers serve` lacks (token-id prompts,
  `ignore_eos`, `min_tokens`, Prometheus `/metrics` with vllm:* counters), plus `/broken/...` routes
  that misbehave on purpose (HTTP 500, malformed SSE, stalls) for the robustness tests.

Both are started as real processes on a free localhost port and stopped after.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ID = "trdeploy/tiny-tr"
HERE = Path(__file__).resolve().parent

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def _turkish_text() -> list[str]:
    from trdeploy.text.embedded import calibration_conversations, embedded_pairs

    lines = [p.tr for p in embedded_pairs()]
    for conv in calibration_conversations():
        lines.extend(m["content"] for m in conv["messages"])
    return lines


def make_tiny_model(hf_home: Path, *, vocab_size: int = 1200) -> Path:
    """Write the tiny model into `hf_home`/hub as `trdeploy/tiny-tr`; return the snapshot folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_turkish_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|end_of_text|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.add_bos_token = False

    cache = hf_home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    revision = hashlib.sha1(b"trdeploy-tiny-tr").hexdigest()
    snapshot = cache / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (cache / "refs").mkdir(parents=True, exist_ok=True)
    (cache / "refs" / "main").write_text(revision)

    torch.manual_seed(0)
    eot = fast.convert_tokens_to_ids("<|eot_id|>")
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=fast.bos_token_id,
        eos_token_id=eot,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    # Sampling, so output lengths vary like a real model's; the EOS logit is not special.
    model.generation_config = GenerationConfig(
        bos_token_id=fast.bos_token_id, eos_token_id=eot, pad_token_id=fast.pad_token_id, do_sample=True, temperature=1.0
    )
    model.save_pretrained(snapshot)
    fast.save_pretrained(snapshot)
    return snapshot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on 127.0.0.1:port; `stop()` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, path: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def _server_env(hf_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }


def start_transformers_serve(hf_home: Path, log: Path, *, continuous_batching: bool = False) -> Server:
    port = free_port()
    cmd = [
        sys.executable, "-m", "transformers.cli.transformers", "serve", REPO_ID,
        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32",
        "--log-level", "warning",
        "--continuous-batching" if continuous_batching else "--no-continuous-batching",
    ]  # fmt: skip
    handle = log.open("w")
    proc = subprocess.Popen(cmd, env=_server_env(hf_home), stdout=handle, stderr=subprocess.STDOUT)
    server = Server(proc, port, log)
    server.wait_ready("/health")
    # The model loads on the first request: load it now so no test measures the load.
    httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": REPO_ID, "messages": [{"role": "user", "content": "Merhaba"}], "max_tokens": 2},
        timeout=120.0,
    ).raise_for_status()
    return server


def start_vllm_like_server(hf_home: Path, snapshot: Path, log: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, str(HERE / "_vllm_like_server.py"), str(snapshot), REPO_ID, str(port)]
    handle = log.open("w")
    proc = subprocess.Popen(cmd, env=_server_env(hf_home), stdout=handle, stderr=subprocess.STDOUT)
    server = Server(proc, port, log)
    server.wait_ready("/health")
    return server


def start_timed_server(log: Path, *, ttft_s: float, itl_s: float) -> Server:
    port = free_port()
    cmd = [sys.executable, str(HERE / "_timed_sse_server.py"), str(port), str(ttft_s), str(itl_s)]
    handle = log.open("w")
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=handle, stderr=subprocess.STDOUT)
    server = Server(proc, port, log)
    server.wait_ready("/v1/models", timeout=30)
    return server


def run_json(result: subprocess.CompletedProcess) -> dict:
    """The JSON report a `trdeploy bench --json` run printed (with its stderr on failure to parse)."""
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"no JSON on stdout (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}") from exc
