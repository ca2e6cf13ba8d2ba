"""The transport: one streaming request to an OpenAI-compatible server, timed (what guidellm calls a backend).

Timing follows vLLM's request functions (vllm/benchmarks/lib/endpoint_request_func.py): the clock
starts just before the request is sent; each SSE event is time-stamped when parsed; the first token
chunk gives TTFT, each later one an ITL gap, and the last one the end-to-end latency.

Two deliberate differences, both for servers other than vLLM, neither changing what vLLM's own
server measures: a chat chunk that only announces the assistant role (no content) and a closing
chunk with an empty delta and a finish_reason carry no token, so they are not token chunks
(vLLM sends its role chunk together with the first token; `transformers serve` sends it before
generating); and `usage` is read from any chunk that has it, not only from chunks without choices.

Every failure (timeout, refused or dropped connection, HTTP 4xx/5xx, malformed or error SSE events)
becomes a counted error of its kind; nothing here raises for a bad response. When requests are sent is
trdeploy.bench.scheduler's business. Only httpx and numpy are needed (no aiohttp, no tokenizer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx

from trdeploy.bench.metrics import STATUS_CANCELLED, STATUS_FAILED, STATUS_OK, RequestResult, WordCounter
from trdeploy.bench.request import Api


@dataclass(frozen=True)
class Endpoint:
    """Where and how to send requests."""

    base_url: str  # the server root, e.g. http://localhost:8000 (the /v1 part is added)
    api: Api
    model: str
    api_key: str | None = None
    timeout_s: float = 600.0
    v1_prefix: str = "/v1"

    @property
    def url(self) -> str:
        path = "/chat/completions" if self.api == "chat" else "/completions"
        return self.base_url + self.v1_prefix + path

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass(frozen=True)
class Sampling:
    """What every request asks for beyond its prompt. vLLM extensions are sent only when set."""

    max_tokens: int | None = None
    ignore_eos: bool = False
    min_tokens: int | None = None
    temperature: float | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)


def build_body(endpoint: Endpoint, sampling: Sampling, prompt_fields: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": endpoint.model, **prompt_fields, "stream": True,
                            "stream_options": {"include_usage": True}}  # fmt: skip
    if sampling.max_tokens is not None:
        # `max_tokens` works on both endpoints of vLLM, transformers serve, TGI and OpenAI-style gateways.
        body["max_tokens"] = sampling.max_tokens
    if sampling.ignore_eos:
        body["ignore_eos"] = True
    if sampling.min_tokens is not None:
        body["min_tokens"] = sampling.min_tokens
    if sampling.temperature is not None:
        body["temperature"] = sampling.temperature
    body.update(sampling.extra_body)
    return body


class SSEParser:
    """Incremental Server-Sent Events parser: bytes in, the `data` payload of each complete event out."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events: list[bytes] = []
        while True:
            cut = buf.find(b"\n\n")
            if cut < 0:
                break
            raw, buf = buf[:cut], buf[cut + 2 :]
            payload = self._data_of(raw)
            if payload is not None:
                events.append(payload)
        self._buf = buf
        return events

    def close(self) -> list[bytes]:
        """An unterminated last event (servers that end the stream without a blank line)."""
        raw, self._buf = self._buf.strip(), b""
        if not raw:
            return []
        payload = self._data_of(raw)
        return [payload] if payload is not None else []

    @staticmethod
    def _data_of(raw: bytes) -> bytes | None:
        if raw.startswith(b"data:") and b"\n" not in raw:  # the common case: one data line
            return raw[5:].lstrip(b" ")
        lines = [line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
        return b"\n".join(lines) if lines else None  # comments (":") and other fields carry no data


class _ConnectFailed(Exception):
    """The TCP connection could not be opened (refused, unreachable, unknown host)."""


class _ProtocolError(Exception):
    """The server broke HTTP/1.1 framing (bad status line, bad chunk size, body cut short)."""


class _Dechunker:
    """Decodes an HTTP/1.1 chunked body incrementally; `done` once the last chunk and trailers are read."""

    __slots__ = ("_buf", "_remaining", "_state", "done")
    _SIZE, _DATA, _CRLF, _TRAILER = 0, 1, 2, 3

    def __init__(self) -> None:
        self._buf = b""
        self._state = self._SIZE
        self._remaining = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        i, n = 0, len(buf)
        while not self.done:
            if self._state == self._DATA:
                take = min(self._remaining, n - i)
                if take <= 0:
                    break
                out.append(buf[i : i + take])
                i += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self._CRLF
            elif self._state == self._CRLF:
                if n - i < 2:
                    break
                i += 2
                self._state = self._SIZE
            else:
                j = buf.find(b"\r\n", i)
                if j < 0:
                    if n - i > 1024:
                        raise _ProtocolError("chunk size line too long")
                    break
                line = buf[i:j]
                i = j + 2
                if self._state == self._TRAILER:
                    if not line:
                        self.done = True
                    continue
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _ProtocolError(f"bad chunk size {line[:40]!r}") from None
                if size == 0:
                    self._state = self._TRAILER
                else:
                    self._remaining, self._state = size, self._DATA
        self._buf = buf[i:]
        return b"".join(out) if len(out) != 1 else out[0]


class _RawResponse:
    """The body side of one response on a raw connection (the interface send_request uses)."""

    def __init__(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], status: int, headers: dict[str, str]) -> None:
        self._reader, self._writer = conn
        self.status_code = status
        self._headers = headers
        self.complete = False
        te = headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in te
        self._length = None if self._chunked else (int(headers["content-length"]) if "content-length" in headers else None)
        if self._length == 0:
            self.complete = True

    async def aiter_bytes(self):
        reader = self._reader
        if self.complete:
            return
        if self._chunked:
            dechunker = _Dechunker()
            while not dechunker.done:
                data = await reader.read(65536)
                if not data:
                    raise _ProtocolError("connection closed inside a chunked body")
                body = dechunker.feed(data)
                if body:
                    yield body
            self.complete = True
            return
        remaining = self._length
        while remaining is None or remaining > 0:
            data = await reader.read(65536 if remaining is None else min(65536, remaining))
            if not data:
                if remaining is None:  # body delimited by the connection closing
                    break
                raise _ProtocolError("connection closed before the announced body length")
            if remaining is not None:
                remaining -= len(data)
            yield data
        self.complete = remaining is not None

    async def aread(self, limit: int = 65536) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for data in self.aiter_bytes():
            parts.append(data)
            size += len(data)
            if size >= limit:
                break
        return b"".join(parts)

    @property
    def reusable(self) -> bool:
        return self.complete and self._headers.get("connection", "").lower() != "close"


