"""The data that ships inside the package: written by the team for this project.

- data/corpus/<domain>.jsonl: the Turkish-English parallel corpus, one aligned pair a line:
  {"id": "banking_finance-001", "domain": "banking_finance", "tr": "...", "en": "..."}
- data/calibration/<domain>.jsonl: Turkish chat and instruction conversations for AWQ calibration,
  about 512 Llama-3 tokens each once rendered: {"id": "...", "domain": "...", "messages": [{"role": ..., "content": ...}]}

The parallel corpus doubles as the held-out Turkish evaluation text for `quantize`: calibration
conversations are never evaluated on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class ParallelPair:
    id: str
    domain: str
    tr: str
    en: str


def _read_jsonl_folder(folder: str) -> list[dict[str, Any]]:
    root = resources.files("trdeploy") / "data" / folder
    rows: list[dict[str, Any]] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".jsonl"):
            continue
        for line_no, line in enumerate(entry.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:  # a packaging bug, not a user error
                    raise RuntimeError(f"embedded data {folder}/{entry.name}:{line_no} is not JSON: {exc}") from exc
    return rows


@lru_cache(maxsize=1)
def embedded_pairs() -> tuple[ParallelPair, ...]:
    """The embedded Turkish-English parallel corpus, in a stable order (by domain file, then line)."""
    return tuple(ParallelPair(r["id"], r["domain"], r["tr"], r["en"]) for r in _read_jsonl_folder("corpus"))


@lru_cache(maxsize=1)
def calibration_conversations() -> tuple[dict[str, Any], ...]:
    """The embedded Turkish calibration conversations (OpenAI-style `messages`)."""
    return tuple(_read_jsonl_folder("calibration"))
