"""Small HTTP and container-log helpers for the deploy tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def http_status(url: str, headers: dict | None = None, body: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={**(headers or {}), **({"Content-Type": "application/json"} if data else {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def standin_record(container) -> dict:
    """The stand-in vllm's start record (argv, env, uid, gid, writable caches) from the container's log."""
    for line in container.logs().decode().splitlines():
        if line.startswith("STANDIN_VLLM "):
            return json.loads(line.split(" ", 1)[1])
    raise AssertionError("no STANDIN_VLLM line in the log: " + container.logs().decode()[-2000:])