class RawTransport:
    """A minimal HTTP/1.1 client on asyncio streams for plain http:// (keep-alive pool, chunked bodies).

    Why: at vLLM speeds a benchmark client parses thousands of SSE events per second on one core;
    httpx (h11 + anyio) costs several times more per event than this, and a saturated client loop
    inflates the latencies it measures. TLS and proxies go through httpx instead (`HttpxTransport`).
    """

    def __init__(self, base_url: str, connect_timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 80
        self.host_header = parts.netloc.encode("latin-1")
        self.connect_timeout = connect_timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        except TimeoutError:
            raise _ConnectFailed(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise _ConnectFailed(f"{type(exc).__name__}: {exc}") from None

    @contextlib.asynccontextmanager
    async def post_stream(self, url: str, content: bytes, headers: dict[str, str]):
        path = urlsplit(url)
        target = (path.path or "/") + (f"?{path.query}" if path.query else "")
        head = [f"POST {target} HTTP/1.1", f"Host: {self.host_header.decode('latin-1')}", f"Content-Length: {len(content)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + content
        conn = None
        for attempt in (0, 1):
            reused = False
            while self._idle:
                candidate = self._idle.pop()
                if not candidate[0].at_eof() and not candidate[1].is_closing():
                    conn, reused = candidate, True
                    break
                candidate[1].close()
            if conn is None:
                conn = await self._connect()
            reader, writer = conn
            try:
                writer.write(request)
                await writer.drain()
                status_head = await reader.readuntil(b"\r\n\r\n")
                break
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError) as exc:
                writer.close()
                conn = None
                # A kept-alive connection the server closed meanwhile: retry once on a fresh one.
                if reused and attempt == 0 and not isinstance(exc, asyncio.LimitOverrunError):
                    continue
                if isinstance(exc, asyncio.LimitOverrunError):
                    raise _ProtocolError("response headers too large") from None
                raise
        lines = status_head[:-4].decode("latin-1").split("\r\n")
        try:
            version, code = lines[0].split(" ", 2)[:2]
            status = int(code)
        except ValueError:
            writer.close()
            raise _ProtocolError(f"bad status line {lines[0][:60]!r}") from None
        hdrs: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            hdrs[name.strip().lower()] = value.strip()
        response = _RawResponse((reader, writer), status, hdrs)
        try:
            yield response
        finally:
            if response.reusable and version == "HTTP/1.1":
                self._idle.append((reader, writer))
            else:
                writer.close()

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


class HttpxTransport:
    """httpx for https:// and proxied URLs."""

    def __init__(self, endpoint: Endpoint, concurrency: int | None) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency or 256)
        timeout = httpx.Timeout(endpoint.timeout_s, connect=min(endpoint.timeout_s, 30.0))
        self.client = httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=True)

    def post_stream(self, url: str, content: bytes, headers: dict[str, str]):
        return self.client.stream("POST", url, content=content, headers=headers)

    async def aclose(self) -> None:
        await self.client.aclose()


