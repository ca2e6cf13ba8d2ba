"""`plan_bench(...)`: options (and the DeploymentProfile, when given) -> a `BenchPlan`, checked before any request."""

from __future__ import annotations

import ipaddress
import json
import math
import re
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from trdeploy.bench.metrics import SlaTargets
from trdeploy.bench.prompts import PromptSource, SyntheticPrompts, dataset_prompts, embedded_prompts, file_prompts
from trdeploy.bench.request import DEFAULT_NUM_PROMPTS, DEFAULT_PERCENTILES, BenchRequest
from trdeploy.bench.scheduler import LoadSpec
from trdeploy.bench.transport import Endpoint, Sampling
from trdeploy.errors import TrdeployError
from trdeploy.inputs import loads_json
from trdeploy.output import redact_url


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
    load_source: str = "default"  # where the load level came from: an option, the profile, or the default
    seed: int = 0
    http_client: str = "auto"
    prompt_salt: int = 0  # each load level's prompts are the stream (salt, level): see trdeploy.bench.prompts
    prompt_salt_given: bool = False  # --prompt-salt: the same prompts as the run that used it


def normalize_url(url: str) -> tuple[str, str]:
    """(server root, v1 prefix) from a URL given with or without its /v1."""
    url = url.strip().rstrip("/")
    hint = "Pass the server root, e.g. --url http://localhost:8000."
    if not re.match(r"^https?://[^/\s]+", url):
        raise TrdeployError(f"--url {redact_url(url)!r} is not an http(s) URL.", hint=hint)
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise TrdeployError(f"--url {redact_url(url)!r} contains spaces or control characters.", hint=hint)
    try:  # urllib and httpx raise ValueError for a port out of range, a non-numeric port or bad IPv6
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
        if "[" in parts.netloc:
            ipaddress.IPv6Address((host or "").split("%")[0])
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise TrdeployError(f"--url {redact_url(url)!r} is not a valid URL ({exc}).", hint=hint) from None
    if not host:
        raise TrdeployError(f"--url {redact_url(url)!r} has no host.", hint=hint)
    if port == 0:
        raise TrdeployError(f"--url {redact_url(url)!r}: port 0 is not a server port.", hint=hint)
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


def plan_bench(request: BenchRequest | None = None, /, **options: Any) -> BenchPlan:
    """`plan_bench(BenchRequest(...))`, or the same fields as keywords: validate the options and resolve
    them (with the DeploymentProfile's SLA, served model name and workload as defaults) into a plan.
    Raises TrdeployError for anything a user can fix, pydantic's ValidationError for a field out of its type."""
    req = request if request is not None else BenchRequest(**options)
    return _plan(req)


