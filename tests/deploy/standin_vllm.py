#!/usr/bin/env python3
"""A stand-in `vllm` for image and manifest tests: it fails the way vLLM fails.

Installed as /usr/local/bin/vllm in the local test base image (`vllm_base_image` in
tests/deploy/conftest.py), so images rendered by `trdeploy build` and pods rendered by `trdeploy
render-k8s` run end to end without a GPU, CUDA or weights. Python 3 stdlib only.

Like vLLM 0.25's `vllm serve MODEL [flags]`:
- an unknown flag, or a flag without its value, is an argparse error (exit 2); the last value of a
  repeated flag wins;
- the model must exist: a local path that is not a folder with config.json fails (exit 1); a hub id
  with HF_HUB_OFFLINE=1 must already be in $HF_HOME/hub (a hub id while online is "downloaded" into
  $HF_HOME/hub, which must be writable);
- the API key comes from --api-key, else $VLLM_API_KEY: then every /v1 route answers 401 without
  `Authorization: Bearer <key>`, while /health and /metrics stay open;
- a request for a model name it does not serve answers 404 (vLLM's NotFoundError body);
- GET /health answers 503 for $STANDIN_STARTUP_DELAY_S seconds (default 0), then 200;
- GET /metrics: vLLM 0.25 names with the model_name label (running, waiting, KV use, counters);
- POST /v1/completions and /v1/chat/completions stream max_tokens SSE chunks ($STANDIN_TTFT_S,
  $STANDIN_ITL_S apart), then a usage chunk and [DONE]; `stream: false` answers in one body;
- SIGTERM, as vLLM 0.25 (entrypoints/launcher.py, v1/engine/core.py) with `--shutdown-timeout N` (default 0):
  0 is mode "abort": requests in flight end at once with finish_reason "abort"; above 0 is "drain": a request
  that arrives from then on ends at once with finish_reason "abort" (the engine refuses it), those in flight
  run on for up to N seconds (then abort), and the process exits when none is left.

On start it prints one line, `STANDIN_VLLM {json}` (argv, env, uid, gid, cwd, whether each cache
directory is writable), also written to $STANDIN_RECORD if set. SIGTERM stops it.
"""

import asyncio
import json
import os
import signal
import sys
import time

CACHE_VARS = ("HOME", "XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "FLASHINFER_WORKSPACE_BASE", "TRITON_CACHE_DIR",
              "TORCHINDUCTOR_CACHE_DIR", "HF_HOME")
# `vllm serve` flags the stand-in accepts: those trdeploy renders and common server flags (vLLM 0.25 names).
VALUE_FLAGS = {
    "--served-model-name", "--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size", "--dtype",
    "--max-model-len", "--max-num-seqs", "--max-num-batched-tokens", "--gpu-memory-utilization", "--kv-cache-dtype",
    "--quantization", "--host", "--port", "--api-key", "--distributed-executor-backend", "--shutdown-timeout",
    "--uvicorn-log-level", "--revision", "--tokenizer", "--seed", "--block-size", "--swap-space", "--download-dir",
    "--load-format", "--root-path", "--max-log-len",
}
ABORT = "abort"
BOOL_FLAGS = {"--enable-prefix-caching", "--enable-chunked-prefill", "--trust-remote-code", "--disable-log-requests",
              "--disable-log-stats", "--enforce-eager", "--enable-log-requests"}


def usage_error(message):
    print("usage: vllm serve [model_tag] [options]", file=sys.stderr)
    print(f"vllm serve: error: {message}", file=sys.stderr)
    return 2


def parse(argv):
    """(model, {flag: value}) or an exit code, as vLLM's argparse would."""
    if not argv or argv[0] != "serve":
        return usage_error("only `vllm serve` is supported by the stand-in")
    rest = argv[1:]
    if not rest or rest[0].startswith("-"):
        return usage_error("the following arguments are required: model_tag")
    model, flags, i = rest[0], {}, 1
    while i < len(rest):
        word = rest[i]
        name, eq, inline = word.partition("=")
        bare = name[5:] if name.startswith("--no-") else None
        if name in BOOL_FLAGS and not eq:
            flags[name] = True
            i += 1
        elif bare is not None and "--" + bare in BOOL_FLAGS and not eq:
            flags["--" + bare] = False
            i += 1
        elif name in VALUE_FLAGS:
            if eq:
                flags[name] = inline
                i += 1
            elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                flags[name] = rest[i + 1]
                i += 2
            else:
                return usage_error(f"argument {name}: expected one argument")
        else:
            return usage_error(f"unrecognized arguments: {word}")
    return model, flags


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