Transport = RawTransport | HttpxTransport


def make_client(endpoint: Endpoint, concurrency: int | None, kind: str = "auto") -> Transport:
    """The raw transport for plain http:// without a proxy, httpx otherwise (or as `kind` says)."""
    if kind not in ("auto", "raw", "httpx"):
        raise ValueError(f"unknown HTTP client {kind!r}")
    parts = urlsplit(endpoint.base_url)
    if kind == "auto":
        proxied = bool(getproxies().get("http")) and not proxy_bypass(parts.hostname or "")
        # Credentials in the URL (user:password@) are sent as basic auth by httpx; the raw client sends none.
        kind = "raw" if parts.scheme == "http" and not proxied and "@" not in parts.netloc else "httpx"
    if kind == "raw":
        if parts.scheme != "http":
            raise ValueError("the raw HTTP client speaks plain http:// only")
        return RawTransport(endpoint.base_url, connect_timeout=min(endpoint.timeout_s, 30.0))
    return HttpxTransport(endpoint, concurrency)


class _RequestFailed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _chunk_text(choice: dict[str, Any], chat: bool) -> tuple[str, bool]:
    """(generated text, whether the chunk carries a token)."""
    finish = choice.get("finish_reason")
    if chat:
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or ""
        if not isinstance(text, str):
            text = ""
        if text or delta.get("tool_calls"):
            return text, True
        role_only = "role" in delta
        return "", finish is None and not role_only
    text = choice.get("text") or ""
    if not isinstance(text, str):
        text = ""
    return text, bool(text) or finish is None


