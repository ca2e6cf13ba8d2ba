#!/usr/bin/env python3
"""A stand-in `vllm serve` that `trdeploy bench` can measure (render-k8s's end-to-end test).

Python 3 stdlib only, so it runs in the minimal test base image as /usr/local/bin/vllm. It starts as
`vllm serve MODEL ... --served-model-name NAME --host H --port P`, like the rendered container, and:

    GET  /health                      503 for $STANDIN_STARTUP_DELAY_S seconds (default 2), then 200
    GET  /metrics                     vLLM 0.25 names with the model_name label (running, waiting, KV use)
    GET  /v1/models                   NAME
    POST /v1/completions, /v1/chat/completions
                                      streams max_tokens SSE chunks ($STANDIN_TTFT_S, $STANDIN_ITL_S apart),
                                      then a usage chunk and [DONE]

With VLLM_API_KEY set, /v1 answers 401 without `Authorization: Bearer <key>`; /health and /metrics
stay open, as in vLLM. It also prints `STANDIN_OPENAI {"argv": ..., "uid": ...}` once on start and
checks that every cache directory it is pointed at is writable (a read-only root file system must
leave them on volumes). SIGTERM stops it.
"""

import asyncio
import json
import os
import signal
import sys
import time

ARGV = sys.argv[1:]


def flag(name, default=None):
    value = default
    for i, arg in enumerate(ARGV):
        if arg == name and i + 1 < len(ARGV):
            value = ARGV[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


MODEL = ARGV[1] if len(ARGV) > 1 and ARGV[0] == "serve" else "model"
NAME = flag("--served-model-name", MODEL)
PORT = int(flag("--port", "8000"))
HOST = flag("--host", "0.0.0.0")
KEY = os.environ.get("VLLM_API_KEY")
READY_AT = time.monotonic() + float(os.environ.get("STANDIN_STARTUP_DELAY_S", "2"))
TTFT = float(os.environ.get("STANDIN_TTFT_S", "0.05"))
ITL = float(os.environ.get("STANDIN_ITL_S", "0.005"))
STATE = {"running": 0}


def _writable(path):
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".standin-{os.getpid()}")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
        return True
    except OSError:
        return False


def _chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def _reply(writer, status, body, ctype="application/json"):
    writer.write(b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (status.encode(), ctype.encode(), len(body), body))


def _metrics():
    escaped = NAME.replace('"', '\\"')
    labels = f'{{engine="0",model_name="{escaped}"}}'
    lines = [
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{labels} {STATE['running']}",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{labels} 0",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{labels} {min(1.0, STATE['running'] / 64):.4f}",
    ]
    return ("\n".join(lines) + "\n").encode()


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method, path = head.split(b"\r\n", 1)[0].decode().split(" ")[:2]
            length, auth = 0, None
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.decode("latin-1").partition(":")
                if key.lower() == "content-length":
                    length = int(value)
                elif key.lower() == "authorization":
                    auth = value.strip()
            raw = await reader.readexactly(length) if length else b""
            if path == "/health":
                ready = time.monotonic() >= READY_AT
                _reply(writer, "200 OK" if ready else "503 Service Unavailable", b"")
            elif path == "/metrics":
                _reply(writer, "200 OK", _metrics(), "text/plain; version=0.0.4")
            elif path.startswith("/v1/") and KEY and auth != f"Bearer {KEY}":
                _reply(writer, "401 Unauthorized", b'{"error": "Unauthorized"}')
            elif method == "GET" and path == "/v1/models":
                _reply(writer, "200 OK", json.dumps({"object": "list", "data": [{"id": NAME, "object": "model", "root": MODEL}]}).encode())
            elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
                await _stream(writer, json.loads(raw), chat="chat" in path)
            else:
                _reply(writer, "404 Not Found", b"")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _stream(writer, req, chat):
    n = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
    STATE["running"] += 1
    try:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        await asyncio.sleep(TTFT)
        for i in range(n):
            choice = {"index": 0, "delta": {"content": " kelime"}} if chat else {"index": 0, "text": " kelime"}
            choice["finish_reason"] = "length" if i == n - 1 else None
            writer.write(_chunk(b"data: " + json.dumps({"id": "x", "model": NAME, "choices": [choice]}).encode() + b"\n\n"))
            await writer.drain()
            if i < n - 1:
                await asyncio.sleep(ITL)
        usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
        writer.write(_chunk(b"data: " + json.dumps({"id": "x", "choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n") + b"0\r\n\r\n")
    finally:
        STATE["running"] -= 1


async def main():
    cache_vars = ("HOME", "HF_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR",
                  "FLASHINFER_WORKSPACE_BASE", "XDG_CACHE_HOME")
    record = {"argv": ARGV, "uid": os.getuid(), "gid": os.getgid(),
              "writable": {v: _writable(os.environ[v]) for v in cache_vars if v in os.environ},
              "api_key_set": bool(KEY)}
    print("STANDIN_OPENAI " + json.dumps(record), flush=True)
    server = await asyncio.start_server(handle, HOST, PORT, backlog=2048)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with server:
        await stop


if __name__ == "__main__":
    asyncio.run(main())
