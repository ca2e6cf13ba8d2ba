"""HEALTHCHECK probe: GET /health on the port the server listens on (python3 is in every vLLM image)."""

import os
import sys
import urllib.request


def serve_args():
    pids = ["1"] + sorted((p for p in os.listdir("/proc") if p.isdigit() and p != "1"), key=int)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                args = [a.decode("utf-8", "replace") for a in handle.read().split(b"\0") if a]
        except OSError:
            continue
        if "serve" in args:
            return args
    return []


def last_value(args, flag):
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


args = serve_args()
port = last_value(args, "--port") or os.environ.get("TRDEPLOY_PORT") or "8000"
host = last_value(args, "--host") or "127.0.0.1"
if host in ("", "0.0.0.0", "::", "[::]"):
    host = "127.0.0.1"
if ":" in host and not host.startswith("["):
    host = f"[{host}]"
try:
    with urllib.request.urlopen(f"http://{host}:{int(port)}/health", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception:  # refused while starting, timeout, 5xx, a bad port: all mean "not healthy yet"
    sys.exit(1)
