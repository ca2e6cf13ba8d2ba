"""`trdeploy bench`: measure a live OpenAI-compatible endpoint against the SLA.

`plan_bench(...)` turns options (and the DeploymentProfile, when given) into a `BenchPlan`;
`run_bench(plan)` runs each load level with the load generator (trdeploy.bench.loadgen), scrapes the
server's Prometheus /metrics around it, computes the metrics (trdeploy.bench.metrics) and the verdict, and
returns the report: a dict with stable keys, the same one `--json` prints and `-o` writes.

Only the standard library, httpx, numpy, rich, pydantic and pyyaml are imported on this path, so the
command runs from a source checkout on a GPU machine that has nothing else; `datasets` (hub prompts)
and matplotlib (`--plot`) are imported only when asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import math
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from trdeploy import __version__
from trdeploy.bench.loadgen import Api, Endpoint, LoadSpec, PromptSource, RunStats, Sampling, make_client, run_load
from trdeploy.bench.metrics import WORD_PATTERN, RequestResult, ResultStore, SlaTargets, evaluate_sla, summarize
from trdeploy.errors import TrdeployError

SCHEMA_VERSION = 1
DEFAULT_URL = "http://localhost:8000"
DEFAULT_NUM_PROMPTS = 100
DEFAULT_PERCENTILES = (50.0, 95.0, 99.0)
# Llama-3's regular (non-special) token ids are 0..127999; synthetic prompts draw from [0, vocab).
DEFAULT_SYNTHETIC_VOCAB = 128_000
PLOT_SAMPLE = 200_000  # values per metric kept for the plot


# --------------------------------------------------------------------------------------------------
# Prompts


class ListPrompts(PromptSource):
    """A fixed list of prompts, visited in a seeded random order and cycled."""

    def __init__(self, items: list[dict[str, Any]], lengths: list[int], *, seed: int, description: str) -> None:
        if not items:
            raise TrdeployError(f"No prompts found in {description}.", hint="Check the source, or use --synthetic.")
        self.items, self.lengths, self.description = items, lengths, description
        self.order = np.random.default_rng(seed).permutation(len(items))

    def body(self, index: int) -> tuple[dict[str, Any], int]:
        k = int(self.order[index % len(self.items)])
        return self.items[k], self.lengths[k]

    def __len__(self) -> int:
        return len(self.items)


class SyntheticPrompts(PromptSource):
    """`INPUT_LEN` random token ids per request, sent as a token-id prompt to /v1/completions: exact
    prompt lengths without a local tokenizer (as `vllm bench serve --dataset-name random`)."""

    def __init__(self, input_len: int, vocab_size: int, *, seed: int) -> None:
        self.input_len, self.vocab_size, self.seed = input_len, vocab_size, seed
        self.description = f"synthetic: {input_len} random token ids in [0, {vocab_size})"

    def body(self, index: int) -> tuple[dict[str, Any], int]:
        rng = np.random.default_rng([self.seed, index])
        return {"prompt": rng.integers(0, self.vocab_size, self.input_len).tolist()}, self.input_len

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
            except json.JSONDecodeError as exc:
                raise TrdeployError(f"{where} is not JSON ({exc.msg}).", hint="Each line must be one JSON object.") from exc
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


# --------------------------------------------------------------------------------------------------
# Prometheus /metrics

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

SERVER_COUNTERS = {
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
    "request_success": ("vllm:request_success_total",),
    "num_preemptions": ("vllm:num_preemptions_total",),
}
SERVER_HISTOGRAMS = {
    "ttft": ("vllm:time_to_first_token_seconds",),
    "e2el": ("vllm:e2e_request_latency_seconds",),
    "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "queue": ("vllm:request_queue_time_seconds",),
    "prefill": ("vllm:request_prefill_time_seconds",),
    "decode": ("vllm:request_decode_time_seconds",),
}
SERVER_GAUGES = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}


def parse_prometheus(text: str, model: str | None = None) -> dict[str, float]:
    """Sum each vllm:* sample over its labels. When samples carry a model_name label, only those of
    `model` count (if any do)."""
    by_model: dict[str, float] = {}
    everything: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#" or not line.startswith("vllm:"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        if math.isnan(value):
            continue
        name = m.group(1)
        everything[name] = everything.get(name, 0.0) + value
        labels = dict(_LABEL_RE.findall(m.group(2) or ""))
        if model is not None and labels.get("model_name") == model:
            by_model[name] = by_model.get(name, 0.0) + value
    return by_model or everything


def _first(sample: dict[str, float], names: Sequence[str], suffix: str = "") -> float | None:
    for n in names:
        if n + suffix in sample:
            return sample[n + suffix]
    return None


def server_metrics_delta(before: dict[str, float], after: dict[str, float], peaks: dict[str, float]) -> dict[str, Any]:
    """What the server counted during a run: counter deltas, histogram means (ms), sampled gauge peaks."""
    counters: dict[str, float | None] = {}
    for key, names in SERVER_COUNTERS.items():
        a, b = _first(after, names), _first(before, names)
        counters[key] = None if a is None or b is None else a - b
    means: dict[str, float | None] = {}
    for key, names in SERVER_HISTOGRAMS.items():
        sa, sb = _first(after, names, "_sum"), _first(before, names, "_sum")
        ca, cb = _first(after, names, "_count"), _first(before, names, "_count")
        if None in (sa, sb, ca, cb) or ca - cb <= 0:  # type: ignore[operator]
            means[key] = None
        else:
            means[key] = (sa - sb) / (ca - cb) * 1000.0  # type: ignore[operator]
    return {"available": True, "counters": counters, "mean_ms": means, "peak": dict(peaks)}


async def scrape(client: httpx.AsyncClient, base_url: str, headers: dict[str, str], model: str | None) -> dict[str, float] | None:
    """The server's vllm:* samples, or None when it has no Prometheus endpoint (not an error)."""
    try:
        resp = await client.get(base_url + "/metrics", headers=headers, timeout=10.0)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    sample = parse_prometheus(resp.text, model)
    return sample or None