def find_model(model):
    """None when vLLM would find the weights, else its error."""
    if model.startswith(("/", "./", "../")) or os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            return f"Invalid repository ID or local directory specified: '{model}'"
        return None
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("HOME", "/root"), ".cache", "huggingface")
    cached = os.path.join(hf_home, "hub", "models--" + model.replace("/", "--"))
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        if not os.path.isdir(cached):
            return f"We couldn't connect to the Hub and {model} is not in the cache at {hf_home} (HF_HUB_OFFLINE=1)"
        return None
    try:  # "download": vLLM writes the snapshot into HF_HOME on the cache volume
        os.makedirs(os.path.join(cached, "snapshots", "standin"), exist_ok=True)
        with open(os.path.join(cached, "snapshots", "standin", "config.json"), "w") as handle:
            handle.write("{}")
    except OSError as exc:
        return f"cannot write the hub cache {hf_home}: {exc}"
    return None


ARGV = sys.argv[1:]
STATE = {"running": 0, "prompt_tokens": 0, "generation_tokens": 0, "success": 0, "shutting_down": False, "abort": False}


def main():
    record = {
        "argv": ["vllm", *ARGV],
        "env": dict(os.environ),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": os.getcwd(),
        "writable": {var: _writable(os.environ[var]) for var in CACHE_VARS if var in os.environ},
    }
    line = json.dumps(record, sort_keys=True)
    print("STANDIN_VLLM " + line, flush=True)
    if os.environ.get("STANDIN_RECORD"):
        with open(os.environ["STANDIN_RECORD"], "w") as handle:
            handle.write(line)
    parsed = parse(ARGV)
    if isinstance(parsed, int):
        return parsed
    model, flags = parsed
    problem = find_model(model)
    if problem:
        print(f"ERROR standin vllm: {problem}", file=sys.stderr, flush=True)
        return 1
    config = {
        "model": model,
        "served": flags.get("--served-model-name", model),
        "port": int(flags.get("--port", "8000")),
        "host": flags.get("--host") or "0.0.0.0",
        "key": flags.get("--api-key") or os.environ.get("VLLM_API_KEY") or None,
        "ready_at": time.monotonic() + float(os.environ.get("STANDIN_STARTUP_DELAY_S", "0")),
        "ttft": float(os.environ.get("STANDIN_TTFT_S", "0.02")),
        "itl": float(os.environ.get("STANDIN_ITL_S", "0.002")),
        "shutdown_timeout": int(flags.get("--shutdown-timeout", "0")),
    }
    print(f"standin vllm: serving {config['served']} on port {config['port']}", flush=True)
    asyncio.run(serve(config))
    return 0


def _chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def _reply(writer, status, body, ctype="application/json"):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    writer.write(b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (status.encode(), ctype.encode(), len(body), body))


def _metrics(cfg):
    escaped = cfg["served"].replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    labels = f'{{engine="0",model_name="{escaped}"}}'
    lines = [
        "# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{labels} {STATE['running']}",
        "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{labels} 0",
        "# TYPE vllm:kv_cache_usage_perc gauge", f"vllm:kv_cache_usage_perc{labels} {min(1.0, STATE['running'] / 64):.4f}",
        "# TYPE vllm:prompt_tokens_total counter", f"vllm:prompt_tokens_total{labels} {STATE['prompt_tokens']}",
        "# TYPE vllm:generation_tokens_total counter", f"vllm:generation_tokens_total{labels} {STATE['generation_tokens']}",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{engine="0",finished_reason="length",model_name="{escaped}"}} {STATE["success"]}',
    ]
    return ("\n".join(lines) + "\n").encode()


