"""Prompts for `trdeploy bench`: the embedded Turkish sets, files, hub datasets and synthetic token ids.

Prompts never repeat across runs, load levels or calibrate's points unless asked: vLLM's prefix cache (on by
default) serves a prompt it has seen from memory, which makes every later run look faster than the first
(seen on an H100: TTFT p50 fell from 525 ms at 32 clients to 350 ms at 71 when a sweep resent its prompts).
Each run draws a salt (or takes `--prompt-salt`), and each load level is a stream of that salt: synthetic
prompts are drawn from (seed, salt, stream, request), and text prompts start with a short tag made from the
same, which changes their first KV block and so every block after it.
"""

from __future__ import annotations

import abc
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from trdeploy.bench.request import Api
from trdeploy.errors import TrdeployError
from trdeploy.inputs import json_depth


class PromptSource(abc.ABC):
    """Gives request i its prompt fields: {"messages": [...]} for chat, {"prompt": str | list[int]}
    for completions, with the prompt length in tokens when it is known without a tokenizer."""

    description: str = ""
    # Whether `stream` makes prompts unique (token-id prompts read from a file cannot be changed).
    can_be_unique: bool = True

    @abc.abstractmethod
    def body(self, index: int) -> tuple[dict[str, Any], int]: ...

    def stream(self, key: tuple[int, ...]) -> PromptSource:
        """The prompts of one load level: request i of stream `key` differs from request i of every other key."""
        return self


def prompt_tag(key: tuple[int, ...], index: int) -> str:
    """The tag a text prompt starts with in stream `key` (10 hex digits: unique in practice)."""
    digest = hashlib.blake2b(repr((*key, index)).encode(), digest_size=5).hexdigest()
    return f"[{digest}] "


class ListPrompts(PromptSource):
    """A fixed list of prompts, visited in a seeded random order and cycled."""

    def __init__(self, items: list[dict[str, Any]], lengths: list[int], *, seed: int, description: str) -> None:
        if not items:
            raise TrdeployError(f"No prompts found in {description}.", hint="Check the source, or use --synthetic.")
        self.items, self.lengths, self.description = items, lengths, description
        self.order = np.random.default_rng(seed).permutation(len(items))
        self.can_be_unique = not any(isinstance(i.get("prompt"), list) for i in items)

    def body(self, index: int) -> tuple[dict[str, Any], int]:
        k = int(self.order[index % len(self.items)])
        return self.items[k], self.lengths[k]

    def stream(self, key: tuple[int, ...]) -> PromptSource:
        return _TaggedPrompts(self, key) if self.can_be_unique else self

    def __len__(self) -> int:
        return len(self.items)


class _TaggedPrompts(PromptSource):
    """A ListPrompts stream: each text prompt (or a chat's first message) starts with its own tag."""

    def __init__(self, base: ListPrompts, key: tuple[int, ...]) -> None:
        self.base, self.key, self.description = base, key, base.description

    def body(self, index: int) -> tuple[dict[str, Any], int]:
        fields, length = self.base.body(index)
        tag = prompt_tag(self.key, index)
        out = copy.copy(fields)
        if "messages" in out:
            messages = [dict(m) for m in out["messages"]]
            messages[0]["content"] = tag + str(messages[0].get("content", ""))
            out["messages"] = messages
        elif isinstance(out.get("prompt"), str):
            out["prompt"] = tag + out["prompt"]
        return out, -1 if length < 0 else length

    def __len__(self) -> int:
        return len(self.base)


class SyntheticPrompts(PromptSource):
    """`INPUT_LEN` random token ids per request, sent as a token-id prompt to /v1/completions: exact
    prompt lengths without a local tokenizer (as `vllm bench serve --dataset-name random`), drawn from
    (seed, stream key, request index)."""

    def __init__(self, input_len: int, vocab_size: int, *, seed: int, key: tuple[int, ...] = ()) -> None:
        self.input_len, self.vocab_size, self.seed, self.key = input_len, vocab_size, seed, key
        self.description = f"synthetic: {input_len} random token ids in [0, {vocab_size})"

    def body(self, index: int) -> tuple[dict[str, Any], int]:
        rng = np.random.default_rng([self.seed, *self.key, index])
        return {"prompt": rng.integers(0, self.vocab_size, self.input_len).tolist()}, self.input_len

    def stream(self, key: tuple[int, ...]) -> PromptSource:
        return SyntheticPrompts(self.input_len, self.vocab_size, seed=self.seed, key=key)

    def __len__(self) -> int:
        return 0