# --------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class BenchPlan:
    endpoint: Endpoint
    sampling: Sampling
    loads: tuple[LoadSpec, ...]
    sweep_parameter: str | None  # "concurrency" | "request_rate" | None
    prompt_spec: dict[str, Any]  # how to build the prompt source (built after model detection)
    sla: SlaTargets
    sla_source: str
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    warmup: int = 0
    server_metrics: bool = True
    gauge_interval_s: float = 0.0  # sample /metrics gauges during the run (0: only before and after)
    model_source: str = "flag"
    profile_defaults: tuple[str, ...] = ()
    seed: int = 0
    http_client: str = "auto"


def normalize_url(url: str) -> tuple[str, str]:
    """(server root, v1 prefix) from a URL given with or without its /v1."""
    url = url.strip().rstrip("/")
    hint = "Pass the server root, e.g. --url http://localhost:8000."
    if not re.match(r"^https?://[^/\s]+", url):
        raise TrdeployError(f"--url {url!r} is not an http(s) URL.", hint=hint)
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise TrdeployError(f"--url {url!r} contains spaces or control characters.", hint=hint)
    try:  # urllib and httpx raise ValueError for a port out of range, a non-numeric port or bad IPv6
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
        if "[" in parts.netloc:
            ipaddress.IPv6Address((host or "").split("%")[0])
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise TrdeployError(f"--url {url!r} is not a valid URL ({exc}).", hint=hint) from None
    if not host:
        raise TrdeployError(f"--url {url!r} has no host.", hint=hint)
    if port == 0:
        raise TrdeployError(f"--url {url!r}: port 0 is not a server port.", hint=hint)
    if url.endswith("/v1"):
        return url[:-3], "/v1"
    return url, "/v1"