def _not_found(name):
    return {"error": {"message": f"The model `{name}` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}}


async def serve(cfg):
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
                path = path.split("?", 1)[0]
                if path == "/health":
                    ready = time.monotonic() >= cfg["ready_at"]
                    _reply(writer, "200 OK" if ready else "503 Service Unavailable", b"")
                elif path == "/metrics":
                    _reply(writer, "200 OK", _metrics(cfg), "text/plain; version=0.0.4")
                elif path.startswith("/v1/") and cfg["key"] and auth != f"Bearer {cfg['key']}":
                    _reply(writer, "401 Unauthorized", {"error": "Unauthorized"})
                elif method == "GET" and path == "/v1/models":
                    _reply(writer, "200 OK", {"object": "list", "data": [{"id": cfg["served"], "object": "model", "root": cfg["model"]}]})
                elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
                    try:
                        req = json.loads(raw)
                    except ValueError:
                        _reply(writer, "400 Bad Request", {"error": {"message": "invalid JSON", "code": 400}})
                    else:
                        if req.get("model") != cfg["served"]:
                            _reply(writer, "404 Not Found", _not_found(req.get("model")))
                        else:
                            await _answer(writer, req, cfg, chat="chat" in path)
                else:
                    _reply(writer, "404 Not Found", {"detail": "Not Found"})
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, cfg["host"], cfg["port"], backlog=2048)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with server:
        await stop
        timeout = cfg["shutdown_timeout"]
        STATE["shutting_down"] = True
        STATE["abort"] = timeout == 0
        print(f"standin vllm: SIGTERM, mode={'abort' if timeout == 0 else 'drain'} timeout={timeout}s, {STATE['running']} in flight", flush=True)
        deadline = time.monotonic() + timeout
        while STATE["running"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        STATE["abort"] = True
        while STATE["running"]:  # the aborted ones send their last chunk
            await asyncio.sleep(0.01)
        print(f"standin vllm: stopped ({STATE['success']} requests finished)", flush=True)


async def _answer(writer, req, cfg, chat):
    n = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
    prompt = req.get("prompt") if not chat else " ".join(str(m.get("content", "")) for m in req.get("messages", []))
    prompt_tokens = len(prompt) if isinstance(prompt, list) else max(1, len(str(prompt).split()))
    STATE["running"] += 1
    try:
        # Shutting down: the engine refuses a new request (it finishes at once, aborted).
        sent = 0 if STATE["shutting_down"] else None
        if sent is None:
            await asyncio.sleep(cfg["ttft"])
        if not req.get("stream"):
            if sent is None:
                await asyncio.sleep(cfg["itl"] * (n - 1))
            done = n if sent is None and not STATE["abort"] else 0
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": done + prompt_tokens}
            text = " kelime" * done
            choice = {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
            choice["finish_reason"] = "length" if done == n else ABORT
            _reply(writer, "200 OK", {"id": "x", "model": cfg["served"], "choices": [choice], "usage": usage})
            n = done
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            done, reason = 0, ABORT
            while sent is None and done < n:
                if STATE["abort"]:
                    break
                done += 1
                last = done == n
                if last:
                    reason = "length"
                choice = {"index": 0, "delta": {"content": " kelime"}} if chat else {"index": 0, "text": " kelime"}
                choice["finish_reason"] = "length" if last else None
                writer.write(_chunk(b"data: " + json.dumps({"id": "x", "model": cfg["served"], "choices": [choice]}).encode() + b"\n\n"))
                await writer.drain()
                if not last:
                    await asyncio.sleep(cfg["itl"])
            if reason == ABORT:
                choice = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
                choice["finish_reason"] = ABORT
                writer.write(_chunk(b"data: " + json.dumps({"id": "x", "model": cfg["served"], "choices": [choice]}).encode() + b"\n\n"))
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": done + prompt_tokens}
            writer.write(_chunk(b"data: " + json.dumps({"id": "x", "choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
            n = done
        STATE["prompt_tokens"] += prompt_tokens
        STATE["generation_tokens"] += n
        STATE["success"] += 1
    finally:
        STATE["running"] -= 1


if __name__ == "__main__":
    sys.exit(main())
