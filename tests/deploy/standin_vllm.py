#!/usr/bin/env python3
"""A stand-in `vllm` executable for image tests: records how it was started and answers /health.

Installed as /usr/local/bin/vllm in the local test base image (see `vllm_base_image` in
tests/deploy/conftest.py), so images rendered by `trdeploy build` (and manifests rendered by
`trdeploy render-k8s`) run end to end without a GPU, CUDA or weights. Python 3 stdlib only.

On start (`vllm serve MODEL --flag value ...`) it prints one line to stdout,

    STANDIN_VLLM {"argv": [...], "env": {...}, "uid": N, "gid": N, "cwd": "...", "writable": {...}}

(argv as received, the full environment, the process's UID/GID, and whether each cache directory
from the environment is writable), also written to $STANDIN_RECORD if set. Then it serves on
--port (default 8000), all interfaces:

    GET /health     200 after $STANDIN_STARTUP_DELAY_S seconds (default 0), 503 before
    GET /v1/models  the --served-model-name (else the model argument), OpenAI-style
    GET /argv       the start record as JSON

It stops cleanly on SIGTERM, as vLLM does.
"""

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CACHE_VARS = ("HOME", "XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "FLASHINFER_WORKSPACE_BASE", "TRITON_CACHE_DIR",
              "TORCHINDUCTOR_CACHE_DIR", "HF_HOME")


def _flag(argv, name, default=None):
    value = default
    for i, arg in enumerate(argv):  # the last occurrence wins, as in vLLM's argparse
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


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


def main():
    argv = sys.argv[1:]
    record = {
        "argv": ["vllm", *argv],
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
    if not argv or argv[0] != "serve":
        print("standin vllm: only `vllm serve` is supported", file=sys.stderr)
        return 2
    port = int(_flag(argv, "--port", "8000"))
    model = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else "unknown"
    served = _flag(argv, "--served-model-name", model)
    ready_at = time.monotonic() + float(os.environ.get("STANDIN_STARTUP_DELAY_S", "0"))

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                ready = time.monotonic() >= ready_at
                self._send(200 if ready else 503, {} if ready else {"status": "starting"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": served, "object": "model", "owned_by": "vllm"}]})
            elif self.path == "/argv":
                self._send(200, record)
            else:
                self._send(404, {"error": "not found"})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"standin vllm: serving {served} on port {port}", flush=True)
    try:
        server.serve_forever()
    except SystemExit:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