def _plan(req: BenchRequest) -> BenchPlan:
    """Validate the options together and against the profile, and resolve them (with the DeploymentProfile's SLA,
    served model name and workload as defaults) into a plan. Raises TrdeployError for anything a user can fix."""
    # The profile may fill these in (model name, max_tokens, the load); num_prompts gets its default here.
    model, output_tokens, concurrency, request_rate, num_prompts = req.model, req.output_tokens, req.concurrency, req.request_rate, req.num_prompts
    base_url, v1 = normalize_url(req.url)
    profile_defaults: list[str] = []
    load_source = "--sweep" if req.sweep else "--request-rate" if request_rate is not None else "--concurrency" if concurrency is not None else "default (one request at a time)"
    sla_source = "none"
    p_sla = None
    model_source = "flag" if model else "server"
    if req.profile is not None:
        from trdeploy.deployment import DeploymentProfile  # pydantic + yaml, both on the bench path

        prof = DeploymentProfile.load(req.profile)
        p_sla = prof.sla
        if model is None:
            model = prof.engine_args.served_model_name  # what build's image and render-k8s's pods serve
            model_source = "profile"
        if output_tokens is None:
            output_tokens = prof.workload.output_tokens
            profile_defaults.append(f"max_tokens={output_tokens} (workload.output_tokens)")
        if concurrency is None and request_rate is None and req.sweep is None:
            if prof.workload.concurrency:
                concurrency = prof.workload.concurrency
                profile_defaults.append(f"concurrency={concurrency} (workload.concurrency)")
                load_source = "profile workload.concurrency (the load tune planned for)"
            elif prof.prediction.capacity.peak_requests_per_s:
                request_rate = prof.prediction.capacity.peak_requests_per_s
                profile_defaults.append(f"request_rate={request_rate:g} (prediction.capacity.peak_requests_per_s)")
                load_source = "profile prediction.capacity.peak_requests_per_s (the peak rate tune planned for, Poisson arrivals)"
    sla = SlaTargets(
        ttft_p95_ms=req.sla_ttft_p95_ms if req.sla_ttft_p95_ms is not None else (p_sla.ttft_p95_ms if p_sla else None),
        e2e_p95_ms=req.sla_e2e_p95_ms if req.sla_e2e_p95_ms is not None else (p_sla.e2e_p95_ms if p_sla else None),
        tpot_ms=req.sla_tpot_ms if req.sla_tpot_ms is not None else (p_sla.tpot_ms if p_sla else None),
        max_error_rate=req.max_error_rate,
    )
    flags_sla = any(v is not None for v in (req.sla_ttft_p95_ms, req.sla_e2e_p95_ms, req.sla_tpot_ms))
    profile_sla = p_sla is not None and any(v is not None for v in (p_sla.ttft_p95_ms, p_sla.e2e_p95_ms, p_sla.tpot_ms))
    sla_source = "profile+flags" if flags_sla and profile_sla else "flags" if flags_sla else "profile" if profile_sla else "none"
    for name, value in (("--sla-ttft-p95-ms", req.sla_ttft_p95_ms), ("--sla-e2e-p95-ms", req.sla_e2e_p95_ms), ("--sla-tpot-ms", req.sla_tpot_ms)):
        if value is not None and not value > 0:
            raise TrdeployError(f"{name} must be above 0 (got {value}).", hint="Give the target in milliseconds.")
    if not 0 <= req.max_error_rate <= 1:
        raise TrdeployError(f"--max-error-rate must be between 0 and 1 (got {req.max_error_rate}).", hint="0.01 allows 1% failed requests.")

    # Load levels.
    if concurrency is not None and concurrency < 1:
        raise TrdeployError(f"--concurrency must be at least 1 (got {concurrency}).", hint="Use --concurrency 1 for one request at a time.")
    if request_rate is not None and not request_rate > 0:
        raise TrdeployError(f"--request-rate must be above 0 (got {request_rate}).", hint="Requests per second, e.g. --request-rate 2.")
    if not req.burstiness > 0:
        raise TrdeployError(f"--burstiness must be above 0 (got {req.burstiness}).", hint="1 is Poisson; below 1 burstier, above 1 more regular.")
    if num_prompts is not None and num_prompts < 1:
        raise TrdeployError(f"--num-prompts must be at least 1 (got {num_prompts}).", hint="Or give --duration SECONDS instead.")
    if req.duration_s is not None and not req.duration_s > 0:
        raise TrdeployError(f"--duration must be above 0 seconds (got {req.duration_s}).", hint="E.g. --duration 60.")
    if num_prompts is None and req.duration_s is None:
        num_prompts = DEFAULT_NUM_PROMPTS
    rate = request_rate if request_rate is not None else math.inf
    base = LoadSpec(concurrency=concurrency, request_rate=rate, burstiness=req.burstiness,
                    num_requests=num_prompts, duration_s=req.duration_s, seed=req.seed)  # fmt: skip
    sweep_parameter = None
    if req.sweep:
        sweep_parameter, values = parse_sweep(req.sweep)
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
    sources = [s for s in (req.synthetic is not None, req.dataset is not None, req.prompts != "embedded") if s]
    if len(sources) > 1:
        raise TrdeployError("Give one prompt source: --prompts, --dataset or --synthetic.", hint="They are alternatives.")
    if req.synthetic is not None:
        if req.api != "completions":
            raise TrdeployError("--synthetic sends token-id prompts, which only /v1/completions accepts.", hint="Add --api completions.")
        if req.synthetic < 1:
            raise TrdeployError(f"--synthetic must be at least 1 token (got {req.synthetic}).", hint="E.g. --synthetic 512.")
        if req.synthetic_vocab_size < 2:
            raise TrdeployError("--synthetic-vocab-size must be at least 2.", hint="Llama-3's regular tokens are 0..127999.")
        prompt_spec: dict[str, Any] = {"kind": "synthetic", "input_len": req.synthetic, "vocab_size": req.synthetic_vocab_size}
    elif req.dataset is not None:
        prompt_spec = {"kind": "dataset", "dataset": req.dataset, "split": req.dataset_split, "field": req.dataset_field}
    elif req.prompts in ("embedded", "corpus", "conversations"):
        prompt_spec = {"kind": req.prompts}
    else:
        prompt_spec = {"kind": "file", "path": req.prompts}

    # Sampling.
    for name, value in (("--output-tokens", output_tokens), ("--min-tokens", req.min_tokens)):
        if value is not None and value < 1:
            raise TrdeployError(f"{name} must be at least 1 (got {value}).", hint="A number of tokens.")
    if req.ignore_eos and output_tokens is None:
        raise TrdeployError("--ignore-eos needs --output-tokens N (the length every request then generates).", hint="E.g. --output-tokens 300 --ignore-eos.")
    extra: dict[str, Any] = {}
    if req.extra_body:
        extra = loads_json(req.extra_body, where="--extra-body", hint='E.g. --extra-body \'{"top_k": 20}\'.', max_depth=16)
        if not isinstance(extra, dict):
            raise TrdeployError("--extra-body must be a JSON object.", hint='E.g. --extra-body \'{"top_k": 20}\'.')
    if not req.timeout_s > 0:
        raise TrdeployError(f"--timeout must be above 0 seconds (got {req.timeout_s}).", hint="Seconds per request, e.g. --timeout 600.")
    if req.http_client == "raw" and not base_url.startswith("http://"):
        raise TrdeployError("--http-client raw speaks plain http:// only.", hint="Use --http-client httpx (or auto) for https://.")
    if req.warmup < 0:
        raise TrdeployError(f"--warmup must be 0 or more (got {req.warmup}).", hint="Requests sent before measuring.")
    if req.seed < 0:  # numpy's generators take no negative seed
        raise TrdeployError(f"--seed must be 0 or more (got {req.seed}).", hint="E.g. --seed 0.")
    if not (req.gauge_interval_s == 0 or req.gauge_interval_s >= 0.1):  # also refuses NaN
        raise TrdeployError(f"--gauge-interval must be 0 (off) or at least 0.1 s (got {req.gauge_interval_s}).", hint="E.g. --gauge-interval 5.")
    if req.temperature is not None and not math.isfinite(req.temperature):
        raise TrdeployError(f"--temperature must be a finite number (got {req.temperature}).", hint="E.g. --temperature 0.7.")
    try:  # what would go on the wire: JSON has no NaN or Infinity, and servers reject or misread them
        json.dumps(extra, allow_nan=False)
    except ValueError:
        raise TrdeployError("--extra-body contains NaN or Infinity, which JSON (and the server) cannot take.", hint="Use finite numbers.") from None
    if req.api_key:
        check_header_value(req.api_key, "--api-key (or OPENAI_API_KEY)")
    sampling = Sampling(max_tokens=output_tokens, ignore_eos=req.ignore_eos, min_tokens=req.min_tokens, temperature=req.temperature, extra_body=extra)
    endpoint = Endpoint(base_url=base_url, api=req.api, model=model or "", api_key=req.api_key or None, timeout_s=req.timeout_s, v1_prefix=v1)  # type: ignore[arg-type]
    return BenchPlan(
        endpoint=endpoint,
        sampling=sampling,
        loads=loads,
        sweep_parameter=sweep_parameter,
        prompt_spec=prompt_spec,
        sla=sla,
        sla_source=sla_source,
        percentiles=parse_percentiles(req.percentiles),
        warmup=req.warmup,
        server_metrics=req.server_metrics,
        gauge_interval_s=req.gauge_interval_s,
        model_source=model_source,
        profile_defaults=tuple(profile_defaults),
        load_source=load_source,
        seed=req.seed,
        http_client=req.http_client,
        prompt_salt=req.prompt_salt if req.prompt_salt is not None else secrets.randbelow(2**31),
        prompt_salt_given=req.prompt_salt is not None,
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
    url = base_url + v1 + "/models"
    where = redact_url(url)
    try:
        resp = httpx.get(url, headers=headers, timeout=15.0)
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
