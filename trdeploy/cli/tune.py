"""`trdeploy tune`: exact vLLM engine arguments and predictions for a model on a GPU tier."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from trdeploy.cli._options import ForceOpt, JsonOpt, OutputOpt
from trdeploy.output import emit, ensure_writable, warn

GPU_TIERS = "h100, h200, a100-80gb, a100-40gb, l40s, l4, a10g, rtx4090"


class Quant(str, Enum):
    none = "none"
    awq = "awq"
    fp8 = "fp8"


class KvDtype(str, Enum):
    auto = "auto"
    fp8 = "fp8"


class CompileCache(str, Enum):
    cold = "cold"
    warm = "warm"


def tune(
    gpu: Annotated[str, typer.Option("--gpu", help=f"GPU tier: {GPU_TIERS}.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Preset (llama-3-8b, llama-3.1-70b, ...), local checkpoint folder, or hub id.")] = "llama-3-8b",
    gpus: Annotated[Optional[int], typer.Option("--gpus", help="GPUs per replica (tensor parallelism). \\[default: the fewest that fit]")] = None,
    quantization: Annotated[Optional[Quant], typer.Option("--quantization", "-q", help="Weights: none (bf16), awq (int4) or fp8. \\[default: what the checkpoint has, else none]")] = None,
    kv_cache_dtype: Annotated[KvDtype, typer.Option("--kv-cache-dtype", help="KV cache dtype: auto (model dtype) or fp8 (half the bytes).")] = KvDtype.auto,
    context_words: Annotated[Optional[int], typer.Option("--context-words", help="Turkish context the application needs, in words (converted with p95 tokens per word). \\[default: 2000]")] = None,
    tokens_per_word: Annotated[Optional[float], typer.Option("--tokens-per-word", help="Use this tokens-per-word instead of measuring it (e.g. from `trdeploy profile`).")] = None,
    corpus: Annotated[Optional[str], typer.Option("--corpus", help="Measure tokens per word on this Turkish corpus (text/JSONL/CSV/Parquet file or hub dataset) instead of the embedded one.")] = None,
    percentile: Annotated[float, typer.Option("--percentile", min=1.0, max=100.0, help="Percentile of per-document tokens per word.")] = 95.0,
    max_model_len: Annotated[Optional[int], typer.Option("--max-model-len", help="vLLM max_model_len in tokens (instead of --context-words).")] = None,
    prompt_tokens: Annotated[Optional[int], typer.Option("--prompt-tokens", help="Typical prompt length in tokens. \\[default: 1024, or less to fit]")] = None,
    output_tokens: Annotated[Optional[int], typer.Option("--output-tokens", help="Typical output length in tokens. \\[default: 256]")] = None,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", "-c", help="Requests in flight to plan for (all replicas). \\[default: 32]")] = None,
    requests_per_day: Annotated[Optional[float], typer.Option("--requests-per-day", help="Daily traffic to plan replicas for (instead of --concurrency).")] = None,
    peak_factor: Annotated[float, typer.Option("--peak-factor", help="Peak-hour rate over the daily average rate.")] = 3.0,
    sla_ttft_p95_ms: Annotated[Optional[float], typer.Option("--sla-ttft-p95-ms", help="SLA: p95 time to first token, ms.")] = None,
    sla_e2e_p95_ms: Annotated[Optional[float], typer.Option("--sla-e2e-p95-ms", help="SLA: p95 end-to-end latency, ms.")] = None,
    sla_tpot_ms: Annotated[Optional[float], typer.Option("--sla-tpot-ms", help="SLA: median time per output token, ms.")] = None,
    max_num_seqs: Annotated[Optional[int], typer.Option("--max-num-seqs", help="Override vLLM max_num_seqs.")] = None,
    max_num_batched_tokens: Annotated[Optional[int], typer.Option("--max-num-batched-tokens", help="Override vLLM max_num_batched_tokens. \\[default: vLLM's for the GPU: 8192 on H100/H200, else 2048]")] = None,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option("--gpu-memory-utilization", help="Override vLLM gpu_memory_utilization. \\[default: 0.9]")] = None,
    compile_cache: Annotated[CompileCache, typer.Option("--compile-cache", help="Predict the first start (cold torch.compile cache) or a restart with ~/.cache/vllm kept (warm).")] = CompileCache.cold,
    name: Annotated[Optional[str], typer.Option("--name", help="Profile name. \\[default: model-quant-gpu]")] = None,
    served_model_name: Annotated[Optional[str], typer.Option("--served-model-name", help="vLLM served_model_name (the name clients send).")] = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Exact vLLM engine arguments and predictions for a model on a GPU tier.

    Follows vLLM 0.25's own memory accounting to predict the KV cache it will log ("GPU KV cache size:
    N tokens"), converts the Turkish context you need from words to tokens, picks the fewest GPUs that
    start, and predicts TTFT/TPOT/end-to-end latency, throughput, replicas and cost for your load.

    Examples:

        trdeploy tune --gpu h100

        trdeploy tune --gpu l40s --model llama-3.1-8b --quantization awq --context-words 6000 -o trdeploy.yaml

        trdeploy tune --gpu h100 --model llama-3.3-70b --quantization awq --requests-per-day 200000 --sla-ttft-p95-ms 2000

        trdeploy tune --gpu a100-80gb --model ./my-turkish-llama --max-model-len 16384 --kv-cache-dtype fp8 --json
    """
    from trdeploy.sizing.tuning import TuneRequest
    from trdeploy.sizing.tuning import tune as run_tune

    if output is not None:
        ensure_writable(output, force=force)
    req = TuneRequest(
        gpu=gpu,
        model=model,
        gpus=gpus,
        quantization=quantization.value if quantization else None,
        kv_cache_dtype=kv_cache_dtype.value,
        context_words=context_words,
        tokens_per_word=tokens_per_word,
        corpus=corpus,
        percentile=percentile,
        max_model_len=max_model_len,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        concurrency=concurrency,
        requests_per_day=requests_per_day,
        peak_factor=peak_factor,
        ttft_p95_ms=sla_ttft_p95_ms,
        e2e_p95_ms=sla_e2e_p95_ms,
        tpot_ms=sla_tpot_ms,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        gpu_memory_utilization=gpu_memory_utilization,
        compile_cache=compile_cache.value,
        name=name,
        served_model_name=served_model_name,
    )
    result = run_tune(req)
    written = None
    if output is not None:
        written = str(result.profile.save(output, force=force))
    if not as_json:
        for w in result.warnings:
            warn(w)
    data = result.as_json()
    data["written"] = written
    emit(data, as_json=as_json, render=lambda console: _render(console, result, written))


