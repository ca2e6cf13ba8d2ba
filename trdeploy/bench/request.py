"""`BenchRequest`: the arguments of `trdeploy bench`, the single source of their defaults, allowed values
and help (the CLI's options read them); `plan_bench` (trdeploy.bench.plan) checks what depends on
several of them or on the DeploymentProfile. None means "derived": the note says from what."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from trdeploy.args import Args, arg

DEFAULT_URL = "http://localhost:8000"
DEFAULT_NUM_PROMPTS = 100
DEFAULT_PERCENTILES = (50.0, 95.0, 99.0)
# Llama-3's regular (non-special) token ids are 0..127999; synthetic prompts draw from [0, vocab).
DEFAULT_SYNTHETIC_VOCAB = 128_000

Api = Literal["chat", "completions"]  # the OpenAI endpoint: /v1/chat/completions or /v1/completions
HttpClient = Literal["auto", "raw", "httpx"]


class BenchRequest(Args):
    command: ClassVar[str] = "bench"

    url: str = arg(DEFAULT_URL, help="Server root (with or without /v1).")
    api: Api = arg("chat", help="chat (/v1/chat/completions) or completions (/v1/completions).")
    model: str | None = arg(None, help="Model name to request.", default_note="the profile's served model name, else the first of /v1/models")
    api_key: str | None = arg(None, help="Bearer token (or OPENAI_API_KEY).")
    profile: Path | None = arg(None, help="DeploymentProfile (trdeploy.yaml): SLA, served model name, workload defaults.")
    concurrency: int | None = arg(
        None, help="Requests in flight (closed loop); with --request-rate, a cap.", default_note="1, or the profile's workload.concurrency"
    )
    request_rate: float | None = arg(None, help="Arrivals per second (Poisson; see --burstiness).")
    burstiness: float = arg(1.0, help="Gamma shape of the arrival gaps: 1 Poisson, <1 burstier, >1 more regular (as vLLM).")
    sweep: str | None = arg(None, help="Run several load levels: concurrency=1,4,16 or request-rate=0.5,1,2.")
    num_prompts: int | None = arg(None, help="Requests per load level.", default_note=f"{DEFAULT_NUM_PROMPTS}, or unlimited with --duration")
    duration_s: float | None = arg(None, flag="--duration", help="Stop sending after this many seconds (requests in flight finish).")
    prompts: str = arg(
        "embedded",
        help="embedded (chat: Turkish conversations; completions: Turkish corpus), corpus, conversations, "
        "or a file (.txt lines / .jsonl with prompt, messages or text).",
    )
    dataset: str | None = arg(None, help="Hugging Face dataset id (or local data folder) to take prompts from (needs trdeploy\\[data]).")
    dataset_split: str = arg("train", help="Dataset split.")
    dataset_field: str | None = arg(None, help="Dataset column with the prompts.", default_note="messages/conversations/prompt/text...")
    synthetic: int | None = arg(None, help="INPUT_LEN random token ids per prompt, sent as a token-id prompt (completions only).")
    synthetic_vocab_size: int = arg(DEFAULT_SYNTHETIC_VOCAB, ge=2, le=2**31 - 1, help="Token ids for --synthetic are drawn from [0, this).")
    output_tokens: int | None = arg(
        None, help="max_tokens per request.", default_note="natural length, or the profile's workload.output_tokens"
    )
    ignore_eos: bool = arg(False, help="Send ignore_eos (vLLM) so every request generates exactly --output-tokens.")
    min_tokens: int | None = arg(None, help="Send min_tokens (vLLM).")
    temperature: float | None = arg(None, help="Sampling temperature.", default_note="the server's")
    extra_body: str | None = arg(None, help="JSON object merged into every request body.")
    timeout_s: float = arg(600.0, flag="--timeout", help="Seconds one request may take before it counts as a timeout.")
    sla_ttft_p95_ms: float | None = arg(None, help="Target for p95 TTFT (overrides the profile's).")
    sla_e2e_p95_ms: float | None = arg(None, help="Target for p95 end-to-end latency.")
    sla_tpot_ms: float | None = arg(None, help="Target for the median TPOT.")
    max_error_rate: float = arg(0.01, help="Largest share of failed requests that still passes.")
    percentiles: str = arg(",".join(f"{p:g}" for p in DEFAULT_PERCENTILES), help="Percentiles to report (p95 always).")
    warmup: int = arg(0, help="Requests sent before measuring (not counted).")
    server_metrics: bool = arg(True, help="Scrape Prometheus /metrics before and after each run (counter deltas, server-side means).")
    gauge_interval_s: float = arg(
        0.0,
        flag="--gauge-interval",
        help="Also sample the server's running/waiting/KV-use gauges every S seconds during the run, for their peaks "
        "(0: off; each scrape perturbs the run a little).",
    )
    seed: int = arg(0, help="Seed for prompt order, synthetic prompts and arrival times.")
    prompt_salt: int | None = arg(
        None,
        ge=0,
        help="Send the prompts of the run that used this salt (the report's prompts.salt); without it every run's prompts are new, "
        "so vLLM's prefix cache cannot serve them from an earlier run.",
        default_note="a fresh salt per run",
    )
    http_client: HttpClient = arg(
        "auto", help="auto (a lean built-in HTTP/1.1 client for plain http://, httpx for https:// or proxies), raw or httpx."
    )