async def send_request(
    client: Transport, endpoint: Endpoint, body: dict[str, Any], prompt_len: int, result: RequestResult, t0: float
) -> None:
    """Send one streaming request and fill `result`. Never raises except CancelledError."""
    chat = endpoint.api == "chat"
    parser = SSEParser()
    words = WordCounter()
    itl = result.itl
    st = time.perf_counter()
    result.start = st - t0
    last = st
    first = True
    usage_out: int | None = None
    usage_prompt: int | None = None
    loads = json.loads
    content = json.dumps(body, ensure_ascii=False).encode("utf-8")
    try:
        async with asyncio.timeout(endpoint.timeout_s):
            async with client.post_stream(endpoint.url, content, endpoint.headers()) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread())[:300].decode("utf-8", "replace")
                    raise _RequestFailed(f"http_{resp.status_code}", f"HTTP {resp.status_code}: {detail}")
                ended = False
                body_iter = resp.aiter_bytes()
                async for data in body_iter:
                    for payload in parser.feed(data):
                        ts = time.perf_counter()
                        if payload == b"[DONE]":
                            ended = True
                            break
                        try:
                            obj = loads(payload)
                        except ValueError as exc:
                            raise _RequestFailed("malformed_event", f"not JSON: {payload[:120]!r} ({exc})") from None
                        if not isinstance(obj, dict):
                            raise _RequestFailed("malformed_event", f"not a JSON object: {payload[:120]!r}")
                        choices = obj.get("choices")
                        if obj.get("error") is not None and not choices:
                            raise _RequestFailed("stream_error", f"error event: {str(obj['error'])[:250]}")
                        usage = obj.get("usage")
                        if isinstance(usage, dict):
                            if isinstance(usage.get("completion_tokens"), int):
                                usage_out = usage["completion_tokens"]
                            if isinstance(usage.get("prompt_tokens"), int):
                                usage_prompt = usage["prompt_tokens"]
                        if not choices:
                            continue
                        choice = choices[0]
                        if not isinstance(choice, dict):
                            raise _RequestFailed("malformed_event", f"bad choices: {payload[:120]!r}")
                        text, is_token = _chunk_text(choice, chat)
                        if not is_token:
                            continue
                        if first:
                            first = False
                            result.ttft = ts - st
                        else:
                            itl.append(ts - last)
                        last = ts
                        result.chunks += 1
                        if text:
                            words.feed(text)
                    if ended:
                        break
                if ended:
                    # Read the rest of the body (the chunked terminator after [DONE]) so the connection
                    # can be reused; a server that keeps the stream open after [DONE] is not an error.
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(2.0):
                            async for _ in body_iter:
                                pass
                else:
                    for payload in parser.close():  # a last event without its blank line
                        if payload != b"[DONE]":
                            try:
                                obj = loads(payload)
                            except ValueError:
                                raise _RequestFailed("malformed_event", f"truncated event: {payload[:120]!r}") from None
                            usage = obj.get("usage") if isinstance(obj, dict) else None
                            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                                usage_out = usage["completion_tokens"]
        if first:
            raise _RequestFailed("no_tokens", "the stream ended without a token chunk")
        result.latency = last - st
        if usage_out is not None and usage_out > 0:
            result.output_tokens, result.usage_tokens = usage_out, True
        else:
            result.output_tokens = result.chunks
        result.prompt_tokens = usage_prompt if usage_prompt is not None else prompt_len
        result.words = words.finish()
        result.status = STATUS_OK
    except _RequestFailed as exc:
        _fail(result, exc.kind, str(exc))
    except TimeoutError:
        _fail(result, "timeout", f"no complete response within {endpoint.timeout_s:g} s")
    except _ConnectFailed as exc:
        _fail(result, "connect_error", str(exc))
    except httpx.ConnectError as exc:
        _fail(result, "connect_error", f"{type(exc).__name__}: {exc}")
    except httpx.TimeoutException as exc:
        _fail(result, "timeout", f"{type(exc).__name__}: {exc}")
    except _ProtocolError as exc:
        _fail(result, "connection_error", f"HTTP framing: {exc}")
    except (asyncio.IncompleteReadError, ConnectionError, httpx.RemoteProtocolError, httpx.ReadError,
            httpx.WriteError, httpx.NetworkError) as exc:  # fmt: skip
        _fail(result, "connection_error", f"{type(exc).__name__}: {exc}")
    except asyncio.CancelledError:
        result.status = STATUS_CANCELLED
        result.itl.clear()
        raise
    except Exception as exc:
        _fail(result, "client_error", f"{type(exc).__name__}: {exc}")


def _fail(result: RequestResult, kind: str, message: str) -> None:
    result.status = STATUS_FAILED
    result.error_kind = kind
    result.error = message
    result.itl.clear()