def _chat_prefixes(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Each user turn of a conversation with everything before it: one chat prompt per user turn."""
    out = []
    for i, m in enumerate(messages):
        if m.get("role") == "user":
            out.append([{"role": x["role"], "content": x["content"]} for x in messages[: i + 1]])
    return out


def _as_fields(item: Any, api: Api, where: str) -> dict[str, Any] | None:
    """A prompt record (str, token ids, or messages) as request fields for `api`."""
    if isinstance(item, str):
        if not item.strip():
            return None
        return {"messages": [{"role": "user", "content": item}]} if api == "chat" else {"prompt": item}
    if isinstance(item, list) and item and all(isinstance(t, int) for t in item):
        if api == "chat":
            raise TrdeployError(f"{where} is a token-id prompt, which only /v1/completions accepts.", hint="Use --api completions.")
        return {"prompt": item}
    if isinstance(item, list) and item and all(isinstance(m, dict) for m in item):
        messages = [_normalize_message(m, where) for m in item]
        if api == "completions":
            raise TrdeployError(f"{where} holds chat messages, which /v1/completions does not take.", hint="Use --api chat.")
        while messages and messages[-1]["role"] == "assistant":  # the reply is what we ask the server for
            messages.pop()
        return {"messages": messages} if messages else None
    raise TrdeployError(f"{where} is not a prompt (a string, a list of token ids, or a list of chat messages).",
                        hint="See `trdeploy bench --help` for the prompt file formats.")  # fmt: skip


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _normalize_message(m: dict[str, Any], where: str) -> dict[str, str]:
    if "role" in m and isinstance(m.get("content"), str):
        return {"role": str(m["role"]), "content": m["content"]}
    if "from" in m and isinstance(m.get("value"), str):  # ShareGPT
        return {"role": _SHAREGPT_ROLES.get(str(m["from"]), "user"), "content": m["value"]}
    raise TrdeployError(f"{where} has a chat message without role/content.", hint='Messages look like {"role": "user", "content": "..."}.')


def embedded_prompts(kind: str, api: Api, *, seed: int) -> ListPrompts:
    """The Turkish prompts that ship with trdeploy: the parallel corpus's Turkish side (`corpus`), or
    the calibration conversations cut at each user turn (`conversations`, chat only)."""
    from trdeploy.text.embedded import calibration_conversations, embedded_pairs

    if kind == "embedded":
        kind = "conversations" if api == "chat" else "corpus"
    if kind == "conversations":
        if api != "chat":
            raise TrdeployError("The embedded conversations are chat prompts.", hint="Use --api chat, or --prompts corpus.")
        items = [{"messages": p} for conv in calibration_conversations() for p in _chat_prefixes(conv["messages"])]
        desc = "embedded Turkish conversations (each user turn with its history)"
    else:
        items = [_as_fields(p.tr, api, "corpus") for p in embedded_pairs()]
        items = [i for i in items if i]
        desc = "embedded Turkish corpus (Turkish side)"
    return ListPrompts(items, [-1] * len(items), seed=seed, description=desc)


def file_prompts(path: Path, api: Api, *, seed: int) -> ListPrompts:
    """Prompts from a file: JSONL records with `prompt` (text or token ids), `messages`, or `text`;
    any other file is one text prompt per non-empty line."""
    if not path.is_file():
        raise TrdeployError(f"No prompt file at {path}.", hint="Pass an existing .jsonl or .txt file, or --prompts embedded.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrdeployError(f"Cannot read {path} as UTF-8 text ({exc.__class__.__name__}).", hint="Save it as UTF-8.") from exc
    items: list[dict[str, Any]] = []
    lengths: list[int] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except RecursionError:
                raise TrdeployError(f"{where} is nested too deeply to read.", hint="Each line must be one JSON object.") from None
            except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
                raise TrdeployError(f"{where} is not JSON ({getattr(exc, 'msg', str(exc)[:80])}).", hint="Each line must be one JSON object.") from None
            if json_depth(rec) > 16:
                raise TrdeployError(f"{where} nests more than 16 levels deep.", hint="Each line must be one JSON object.")
            if isinstance(rec, dict):
                value = next((rec[k] for k in ("messages", "conversations", "prompt", "text") if k in rec), None)
                if value is None:
                    raise TrdeployError(f"{where} has no `prompt`, `messages` or `text` field.", hint='Write {"prompt": "..."} or {"messages": [...]}.')
            else:
                value = rec
            fields = _as_fields(value, api, where)
            if fields:
                items.append(fields)
                lengths.append(len(fields["prompt"]) if isinstance(fields.get("prompt"), list) else -1)
    else:
        for line in text.splitlines():
            fields = _as_fields(line.strip(), api, str(path))
            if fields:
                items.append(fields)
                lengths.append(-1)
    return ListPrompts(items, lengths, seed=seed, description=f"file {path}")


_DATASET_FIELDS = ("messages", "conversations", "conversation", "prompt", "text", "tr", "instruction", "question")


def dataset_prompts(dataset: str, split: str, field_name: str | None, api: Api, *, seed: int, limit: int) -> ListPrompts:
    """Prompts from a Hugging Face dataset (a hub id, or a local folder of data files)."""
    from trdeploy.text.corpora import load_hub_dataset

    ds = load_hub_dataset(dataset, None, split, streaming=False)
    columns = list(ds.column_names)
    name = field_name or next((c for c in _DATASET_FIELDS if c in columns), None)
    if name is None or name not in columns:
        raise TrdeployError(f"Dataset {dataset!r} has no column {field_name or 'with prompts'} (columns: {', '.join(columns)}).",
                            hint="Pass --dataset-field COLUMN.")  # fmt: skip
    items: list[dict[str, Any]] = []
    for i, value in enumerate(ds[name][:limit]):
        fields = _as_fields(value, api, f"{dataset}[{i}].{name}")
        if fields:
            items.append(fields)
    return ListPrompts(items, [-1] * len(items), seed=seed, description=f"dataset {dataset} ({split}, {name})")
