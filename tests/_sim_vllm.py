"""A stand-in for vLLM's OpenAI server that schedules like vLLM and runs in real time, with a known step law.

    python tests/_sim_vllm.py --port P --config CONFIG.json

It is the test double `trdeploy calibrate` is checked against: calibrate must recover the law's parameters
from a sweep and predict loads it did not measure. It fails the way vLLM fails: 401 without the API key on
/v1 (while /health, /metrics and /version stay open), 404 with vLLM's error body for a model it does not serve,
400 for a prompt longer than max_model_len.

Scheduling (written for this double, not shared with trdeploy): one engine step at a time, each scheduled when
the one before it ends (synchronously, as trdeploy's model does; vLLM 0.25 schedules one step ahead by default,
trdeploy.sizing.batching's docstring says what that changes and why the model does not); running requests
first (a decode token each, or the rest of a chunked prompt), then waiting ones in arrival order while the
step's token budget (max_num_batched_tokens) lasts, fewer than max_num_seqs run and the KV cache (num_gpu_blocks
x 16) has blocks; a decode that finds no free block preempts the last admitted request (recomputed later).
Prefix caching as vLLM's: full 16-token blocks of prompts, hashed in a chain, reused up to the block before
the last token; hits and queries are counted in tokens. A step lasts

    overhead + per_seq x seqs + max(weight_ms, tokens x gemm_ms + attention FLOP units x attn_ms) + context x kv_ms

milliseconds of wall time (the config's "law", times "time_scale"); the tokens it produced are then streamed,
one SSE chunk per request, each " kelime" (a Turkish word), with usage in a last chunk when asked.
Text prompts are "tokenized" as one token per 3 UTF-8 bytes (stable ids from their bytes).

/metrics: vllm:num_requests_running/waiting, vllm:kv_cache_usage_perc, vllm:prompt_tokens_total,
vllm:generation_tokens_total, vllm:request_success_total, vllm:num_preemptions_total,
vllm:prefix_cache_queries_total/hits_total, the _sum and _count of vllm:request_queue_time_seconds,
vllm:request_prefill_time_seconds and vllm:time_to_first_token_seconds (queued when the engine takes the
request in at a step boundary, as vLLM's engine core does; all with model_name and engine labels), and
vllm:cache_config_info with CacheConfig's labels (num_gpu_blocks, block_size, kv_cache_size_tokens,
gpu_memory_utilization, cache_dtype, enable_prefix_caching, engine).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

BLOCK = 16


@dataclass
class Req:
    rid: int
    prompt: list[int]
    max_tokens: int
    stream_q: asyncio.Queue
    computed: int = 0  # tokens in the KV cache
    out: int = 0  # tokens generated
    cached: int = 0
    blocks: int = 0
    prefill_left: int = 0
    arrival: float = field(default_factory=time.monotonic)
    queued: float | None = None  # the engine took it in (a step boundary, as vLLM's engine core does)
    scheduled: float | None = None  # first scheduled

    @property
    def tokens(self) -> int:
        return len(self.prompt) + self.out


class Engine:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        law = cfg["law"]
        self.scale = float(cfg.get("time_scale", 1.0))
        self.law = law
        self.max_seqs, self.budget = cfg["max_num_seqs"], cfg["max_num_batched_tokens"]
        self.num_blocks = cfg["num_gpu_blocks"]
        self.max_model_len = cfg["max_model_len"]
        self.prefix_caching = cfg.get("enable_prefix_caching", True)
        self.waiting: deque[Req] = deque()
        self.running: list[Req] = []
        self.free_blocks = self.num_blocks
        self.cache: OrderedDict[bytes, None] = OrderedDict()  # block hash chain -> present (LRU)
        self.counters = {"prompt_tokens": 0, "generation_tokens": 0, "request_success": 0, "num_preemptions": 0,
                         "prefix_cache_queries": 0, "prefix_cache_hits": 0}  # fmt: skip
        self.hist = {k: [0.0, 0] for k in ("request_queue_time_seconds", "request_prefill_time_seconds", "time_to_first_token_seconds")}
        self.wake = asyncio.Event()
        self.next_id = 0

    # --- prefix cache ---------------------------------------------------------------------------------------
    @staticmethod
    def _chain(tokens: list[int], n_blocks: int) -> list[bytes]:
        out, h = [], b""
        for b in range(n_blocks):
            h = hashlib.blake2b(h + json.dumps(tokens[b * BLOCK : (b + 1) * BLOCK]).encode(), digest_size=12).digest()
            out.append(h)
        return out

    def lookup(self, r: Req) -> int:
        if not self.prefix_caching:
            return 0
        usable = (len(r.prompt) - 1) // BLOCK
        hits = 0
        for h in self._chain(r.prompt, usable):
            if h not in self.cache:
                break
            self.cache.move_to_end(h)
            hits += 1
        return hits * BLOCK

    def remember(self, r: Req) -> None:
        if not self.prefix_caching:
            return
        for h in self._chain(r.prompt, len(r.prompt) // BLOCK):
            self.cache[h] = None
            self.cache.move_to_end(h)
        while len(self.cache) > self.num_blocks:
            self.cache.popitem(last=False)

    # --- scheduling -------------------------------------------------------------------------------------------
    def need_blocks(self, r: Req, tokens_after: int) -> int:
        return max(0, -(-tokens_after // BLOCK) - r.blocks)

    def add(self, prompt: list[int], max_tokens: int) -> Req:
        r = Req(self.next_id, prompt, max_tokens, asyncio.Queue())
        self.next_id += 1
        self.waiting.append(r)
        self.wake.set()
        return r

    def preempt(self) -> None:
        victim = self.running.pop()
        self.free_blocks += victim.blocks
        victim.blocks = victim.computed = 0
        victim.prefill_left = victim.tokens
        self.waiting.appendleft(victim)
        self.counters["num_preemptions"] += 1

    def schedule(self) -> tuple[list[tuple[Req, int]], int, int, float, float]:
        """(scheduled (request, new tokens), tokens, seqs, attention units, context tokens read)."""
        now = time.monotonic()
        for r in self.waiting:
            if r.queued is None:
                r.queued = now
        budget = self.budget
        plan: list[tuple[Req, int]] = []
        i = 0
        while i < len(self.running) and budget > 0:
            r = self.running[i]
            n = 1 if r.prefill_left == 0 else min(r.prefill_left, budget)
            need = self.need_blocks(r, r.computed + n)
            while need > self.free_blocks and self.running[-1] is not r:
                self.preempt()
            if need > self.free_blocks:  # r itself is the last: preempt it
                self.preempt()
                break
            self.free_blocks -= need
            r.blocks += need
            plan.append((r, n))
            budget -= n
            i += 1
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            r = self.waiting[0]
            if r.computed == 0 and r.out == 0 and r.prefill_left == 0:  # new: look up the prefix cache
                r.cached = self.lookup(r)
                self.counters["prefix_cache_queries"] += len(r.prompt)
                self.counters["prefix_cache_hits"] += r.cached
                r.computed = r.cached
                r.prefill_left = len(r.prompt) - r.cached
            elif r.prefill_left == 0:
                r.prefill_left = r.tokens - r.computed
            n = min(r.prefill_left, budget)
            need = self.need_blocks(r, r.computed + n)
            if need > self.free_blocks:
                break
            self.waiting.popleft()
            if r.scheduled is None:
                r.scheduled = now
            self.free_blocks -= need
            r.blocks += need
            self.running.append(r)
            plan.append((r, n))
            budget -= n
        tokens = sum(n for _, n in plan)
        attn = sum(n * (r.computed + n / 2) for r, n in plan if r.prefill_left)
        ctx = sum(r.computed + (1 if r.prefill_left == 0 else 0) for r, _ in plan)
        return plan, tokens, len(plan), attn, ctx

    def step_ms(self, tokens: int, seqs: int, attn: float, ctx: float) -> float:
        law = self.law
        gemm = tokens * law["gemm_ms_per_token"] + attn * law["attn_ms_per_token_ctx"]
        return self.scale * (law["step_overhead_ms"] + seqs * law["per_sequence_ms"] + max(law["weight_ms"], gemm) + ctx * law["kv_ms_per_token"])

    async def loop(self) -> None:
        next_start = time.monotonic()
        while True:
            if not self.running and not self.waiting:
                self.wake.clear()
                await self.wake.wait()
                next_start = time.monotonic()
            plan, tokens, seqs, attn, ctx = self.schedule()
            if not plan:
                await asyncio.sleep(0.001)
                continue
            end = max(next_start, time.monotonic() - 0.002) + self.step_ms(tokens, seqs, attn, ctx) / 1000.0
            delay = end - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_start = end
            for r, n in plan:
                was_prefill = r.prefill_left > 0
                r.computed += n
                if was_prefill:
                    r.prefill_left -= n
                    self.counters["prompt_tokens"] += n
                    if r.prefill_left > 0:
                        continue
                    if r.out == 0:
                        self.remember(r)
                    if r.out > 0:  # a preempted request caught up: its next token comes now
                        pass
                r.out += 1
                if r.out == 1:  # vLLM's request histograms (sum and count): queue, prefill, time to first token
                    for key, value in (("request_queue_time_seconds", r.scheduled - r.queued), ("request_prefill_time_seconds", end - r.scheduled),
                                       ("time_to_first_token_seconds", end - r.arrival)):  # fmt: skip
                        self.hist[key][0] += value
                        self.hist[key][1] += 1
                self.counters["generation_tokens"] += 1
                done = r.out >= r.max_tokens
                r.stream_q.put_nowait(("token", done))
                if done:
                    self.running.remove(r)
                    self.free_blocks += r.blocks
                    r.blocks = 0
                    self.counters["request_success"] += 1


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Server:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.engine = Engine(cfg)
        self.model = cfg.get("served_model_name", "m")
        self.api_key = cfg.get("api_key")

    def metrics(self) -> bytes:
        e, labels = self.engine, f'model_name="{self.model}",engine="0"'
        lines = [
            f"vllm:num_requests_running{{{labels}}} {len(e.running)}",
            f"vllm:num_requests_waiting{{{labels}}} {len(e.waiting)}",
            f"vllm:kv_cache_usage_perc{{{labels}}} {1 - e.free_blocks / e.num_blocks:.6f}",
        ]
        for key, value in e.counters.items():
            lines.append(f"vllm:{key}_total{{{labels}}} {float(value)}")
        for key, (total, count) in e.hist.items():
            lines.append(f"vllm:{key}_sum{{{labels}}} {total}")
            lines.append(f"vllm:{key}_count{{{labels}}} {float(count)}")
        info = {"block_size": BLOCK, "cache_dtype": "auto", "enable_prefix_caching": str(e.prefix_caching), "engine": "0",
                "gpu_memory_utilization": self.cfg.get("gpu_memory_utilization", 0.9), "num_gpu_blocks": e.num_blocks,
                "kv_cache_size_tokens": e.num_blocks * BLOCK, "num_cpu_blocks": None}  # fmt: skip
        lines.append("vllm:cache_config_info{" + ",".join(f'{k}="{v}"' for k, v in info.items()) + "} 1.0")
        return ("\n".join(lines) + "\n").encode()

    @staticmethod
    def tokens(prompt) -> list[int]:
        if isinstance(prompt, list):
            return [int(t) for t in prompt]
        raw = str(prompt).encode()
        return [int.from_bytes(raw[i : i + 3], "little") for i in range(0, len(raw), 3)] or [0]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, path = lines[0].decode().split(" ")[:2]
                hdrs = {}
                for line in lines[1:]:
                    k, _, v = line.decode("latin-1").partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(hdrs.get("content-length", 0) or 0))
                await self.route(method, path, hdrs, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def reply(self, writer, status: str, body: bytes, ctype: str = "application/json") -> None:
        writer.write(f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()

    async def route(self, method, path, hdrs, body, writer) -> None:
        path = path.split("?")[0]
        if method == "GET" and path == "/health":
            return await self.reply(writer, "200 OK", b"")
        if method == "GET" and path == "/metrics":
            return await self.reply(writer, "200 OK", self.metrics(), "text/plain; version=0.0.4")
        if method == "GET" and path == "/version":
            return await self.reply(writer, "200 OK", json.dumps({"version": self.cfg.get("version", "0.25.0")}).encode())
        if path.startswith("/v1/") and self.api_key and hdrs.get("authorization") != f"Bearer {self.api_key}":
            return await self.reply(writer, "401 Unauthorized", json.dumps({"error": "Unauthorized"}).encode())
        if method == "GET" and path == "/v1/models":
            card = {"id": self.model, "object": "model", "root": self.model, "max_model_len": self.engine.max_model_len}
            return await self.reply(writer, "200 OK", json.dumps({"object": "list", "data": [card]}).encode())
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            return await self.reply(writer, "404 Not Found", json.dumps({"detail": "Not Found"}).encode())
        req = json.loads(body or b"{}")
        if req.get("model") != self.model:
            err = {"error": {"message": f"The model `{req.get('model')}` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}}
            return await self.reply(writer, "404 Not Found", json.dumps(err).encode())
        chat = path.endswith("chat/completions")
        prompt = self.tokens("\n".join(m.get("content", "") for m in req.get("messages", [])) if chat else req.get("prompt", ""))
        max_tokens = int(req.get("max_tokens") or 16)
        if len(prompt) + max_tokens > self.engine.max_model_len:
            err = {"error": {"message": "This model's maximum context length is exceeded.", "type": "BadRequestError", "code": 400}}
            return await self.reply(writer, "400 Bad Request", json.dumps(err).encode())
        r = self.engine.add(prompt, max_tokens)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            _, done = await r.stream_q.get()
            choice = {"index": 0, "delta": {"content": " kelime"}} if chat else {"index": 0, "text": " kelime"}
            choice["finish_reason"] = "length" if done else None
            writer.write(_chunk(b"data: " + json.dumps({"id": f"cmpl-{r.rid}", "model": self.model, "choices": [choice]}).encode() + b"\n\n"))
            await writer.drain()
            if done:
                break
        tail = b""
        if (req.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": len(prompt), "completion_tokens": r.out, "total_tokens": len(prompt) + r.out}
            tail = b"data: " + json.dumps({"id": f"cmpl-{r.rid}", "model": self.model, "choices": [], "usage": usage}).encode() + b"\n\n"
        writer.write(_chunk(tail + b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--config", required=True)
    args = ap.parse_args()
    with open(args.config) as fh:
        cfg = json.load(fh)
    server = Server(cfg)
    loop_task = asyncio.create_task(server.engine.loop())
    srv = await asyncio.start_server(server.handle, "127.0.0.1", args.port, backlog=2048)
    async with srv:
        await asyncio.gather(srv.serve_forever(), loop_task)


if __name__ == "__main__":
    asyncio.run(main())