def check_header_value(value: str, what: str) -> None:
    """Refuse a value that cannot be an HTTP header: CR/LF would inject headers, and HTTP/1.1 header
    values are visible ASCII (httpx would raise UnicodeEncodeError deep in a request)."""
    bad = next((ch for ch in value if not (0x20 <= ord(ch) < 0x7F or ch == "\t")), None)
    if bad is not None:
        raise TrdeployError(f"{what} contains {bad!r}, which an HTTP header cannot carry.", hint="Pass the token alone, without line breaks or non-ASCII characters.")


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """`concurrency=1,4,16` or `request-rate=0.5,1,2` -> (parameter, values)."""
    name, sep, values = text.partition("=")
    name = name.strip().lower().replace("-", "_")
    if name in ("rate", "qps", "rps"):
        name = "request_rate"
    if not sep or name not in ("concurrency", "request_rate"):
        raise TrdeployError(f"--sweep {text!r} is not PARAMETER=V1,V2,...", hint="Use --sweep concurrency=1,4,16 or --sweep request-rate=0.5,1,2.")
    out: list[float] = []
    for raw in values.split(","):
        v = raw.strip()
        if not v:
            continue
        try:
            x = float(v)
        except ValueError as exc:
            raise TrdeployError(f"--sweep value {v!r} is not a number.", hint="Use --sweep concurrency=1,4,16.") from exc
        if name == "concurrency" and (x < 1 or x != int(x)):
            raise TrdeployError(f"--sweep concurrency value {v} is not a whole number of at least 1.", hint="Use --sweep concurrency=1,4,16.")
        if name == "request_rate" and not x > 0:
            raise TrdeployError(f"--sweep request-rate value {v} must be above 0.", hint="Use --sweep request-rate=0.5,1,2.")
        out.append(x)
    if not out:
        raise TrdeployError(f"--sweep {text!r} lists no values.", hint="Use --sweep concurrency=1,4,16.")
    return name, out


