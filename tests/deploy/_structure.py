"""Structure of generated files, parsed by real parsers: a hostile value may change values, never structure.

- Dockerfile: the official (Go) parser of moby/buildkit, through the `dockerfile` package: the list of
  instructions and each one's argument count.
- entrypoint.sh: `sh -n`, then run with a stub `vllm` first on PATH that records its argv (NUL-separated),
  with every cache variable pointed into a temporary folder.
- PromQL: promql-parser (the Rust parser Prometheus-compatible tools use); the AST with every string
  literal and number blanked, and the model_name matcher's value exactly.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import dockerfile
import promql_parser

from trdeploy.deploy import container as ct


def dockerfile_shape(text: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """(instruction, number of arguments, flags) for each instruction, as BuildKit's parser reads them."""
    return [(c.cmd.upper(), len(c.value), c.flags) for c in dockerfile.parse_string(text)]


def dockerfile_labels(text: str) -> dict[str, str]:
    """LABEL key -> value, unquoted as the Dockerfile reads a double-quoted value."""
    out: dict[str, str] = {}
    for c in dockerfile.parse_string(text):
        if c.cmd.upper() == "LABEL":
            for key, raw in zip(c.value[::2], c.value[1::2], strict=True):
                assert raw.startswith('"') and raw.endswith('"'), raw
                out[key] = re.sub(r"\\(.)", r"\1", raw[1:-1])
    return out


def run_entrypoint(script: str, tmp: Path, *, env: dict[str, str] | None = None, args: list[str] | None = None) -> tuple[int, list[str] | None, str]:
    """(exit code, the argv `vllm` got or None, stderr) of the entrypoint under `sh`, with a stub `vllm`."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "entrypoint.sh"
    path.write_text(script)
    check = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    stub_dir = tmp / "bin"
    stub_dir.mkdir(exist_ok=True)
    record = tmp / "argv"
    record.unlink(missing_ok=True)
    stub = stub_dir / "vllm"
    stub.write_text(f'#!/bin/sh\nfor a in vllm "$@"; do printf "%s\\0" "$a"; done > {ct.sh_word(str(record))}\n')
    stub.chmod(0o755)
    full_env = {"PATH": f"{stub_dir}:/usr/bin:/bin", "VLLM_API_KEY": "sk-test"}
    full_env.update({var: str(tmp / "cache" / sub) for var, sub in ct.CACHE_DIRS.items()})
    full_env.update(env or {})
    proc = subprocess.run(["sh", str(path), *(args or [])], env=full_env, capture_output=True, text=True, check=False, timeout=30)
    argv = record.read_bytes().decode().split("\0")[:-1] if record.exists() else None
    return proc.returncode, argv, proc.stderr


_STRING = re.compile(r'(value|name): "(?:[^"\\]|\\.)*"')
_NUMBER = re.compile(r"val: -?[0-9][0-9.e+-]*|val: (?:NaN|inf|-inf)")


def promql_shape(expr: str) -> str:
    """The parsed expression with every matcher value and number blanked (metric and label names kept)."""
    tree = repr(promql_parser.parse(expr))
    tree = re.sub(r'value: "(?:[^"\\]|\\.)*"', 'value: "…"', tree)
    return _NUMBER.sub("val: N", tree)


def _rust_unescape(text: str) -> str:
    """A Rust `{:?}` string body back to its value."""
    simple = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "\\": "\\", '"': '"', "'": "'"}
    return re.sub(r"\\(u\{([0-9a-fA-F]+)\}|.)", lambda m: chr(int(m.group(2), 16)) if m.group(2) else simple[m.group(1)], text)


def promql_model_values(expr: str) -> list[str]:
    """Every value the model_name label is matched against in `expr`, as the parser read it."""
    tree = repr(promql_parser.parse(expr))
    return [_rust_unescape(v) for v in re.findall(r'name: "model_name",\s*value: "((?:[^"\\]|\\.)*)"', tree)]


def k8s_dollar_paren_ok(obj: object) -> list[str]:
    """Container command/args/env strings holding a `$(` that Kubernetes would expand (other than LWS's
    own leader address); empty when every profile value is escaped."""
    bad: list[str] = []

    def containers(spec: dict) -> list[dict]:
        return [*spec.get("initContainers", []), *spec.get("containers", [])]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "containers" in node and isinstance(node["containers"], list):
                for c in containers(node):
                    texts = [*c.get("command", []), *c.get("args", []), *(e.get("value", "") for e in c.get("env", []))]
                    for text in texts:
                        for m in re.finditer(r"(?<!\$)\$\(([^)]*)\)", text):
                            if m.group(1) != "LWS_LEADER_ADDRESS":
                                bad.append(text)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj)
    return bad


def no_partials(folder: Path) -> list[str]:
    return [p.name for p in Path(folder).iterdir() if ".partial-" in p.name or ".old-" in p.name]


def env_without_secrets() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_API_KEY", "OPENAI_API_KEY"))}
