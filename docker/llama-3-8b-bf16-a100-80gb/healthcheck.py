"""HEALTHCHECK probe: GET /health on the served port (python3 is in every vLLM image; curl may not be)."""

import os
import sys
import urllib.request

port = os.environ.get("TRDEPLOY_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception:  # refused while starting, timeout, 5xx: all mean "not healthy yet"
    sys.exit(1)