def parse_percentiles(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise TrdeployError(f"--percentiles {text!r} is not a list of numbers.", hint="Use --percentiles 50,95,99.") from exc
    if not values or any(not 0 < p < 100 for p in values):
        raise TrdeployError(f"--percentiles {text!r} must list numbers between 0 and 100.", hint="Use --percentiles 50,95,99.")
    return tuple(sorted(set(values) | {95.0}))  # p95 is what the SLA is checked on


def plan_bench(
    *,
    url: str = DEFAULT_URL,
    api: str = "chat",
    model: str | None = None,
    api_key: str | None = None,
    profile: Path | None = None,
    concurrency: int | None = None,
    request_rate: float | None = None,
    burstiness: float = 1.0,
    sweep: str | None = None,
    num_prompts: int | None = None,
    duration_s: float | None = None,
    prompts: str = "embedded",
    dataset: str | None = None,
    dataset_split: str = "train",
    dataset_field: str | None = None,
    synthetic: int | None = None,
    synthetic_vocab_size: int = DEFAULT_SYNTHETIC_VOCAB,
    output_tokens: int | None = None,
    ignore_eos: bool = False,
    min_tokens: int | None = None,
    temperature: float | None = None,
    extra_body: str | None = None,
    timeout_s: float = 600.0,
    sla_ttft_p95_ms: float | None = None,
    sla_e2e_p95_ms: float | None = None,
    sla_tpot_ms: float | None = None,
    max_error_rate: float = 0.01,
    percentiles: str = "50,95,99",
    warmup: int = 0,
    server_metrics: bool = True,
    gauge_interval_s: float = 0.0,
    seed: int = 0,
    http_client: str = "auto",
) -> BenchPlan:
    """Validate the options and resolve them (with the DeploymentProfile's SLA, served model name and
    workload as defaults) into a plan. Raises TrdeployError for anything a user can fix."""
    if api not in ("chat", "completions"):
        raise TrdeployError(f"--api {api!r} is not chat or completions.", hint="Use --api chat or --api completions.")
    base_url, v1 = normalize_url(url)
    profile_defaults: list[str] = []
    sla_source = "none"
    p_sla = None
    model_source = "flag" if model else "server"
    if profile is not None:
        from trdeploy.deployment import DeploymentProfile  # pydantic + yaml, both on the bench path

        prof = DeploymentProfile.load(profile)
        p_sla = prof.sla
        if model is None:
            model = prof.engine_args.served_model_name or prof.engine_args.model
            model_source = "profile"
        if output_tokens is None:
            output_tokens = prof.workload.output_tokens
            profile_defaults.append(f"max_tokens={output_tokens} (workload.output_tokens)")
        if concurrency is None and request_rate is None and sweep is None and prof.workload.concurrency:
            concurrency = prof.workload.concurrency
            profile_defaults.append(f"concurrency={concurrency} (workload.concurrency)")
    sla = SlaTargets(
        ttft_p95_ms=sla_ttft_p95_ms if sla_ttft_p95_ms is not None else (p_sla.ttft_p95_ms if p_sla else None),
        e2e_p95_ms=sla_e2e_p95_ms if sla_e2e_p95_ms is not None else (p_sla.e2e_p95_ms if p_sla else None),
        tpot_ms=sla_tpot_ms if sla_tpot_ms is not None else (p_sla.tpot_ms if p_sla else None),
        max_error_rate=max_error_rate,
    )
    flags_sla = any(v is not None for v in (sla_ttft_p95_ms, sla_e2e_p95_ms, sla_tpot_ms))
    profile_sla = p_sla is not None and any(v is not None for v in (p_sla.ttft_p95_ms, p_sla.e2e_p95_ms, p_sla.tpot_ms))
    sla_source = "profile+flags" if flags_sla and profile_sla else "flags" if flags_sla else "profile" if profile_sla else "none"
    for name, value in (("--sla-ttft-p95-ms", sla_ttft_p95_ms), ("--sla-e2e-p95-ms", sla_e2e_p95_ms), ("--sla-tpot-ms", sla_tpot_ms)):
        if value is not None and not value > 0:
            raise TrdeployError(f"{name} must be above 0 (got {value}).", hint="Give the target in milliseconds.")
    if not 0 <= max_error_rate <= 1:
        raise TrdeployError(f"--max-error-rate must be between 0 and 1 (got {max_error_rate}).", hint="0.01 allows 1% failed requests.")

    # Load levels.
    if concurrency is not None and concurrency < 1:
        raise TrdeployError(f"--concurrency must be at least 1 (got {concurrency}).", hint="Use --concurrency 1 for one request at a time.")
    if request_rate is not None and not request_rate > 0:
        raise TrdeployError(f"--request-rate must be above 0 (got {request_rate}).", hint="Requests per second, e.g. --request-rate 2.")
    if not burstiness > 0:
        raise TrdeployError(f"--burstiness must be above 0 (got {burstiness}).", hint="1 is Poisson; below 1 burstier, above 1 more regular.")
    if num_prompts is not None and num_prompts < 1:
        raise TrdeployError(f"--num-prompts must be at least 1 (got {num_prompts}).", hint="Or give --duration SECONDS instead.")
    if duration_s is not None and not duration_s > 0:
        raise TrdeployError(f"--duration must be above 0 seconds (got {duration_s}).", hint="E.g. --duration 60.")
    if num_prompts is None and duration_s is None:
        num_prompts = DEFAULT_NUM_PROMPTS
    rate = request_rate if request_rate is not None else math.inf
    base = LoadSpec(concurrency=concurrency, request_rate=rate, burstiness=burstiness,
                    num_requests=num_prompts, duration_s=duration_s, seed=seed)  # fmt: skip
    sweep_parameter = None
    if sweep:
        sweep_parameter, values = parse_sweep(sweep)
        if sweep_parameter == "concurrency":
            loads = tuple(replace(base, concurrency=int(v)) for v in values)
        else:
            loads = tuple(replace(base, request_rate=v) for v in values)
    else:
        if base.concurrency is None and base.closed_loop:
            base = replace(base, concurrency=1)
        loads = (base,)
    for spec in loads:
        if spec.closed_loop and spec.concurrency is None and spec.num_requests is None:
            raise TrdeployError("--duration with neither --concurrency nor --request-rate would send without limit.",
                                hint="Add --concurrency N or --request-rate R.")  # fmt: skip

    # Prompts.
    sources = [s for s in (synthetic is not None, dataset is not None, prompts != "embedded") if s]
    if len(sources) > 1:
        raise TrdeployError("Give one prompt source: --prompts, --dataset or --synthetic.", hint="They are alternatives.")
    if synthetic is not None:
        if api != "completions":
            raise TrdeployError("--synthetic sends token-id prompts, which only /v1/completions accepts.", hint="Add --api completions.")
        if synthetic < 1:
            raise TrdeployError(f"--synthetic must be at least 1 token (got {synthetic}).", hint="E.g. --synthetic 512.")
        if synthetic_vocab_size < 2:
            raise TrdeployError("--synthetic-vocab-size must be at least 2.", hint="Llama-3's regular tokens are 0..127999.")
        prompt_spec: dict[str, Any] = {"kind": "synthetic", "input_len": synthetic, "vocab_size": synthetic_vocab_size}
    elif dataset is not None:
        prompt_spec = {"kind": "dataset", "dataset": dataset, "split": dataset_split, "field": dataset_field}
    elif prompts in ("embedded", "corpus", "conversations"):
        prompt_spec = {"kind": prompts}
    else:
        prompt_spec = {"kind": "file", "path": prompts}

    # Sampling.
    for name, value in (("--output-tokens", output_tokens), ("--min-tokens", min_tokens)):
        if value is not None and value < 1:
            raise TrdeployError(f"{name} must be at least 1 (got {value}).", hint="A number of tokens.")
    if ignore_eos and output_tokens is None:
        raise TrdeployError("--ignore-eos needs --output-tokens N (the length every request then generates).", hint="E.g. --output-tokens 300 --ignore-eos.")
    extra: dict[str, Any] = {}
    if extra_body:
        try:
            extra = json.loads(extra_body)
        except json.JSONDecodeError as exc:
            raise TrdeployError(f"--extra-body is not JSON ({exc.msg}).", hint='E.g. --extra-body \'{"top_k": 20}\'.') from exc
        if not isinstance(extra, dict):
            raise TrdeployError("--extra-body must be a JSON object.", hint='E.g. --extra-body \'{"top_k": 20}\'.')
    if not timeout_s > 0:
        raise TrdeployError(f"--timeout must be above 0 seconds (got {timeout_s}).", hint="Seconds per request, e.g. --timeout 600.")
    if http_client not in ("auto", "raw", "httpx"):
        raise TrdeployError(f"--http-client {http_client!r} is not auto, raw or httpx.", hint="auto picks raw for plain http://.")
    if http_client == "raw" and not base_url.startswith("http://"):
        raise TrdeployError("--http-client raw speaks plain http:// only.", hint="Use --http-client httpx (or auto) for https://.")
    if warmup < 0:
        raise TrdeployError(f"--warmup must be 0 or more (got {warmup}).", hint="Requests sent before measuring.")
    if not (gauge_interval_s == 0 or gauge_interval_s >= 0.1):  # also refuses NaN
        raise TrdeployError(f"--gauge-interval must be 0 (off) or at least 0.1 s (got {gauge_interval_s}).", hint="E.g. --gauge-interval 5.")
    if temperature is not None and not math.isfinite(temperature):
        raise TrdeployError(f"--temperature must be a finite number (got {temperature}).", hint="E.g. --temperature 0.7.")
    try:  # what would go on the wire: JSON has no NaN or Infinity, and servers reject or misread them
        json.dumps(extra, allow_nan=False)
    except ValueError:
        raise TrdeployError("--extra-body contains NaN or Infinity, which JSON (and the server) cannot take.", hint="Use finite numbers.") from None
    if api_key:
        check_header_value(api_key, "--api-key (or OPENAI_API_KEY)")
    sampling = Sampling(max_tokens=output_tokens, ignore_eos=ignore_eos, min_tokens=min_tokens, temperature=temperature, extra_body=extra)
    endpoint = Endpoint(base_url=base_url, api=api, model=model or "", api_key=api_key or None, timeout_s=timeout_s, v1_prefix=v1)  # type: ignore[arg-type]
    return BenchPlan(
        endpoint=endpoint,
        sampling=sampling,
        loads=loads,
        sweep_parameter=sweep_parameter,
        prompt_spec=prompt_spec,
        sla=sla,
        sla_source=sla_source,
        percentiles=parse_percentiles(percentiles),
        warmup=warmup,
        server_metrics=server_metrics,
        gauge_interval_s=gauge_interval_s,
        model_source=model_source,
        profile_defaults=tuple(profile_defaults),
        seed=seed,
        http_client=http_client,
    )


def build_prompts(plan: BenchPlan) -> PromptSource:
    spec, api, seed = plan.prompt_spec, plan.endpoint.api, plan.seed
    kind = spec["kind"]
    if kind == "synthetic":
        return SyntheticPrompts(spec["input_len"], spec["vocab_size"], seed=seed)
    if kind == "dataset":
        limit = max([1000, *((s.num_requests or 0) for s in plan.loads)])
        return dataset_prompts(spec["dataset"], spec["split"], spec["field"], api, seed=seed, limit=limit)
    if kind == "file":
        return file_prompts(Path(spec["path"]), api, seed=seed)
    return embedded_prompts(kind, api, seed=seed)


def detect_model(base_url: str, v1: str, api_key: str | None) -> str:
    """The first model the server lists on /v1/models (what `vllm bench serve` does without --model)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    where = base_url + v1 + "/models"
    try:
        resp = httpx.get(where, headers=headers, timeout=15.0)
    except httpx.HTTPError as exc:
        raise TrdeployError(f"Cannot reach {where} to find the model ({type(exc).__name__}).",
                            hint="Is the server running at --url? Or pass --model NAME.") from exc  # fmt: skip
    if resp.status_code != 200:
        raise TrdeployError(f"{where} answered HTTP {resp.status_code}.", hint="Check --url and --api-key, or pass --model NAME.")
    try:
        data = resp.json()["data"]
        return str(data[0]["id"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise TrdeployError(f"{where} lists no model.", hint="Pass --model NAME.") from exc


# --------------------------------------------------------------------------------------------------
# Running


@dataclass
class RunOutcome:
    """One load level's report entry plus the samples the plot draws."""

    report: dict[str, Any]
    samples: dict[str, np.ndarray] = field(default_factory=dict)


def _load_dict(spec: LoadSpec) -> dict[str, Any]:
    return {
        "concurrency": spec.concurrency,
        "request_rate": None if spec.closed_loop else spec.request_rate,
        "burstiness": spec.burstiness if not spec.closed_loop else None,
        "num_requests": spec.num_requests,
        "duration_s": spec.duration_s,
        "closed_loop": spec.closed_loop,
    }


def load_label(spec: LoadSpec) -> str:
    if spec.closed_loop:
        return f"concurrency {spec.concurrency}" if spec.concurrency else "all at once"
    label = f"{spec.request_rate:g} req/s"
    if spec.burstiness != 1.0:
        label += f" (burstiness {spec.burstiness:g})"
    if spec.concurrency:
        label += f", max {spec.concurrency} in flight"
    return label


def _thin(values: np.ndarray, n: int = PLOT_SAMPLE) -> np.ndarray:
    if values.size <= n:
        return values.astype(np.float32, copy=True)
    idx = np.linspace(0, values.size - 1, n).astype(np.int64)
    return np.sort(values)[idx].astype(np.float32)


async def _gauge_sampler(client: httpx.AsyncClient, plan: BenchPlan, peaks: dict[str, float], interval: float) -> None:
    """Peaks of the server's running / waiting / KV-use gauges, scraped every `interval` seconds.

    Opt-in (--gauge-interval): each scrape makes vLLM's API server render its whole Prometheus text
    in the process that streams the tokens, and this client download and parse it in the loop that
    times them, so sampling during the run perturbs what the run measures.
    """
    headers = plan.endpoint.headers()
    while True:
        await asyncio.sleep(interval)
        sample = await scrape(client, plan.endpoint.base_url, headers, plan.endpoint.model)
        if sample is None:
            continue
        for key, names in SERVER_GAUGES.items():
            value = _first(sample, names)
            if value is not None:
                peaks[key] = max(peaks.get(key, value), value)


async def _run_one(
    plan: BenchPlan,
    spec: LoadSpec,
    prompts: PromptSource,
    stop: asyncio.Event,
    on_done: Callable[[RequestResult], None] | None,
) -> RunOutcome:
    store = ResultStore(expected=spec.num_requests, seed=spec.seed)
    client = make_client(plan.endpoint, spec.concurrency, plan.http_client)
    side = httpx.AsyncClient(timeout=10.0, trust_env=True)  # scrapes never queue behind the load's connections
    headers = plan.endpoint.headers()
    before = after = None
    peaks: dict[str, float] = {}
    sampler = None
    try:
        if plan.server_metrics:
            before = await scrape(side, plan.endpoint.base_url, headers, plan.endpoint.model)
            if before is not None and plan.gauge_interval_s > 0:
                sampler = asyncio.create_task(_gauge_sampler(side, plan, peaks, plan.gauge_interval_s))
        stats: RunStats = await run_load(plan.endpoint, plan.sampling, prompts, spec, store, stop=stop, on_done=on_done, client=client)
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        if before is not None:
            await asyncio.sleep(0.25)  # let the server's counters take in the last responses
            after = await scrape(side, plan.endpoint.base_url, headers, plan.endpoint.model)
    finally:
        if sampler is not None and not sampler.done():
            sampler.cancel()
        await client.aclose()
        await side.aclose()

    summary = summarize(store, stats.duration_s, percentiles=plan.percentiles, sla=plan.sla)
    if before is not None and after is not None:
        server = server_metrics_delta(before, after, peaks)
        gen = server["counters"].get("generation_tokens")
        server["client"] = {
            "completed": summary["completed"],
            "prompt_tokens": summary["total_input_tokens"],
            "generation_tokens": summary["total_output_tokens"],
        }
        server["generation_tokens_diff"] = None if gen is None else gen - summary["total_output_tokens"]
    else:
        reason = "disabled (--no-server-metrics)" if not plan.server_metrics else "no Prometheus vllm:* metrics at /metrics"
        server = {"available": False, "reason": reason}
    verdict = evaluate_sla(summary, plan.sla)
    report = {
        "label": load_label(spec),
        "load": _load_dict(spec),
        "sent": stats.sent,
        "dispatch_span_s": stats.dispatch_span_s,
        "last_sent_s": stats.last_sent_s,
        "interrupted": stats.interrupted,
        **summary,
        "server_metrics": server,
        "verdict": verdict,
    }
    ok = store.column("status") == 0
    ttft, lat = store.column("ttft")[ok], store.column("latency")[ok]
    out = store.column("output_tokens")[ok]
    many = out > 1
    samples = {
        "ttft": _thin(ttft * 1000),
        "tpot": _thin((lat[many] - ttft[many]) / (out[many] - 1) * 1000),
        "itl": _thin(store.itl.values().astype(np.float64) * 1000),
        "e2el": _thin(lat * 1000),
    }
    return RunOutcome(report=report, samples=samples)


async def _warmup(plan: BenchPlan, prompts: PromptSource, stop: asyncio.Event) -> dict[str, Any]:
    store = ResultStore(expected=plan.warmup)
    spec = LoadSpec(concurrency=min(plan.warmup, plan.loads[0].concurrency or plan.warmup), num_requests=plan.warmup, seed=plan.seed + 7919)
    client = make_client(plan.endpoint, spec.concurrency, plan.http_client)
    try:
        await run_load(plan.endpoint, plan.sampling, prompts, spec, store, stop=stop, client=client)
    finally:
        await client.aclose()
    status = store.column("status")
    return {"requests": plan.warmup, "failed": int((status == 1).sum()), "errors": dict(store.errors)}


@dataclass
class BenchResult:
    report: dict[str, Any]
    samples: list[tuple[str, dict[str, np.ndarray]]]

    @property
    def exit_code(self) -> int:
        if self.report["interrupted"]:
            return 130
        return 0 if self.report["verdict"]["passed"] else 1


def run_bench(
    plan: BenchPlan,
    *,
    on_start: Callable[[int, LoadSpec], None] | None = None,
    on_done: Callable[[RequestResult], None] | None = None,
    handle_sigint: bool = True,
) -> BenchResult:
    """Run every load level of the plan and build the report. Ctrl-C (SIGINT) stops sending, cancels
    the requests in flight and returns the partial report (`interrupted: true`)."""
    if not plan.endpoint.model:
        plan = replace(plan, endpoint=replace(plan.endpoint, model=detect_model(plan.endpoint.base_url, plan.endpoint.v1_prefix, plan.endpoint.api_key)))
    prompts = build_prompts(plan)
    started = datetime.now(UTC).isoformat(timespec="seconds")

    async def main() -> tuple[list[RunOutcome], dict[str, Any] | None, bool]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = False
        if handle_sigint:
            def on_signal(signum: int) -> None:
                stop.set()
                loop.remove_signal_handler(signum)  # a second Ctrl-C (or SIGTERM) interrupts for good

            # SIGTERM (kill, a CI job's timeout, a Kubernetes pod ending) keeps the partial report too.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, on_signal, signum)
                installed = True
        outcomes: list[RunOutcome] = []
        warm = None
        try:
            if plan.warmup:
                warm = await _warmup(plan, prompts, stop)
            for i, spec in enumerate(plan.loads):
                if stop.is_set():
                    break
                if on_start is not None:
                    on_start(i, spec)
                outcomes.append(await _run_one(plan, spec, prompts, stop, on_done))
        finally:
            if installed:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(signum)
        return outcomes, warm, stop.is_set()

    t0 = time.perf_counter()
    outcomes, warm, interrupted = asyncio.run(main())
    runs = [o.report for o in outcomes]
    report = assemble_report(plan, prompts, runs, warm, interrupted, started, time.perf_counter() - t0)
    labels = [(o.report["label"], o.samples) for o in outcomes]
    return BenchResult(report=report, samples=labels)


def assemble_report(
    plan: BenchPlan,
    prompts: PromptSource,
    runs: list[dict[str, Any]],
    warmup: dict[str, Any] | None,
    interrupted: bool,
    started: str,
    wall_s: float,
) -> dict[str, Any]:
    failed_runs = [i for i, r in enumerate(runs) if not r["verdict"]["passed"]]
    passing = None
    if plan.sweep_parameter and runs:
        key = plan.sweep_parameter
        ok_values = [r["load"][key] for r in runs if r["verdict"]["passed"] and r["load"][key] is not None]
        passing = max(ok_values) if ok_values else None
    passed = bool(runs) and not failed_runs and not interrupted
    ep = plan.endpoint
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": f"trdeploy {__version__} bench",
        "started_at": started,
        "wall_s": wall_s,
        "interrupted": interrupted,
        "endpoint": {"url": ep.base_url + ep.v1_prefix, "api": ep.api, "model": ep.model, "model_source": plan.model_source},
        "prompts": {
            "source": plan.prompt_spec["kind"],
            "description": getattr(prompts, "description", ""),
            "distinct": len(prompts) if isinstance(prompts, ListPrompts) else None,
        },
        "sampling": {
            "max_tokens": plan.sampling.max_tokens,
            "ignore_eos": plan.sampling.ignore_eos,
            "min_tokens": plan.sampling.min_tokens,
            "temperature": plan.sampling.temperature,
            "extra_body": plan.sampling.extra_body,
        },
        "timeout_s": ep.timeout_s,
        "http_client": plan.http_client,
        "sla": {**plan.sla.as_dict(), "source": plan.sla_source},
        "percentiles": list(plan.percentiles),
        "word_pattern": WORD_PATTERN.pattern,
        "profile_defaults": list(plan.profile_defaults),
        "warmup": warmup,
        "sweep": {"parameter": plan.sweep_parameter, "values": [r["load"][plan.sweep_parameter] for r in runs]}
        if plan.sweep_parameter
        else None,
        "runs": runs,
        "verdict": {"passed": passed, "failed_runs": failed_runs, "max_passing": passing},
    }


