"""A small OpenAI-compatible inference server for the bench tests: `python _vllm_like_server.py MODEL_DIR NAME PORT`.

It runs a real transformers model with `model.generate` (one request at a time, on the CPU) and speaks
the vLLM dialect of the OpenAI API where `transformers serve` does not: token-id prompts on
/v1/completions, `ignore_eos` and `min_tokens`, one SSE chunk per generated token, the role chunk sent
with the first token, `stream_options.include_usage` as a separate final chunk with `choices: []`, and
Prometheus counters under vLLM's names on /metrics (counted by this server, independently of the client).

Routes under /secure/ answer only with `Authorization: Bearer sk-test` (HTTP 401 otherwise).
Routes under /broken/ misbehave on purpose, cycling per request through: a normal answer, HTTP 500,
a malformed SSE event, an in-stream error event, a stall after the first token (for client timeouts), and
a connection dropped mid-stream (the chunked body never ends).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL_DIR, NAME, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
worker = ThreadPoolExecutor(max_workers=1)  # one generation at a time, like a single CPU engine
app = FastAPI()

BROKEN_MODES = ("ok", "http500", "malformed", "stream_error", "stall", "drop")
state: dict = {"broken_counter": 0, "client_ports": set()}
counters = {
    "prompt_tokens": 0,
    "generation_tokens": 0,
    "success": {"length": 0, "stop": 0},
    "running": 0,
    "waiting": 0,
    "e2e_sum": 0.0,
    "e2e_count": 0,
    "ttft_sum": 0.0,
    "ttft_count": 0,
}
lock = threading.Lock()


class QueueStreamer:
    """`generate` streamer: pushes each new token id to an asyncio queue (the first put is the prompt)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop, self.queue, self.first, self.cancelled = loop, queue, True, threading.Event()

    def put(self, value: torch.Tensor) -> None:
        if self.cancelled.is_set():
            raise RuntimeError("cancelled")
        if self.first:
            self.first = False
            return
        for token_id in value.reshape(-1).tolist():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, int(token_id))

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


def _generation_kwargs(body: dict) -> dict:
    max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 64)
    kwargs = {"max_new_tokens": max_tokens, "do_sample": True, "temperature": float(body.get("temperature") or 1.0)}
    if body.get("ignore_eos"):
        kwargs["min_new_tokens"] = max_tokens
    elif body.get("min_tokens"):
        kwargs["min_new_tokens"] = int(body["min_tokens"])
    return kwargs


def _input_ids(body: dict, chat: bool) -> torch.Tensor:
    if chat:
        ids = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
    elif isinstance(body.get("prompt"), list):
        ids = [int(t) for t in body["prompt"]]
        if any(t < 0 or t >= model.config.vocab_size for t in ids):
            raise ValueError(f"token id out of vocabulary (size {model.config.vocab_size})")
    else:
        ids = tokenizer(body["prompt"])["input_ids"]
    return torch.tensor([ids], dtype=torch.long)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _generate_stream(body: dict, chat: bool, mode: str = "ok"):
    request_id = f"cmpl-{uuid.uuid4().hex[:12]}"
    input_ids = _input_ids(body, chat)
    gen_kwargs = _generation_kwargs(body)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    streamer = QueueStreamer(loop, queue)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    obj = "chat.completion.chunk" if chat else "text_completion"
    t0 = time.perf_counter()
    with lock:
        counters["waiting"] += 1

    def run() -> None:
        with lock:
            counters["waiting"] -= 1
            counters["running"] += 1
        try:
            with torch.no_grad():
                model.generate(input_ids, streamer=streamer, pad_token_id=tokenizer.pad_token_id, **gen_kwargs)
        except RuntimeError:
            streamer.end()
        finally:
            with lock:
                counters["running"] -= 1

    future = loop.run_in_executor(worker, run)
    produced = 0
    finish = "length"
    try:
        while True:
            token_id = await queue.get()
            if token_id is None:
                break
            produced += 1
            if produced == 1:
                with lock:
                    counters["ttft_sum"] += time.perf_counter() - t0
                    counters["ttft_count"] += 1
                if chat:
                    yield _sse({"id": request_id, "object": obj, "model": NAME,
                                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})  # fmt: skip
            text = tokenizer.decode([token_id], skip_special_tokens=body.get("skip_special_tokens", True) is not False)
            if token_id == model.generation_config.eos_token_id:
                finish = "stop"
            last = produced >= gen_kwargs["max_new_tokens"] or finish == "stop"
            reason = finish if last else None
            choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
            choice["finish_reason"] = reason
            if mode == "malformed" and produced == 2:
                yield "data: {\"id\": \"" + request_id + "\", \"choices\": [{\"text\": \n\n"
                return
            if mode == "drop" and produced == 2:
                raise RuntimeError("connection dropped on purpose (test)")
            if mode == "stream_error" and produced == 2:
                yield _sse({"error": {"message": "engine failure (test)", "type": "InternalServerError", "code": 500}})
                return
            yield _sse({"id": request_id, "object": obj, "model": NAME, "choices": [choice]})
            if mode == "stall" and produced == 1:
                await asyncio.sleep(3600)
        if include_usage:
            yield _sse({"id": request_id, "object": obj, "model": NAME, "choices": [],
                        "usage": {"prompt_tokens": input_ids.shape[-1], "completion_tokens": produced,
                                  "total_tokens": input_ids.shape[-1] + produced}})  # fmt: skip
        yield "data: [DONE]\n\n"
        with lock:
            counters["prompt_tokens"] += input_ids.shape[-1]
            counters["generation_tokens"] += produced
            counters["success"][finish] += 1
            counters["e2e_sum"] += time.perf_counter() - t0
            counters["e2e_count"] += 1
    finally:
        streamer.cancelled.set()
        await asyncio.shield(future)


