"""A streaming server with exactly known timing, for checking the client's own measurement error.

`python _timed_sse_server.py PORT TTFT_S ITL_S` answers POST .../completions and .../chat/completions
with `max_tokens` SSE chunks (one word, " kelime", per chunk): the first after TTFT_S seconds, the next
ones ITL_S apart on a fixed schedule, then a usage chunk and [DONE]; GET .../models lists model `m`.
It is a plain asyncio HTTP/1.1 server (keep-alive, chunked bodies) so its own overhead stays small
next to the timings it promises. It runs no model: the bench tests that need an inference server use
`transformers serve` and tests/_vllm_like_server.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

PORT, TTFT, ITL = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode()
            method, path = request_line.split(" ")[:2]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            raw = await reader.readexactly(length) if length else b""
            if method == "GET" and path.endswith("/models"):
                body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "root": "m"}]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                continue
            if method == "GET":
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                continue
            req = json.loads(raw)
            n = int(req.get("max_tokens") or 16)
            chat = "chat" in path
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            start = time.perf_counter()
            await asyncio.sleep(TTFT)
            due = start + TTFT
            for i in range(n):
                choice = {"index": 0, "delta": {"content": " kelime"}} if chat else {"index": 0, "text": " kelime"}
                choice["finish_reason"] = "length" if i == n - 1 else None
                writer.write(_chunk(b"data: " + json.dumps({"id": "x", "model": "m", "choices": [choice]}).encode() + b"\n\n"))
                await writer.drain()
                due += ITL
                delay = due - time.perf_counter()
                if delay > 0 and i < n - 1:
                    await asyncio.sleep(delay)
            prompt = req.get("prompt")
            usage = {"prompt_tokens": len(prompt) if isinstance(prompt, list) else 1, "completion_tokens": n}
            tail = b"data: " + json.dumps({"id": "x", "choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n"
            writer.write(_chunk(tail) + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, backlog=2048)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