def _render(console: Console, result, written: str | None) -> None:
    p = result.profile
    pred = p.prediction
    per = pred.details["per_gpu"]
    lat = pred.details["latency_per_replica"]
    title = f"{p.name}: {p.model.id} on {p.gpu.count}x {p.gpu.tier}"
    console.print(f"[bold]{title}[/]")

    mem = Table(title="Memory per GPU (vLLM 0.25 accounting)", show_header=True, header_style="bold")
    mem.add_column("item")
    mem.add_column("value", justify="right")
    mem.add_row("CUDA-visible memory", f"{per['cuda_total_gib']:.2f} GiB")
    mem.add_row(f"budget (x {p.engine_args.gpu_memory_utilization})", f"{per['requested_gib']:.2f} GiB")
    mem.add_row("weights", f"{per['weights_gib']:.2f} GiB")
    mem.add_row("activation peak (profile run)", f"{per['activation_peak_gib']:.2f} GiB")
    mem.add_row("non-torch", f"{per['non_torch_gib']:.2f} GiB")
    mem.add_row("KV cache", f"{per['kv_cache_gib']:.2f} GiB")
    mem.add_row("KV bytes per token (this GPU)", f"{per['kv_bytes_per_token'] / 1024:.0f} KiB ({per['kv_heads']} KV heads)")
    mem.add_row("[bold]GPU KV cache size[/]", f"[bold]{pred.kv_cache_tokens:,} tokens[/]")
    mem.add_row(f"max concurrency at {p.engine_args.max_model_len} tokens", f"{pred.max_concurrency['at_max_model_len']:.2f}x")
    mem.add_row(f"max concurrency at {p.workload.prompt_tokens}+{p.workload.output_tokens} tokens", f"{pred.max_concurrency['at_typical_request']:.1f}x")
    console.print(mem)

    perf = Table(title=f"Predicted at {lat['concurrency']} concurrent requests per replica", show_header=True, header_style="bold")
    perf.add_column("metric")
    perf.add_column("value", justify="right")
    perf.add_row("TTFT p95 / p50", f"{pred.ttft_ms:,.0f} / {lat['ttft_p50_ms']:,.0f} ms")
    perf.add_row("TPOT median", f"{pred.tpot_ms:.1f} ms")
    perf.add_row("end-to-end p95", f"{pred.e2e_ms:,.0f} ms")
    perf.add_row("output tokens/s (all replicas)", f"{pred.output_tokens_per_s:,.0f}")
    perf.add_row("replicas", f"{pred.replicas} x {p.gpu.count} GPU")
    perf.add_row("hourly cost", f"${pred.hourly_cost_usd:,.2f}")
    if pred.sla_met is not None:
        verdict = "[green]met[/]" if pred.sla_met else "[red]NOT met[/]"
        perf.add_row("SLA", f"{verdict} (holds up to {pred.sla_max_concurrency} per replica)")
    console.print(perf)

    console.print("[bold]Start it with:[/]")
    console.print(" ".join(p.engine_args.serve_command()), soft_wrap=True, highlight=False)
    console.print(f"[dim]{len(p.assumptions)} assumptions recorded in the profile (see --json or the YAML).[/]")
    if written:
        console.print(f"Wrote {written}")


def register(app: typer.Typer) -> None:
    app.command("tune", no_args_is_help=True)(tune)