def _check_model(body: dict) -> JSONResponse | None:
    if body.get("model") not in (None, NAME):
        return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}}, 404)
    return None


def _unauthorized(request: Request) -> JSONResponse | None:
    if request.url.path.startswith("/secure/") and request.headers.get("authorization") != "Bearer sk-test":
        return JSONResponse({"error": {"message": "invalid API key", "code": 401}}, 401)
    return None


async def _handle(request: Request, chat: bool, broken: bool) -> object:
    if (denied := _unauthorized(request)) is not None:
        return denied
    if request.client is not None:
        state["client_ports"].add(request.client.port)  # one port per TCP connection: shows reuse
    body = await request.json()
    if (bad := _check_model(body)) is not None:
        return bad
    mode = "ok"
    if broken:
        mode = BROKEN_MODES[state["broken_counter"] % len(BROKEN_MODES)]
        state["broken_counter"] += 1
        if mode == "http500":
            return JSONResponse({"error": {"message": "internal error (test)", "code": 500}}, 500)
    try:
        _input_ids(body, chat)
    except (ValueError, KeyError, TypeError) as exc:
        return JSONResponse({"error": {"message": str(exc), "code": 400}}, 400)
    return StreamingResponse(_generate_stream(body, chat, mode), media_type="text/event-stream")


@app.post("/v1/completions")
@app.post("/secure/v1/completions")
async def completions(request: Request):
    return await _handle(request, chat=False, broken=False)


@app.post("/v1/chat/completions")
async def chat_completions(request: Request):
    return await _handle(request, chat=True, broken=False)


@app.post("/broken/v1/completions")
async def broken_completions(request: Request):
    return await _handle(request, chat=False, broken=True)


@app.post("/broken/v1/chat/completions")
async def broken_chat(request: Request):
    return await _handle(request, chat=True, broken=True)


@app.get("/v1/models")
@app.get("/broken/v1/models")
@app.get("/secure/v1/models")
async def models(request: Request):
    if (denied := _unauthorized(request)) is not None:
        return denied
    return {"object": "list", "data": [{"id": NAME, "object": "model", "root": MODEL_DIR, "owned_by": "test"}]}


@app.get("/debug/connections")
async def connections():
    return {"client_ports": len(state["client_ports"])}


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.get("/metrics")
async def metrics():
    label = f'model_name="{NAME}"'
    with lock:
        c = json.loads(json.dumps(counters))
    lines = [
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{label}}} {float(c['prompt_tokens'])}",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{label}}} {float(c['generation_tokens'])}",
        "# TYPE vllm:request_success_total counter",
        *(f'vllm:request_success_total{{finished_reason="{k}",{label}}} {float(v)}' for k, v in c["success"].items()),
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{label}}} {float(c['running'])}",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{label}}} {float(c['waiting'])}",
        "# TYPE vllm:e2e_request_latency_seconds histogram",
        f"vllm:e2e_request_latency_seconds_sum{{{label}}} {c['e2e_sum']}",
        f"vllm:e2e_request_latency_seconds_count{{{label}}} {float(c['e2e_count'])}",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        f"vllm:time_to_first_token_seconds_sum{{{label}}} {c['ttft_sum']}",
        f"vllm:time_to_first_token_seconds_count{{{label}}} {float(c['ttft_count'])}",
    ]
    return PlainTextResponse("\n".join(lines) + "\n")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