# --------------------------------------------------------------------------------------------------
# The plot


def plot_png(samples: list[tuple[str, dict[str, np.ndarray]]], title: str) -> bytes:
    """Histograms of TTFT, TPOT, ITL and E2E latency (ms), one colour per load level; PNG bytes."""
    try:
        import matplotlib
    except ImportError as exc:
        raise TrdeployError("--plot needs matplotlib.", hint="pip install 'trdeploy[bench]'.") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = (("ttft", "TTFT (ms)"), ("tpot", "TPOT (ms)"), ("itl", "ITL (ms)"), ("e2el", "E2E latency (ms)"))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes.flat, names, strict=True):
        present = [(i, run_label, data[key]) for i, (run_label, data) in enumerate(samples) if data.get(key) is not None and data[key].size]
        if not present:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(label)
            continue
        # One set of bins for every load level, so the histograms compare.
        bins = np.histogram_bin_edges(np.concatenate([v for _, _, v in present]), bins=50)
        for i, run_label, values in present:
            color = colors[i % len(colors)]
            p50, p95 = np.percentile(values, [50, 95])
            ax.hist(values, bins=bins, alpha=0.55, color=color, label=f"{run_label}: p50 {p50:.1f}, p95 {p95:.1f}")
            ax.axvline(p95, color=color, linestyle="--", linewidth=1)
        ax.set_xlabel(label + "  (dashed: p95)")
        ax.set_ylabel("requests" if key != "itl" else "token gaps")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
