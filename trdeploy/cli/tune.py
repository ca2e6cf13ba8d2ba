"""`trdeploy tune`: exact vLLM engine arguments and predictions for a model on a GPU tier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console
from rich.table import Table

from trdeploy.args import default
from trdeploy.cli._options import ForceOpt, JsonOpt, OutputOpt, choices, opt
from trdeploy.deployment import KV_CACHE_DTYPES, QUANTIZATIONS
from trdeploy.errors import TrdeployError
from trdeploy.output import emit, ensure_writable, refuse_input_as_output, warn
from trdeploy.sizing.memory import CompileCache as CompileCacheLiteral
from trdeploy.sizing.request import TuneRequest

Quant = choices("Quant", QUANTIZATIONS)
KvDtype = choices("KvDtype", KV_CACHE_DTYPES)
CompileCache = choices("CompileCache", get_args(CompileCacheLiteral))
Cuda = choices("Cuda", get_args(get_args(TuneRequest.model_fields["cuda"].annotation)[0]))
R = TuneRequest


def tune(
    gpu: Annotated[str, opt(R, "gpu", show_default=False)],
    model: Annotated[str, opt(R, "model", "--model", "-m")] = default(R, "model"),
    gpus: Annotated[int | None, opt(R, "gpus")] = default(R, "gpus"),
    quantization: Annotated[Quant | None, opt(R, "quantization", "--quantization", "-q")] = default(R, "quantization"),
    kv_cache_dtype: Annotated[KvDtype, opt(R, "kv_cache_dtype")] = default(R, "kv_cache_dtype"),
    context_words: Annotated[int | None, opt(R, "context_words")] = default(R, "context_words"),
    tokens_per_word: Annotated[float | None, opt(R, "tokens_per_word")] = default(R, "tokens_per_word"),
    corpus: Annotated[str | None, opt(R, "corpus")] = default(R, "corpus"),
    percentile: Annotated[float, opt(R, "percentile")] = default(R, "percentile"),
    max_model_len: Annotated[int | None, opt(R, "max_model_len")] = default(R, "max_model_len"),
    prompt_tokens: Annotated[int | None, opt(R, "prompt_tokens")] = default(R, "prompt_tokens"),
    output_tokens: Annotated[int | None, opt(R, "output_tokens")] = default(R, "output_tokens"),
    concurrency: Annotated[int | None, opt(R, "concurrency", "--concurrency", "-c")] = default(R, "concurrency"),
    requests_per_day: Annotated[float | None, opt(R, "requests_per_day")] = default(R, "requests_per_day"),
    request_rate: Annotated[float | None, opt(R, "request_rate")] = default(R, "request_rate"),
    peak_factor: Annotated[float, opt(R, "peak_factor")] = default(R, "peak_factor"),
    sla_ttft_p95_ms: Annotated[float | None, opt(R, "ttft_p95_ms")] = default(R, "ttft_p95_ms"),
    sla_e2e_p95_ms: Annotated[float | None, opt(R, "e2e_p95_ms")] = default(R, "e2e_p95_ms"),
    sla_tpot_ms: Annotated[float | None, opt(R, "tpot_ms")] = default(R, "tpot_ms"),
    max_num_seqs: Annotated[int | None, opt(R, "max_num_seqs")] = default(R, "max_num_seqs"),
    max_num_batched_tokens: Annotated[int | None, opt(R, "max_num_batched_tokens")] = default(R, "max_num_batched_tokens"),
    gpu_memory_utilization: Annotated[float | None, opt(R, "gpu_memory_utilization")] = default(R, "gpu_memory_utilization"),
    compile_cache: Annotated[CompileCache, opt(R, "compile_cache")] = default(R, "compile_cache"),
    weights_read_gbps: Annotated[float | None, opt(R, "weights_read_gbps")] = default(R, "weights_read_gbps"),
    calibration: Annotated[Path | None, opt(R, "calibration")] = default(R, "calibration"),
    name: Annotated[str | None, opt(R, "name")] = default(R, "name"),
    served_model_name: Annotated[str | None, opt(R, "served_model_name")] = default(R, "served_model_name"),
    driver: Annotated[str | None, opt(R, "driver")] = default(R, "driver"),
    cuda: Annotated[Cuda | None, opt(R, "cuda")] = default(R, "cuda"),
    gpus_per_node: Annotated[int | None, opt(R, "gpus_per_node")] = default(R, "gpus_per_node"),
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

        trdeploy tune --gpu rtx4090 --driver 575.57.08 --served-model-name turkce-asistan -o trdeploy.yaml

        trdeploy tune --gpu all --quantization awq --requests-per-day 100000   # every tier side by side

        trdeploy tune --gpu h100 --calibration calibration.yaml -o trdeploy.yaml   # predictions measured on your GPU

        trdeploy tune --gpu h200 --request-rate 12 --sla-ttft-p95-ms 1500          # Poisson arrivals, 12 requests/s at peak
    """
    from trdeploy.sizing.tuning import tune as run_tune

    compare_all = gpu.strip().lower() == "all"
    if compare_all and output is not None:
        raise TrdeployError("--gpu all compares every tier and writes no profile; -o/--output needs one tier.", hint="Pick a tier from the comparison and run `trdeploy tune --gpu TIER -o FILE`.")
    if output is not None:
        ensure_writable(output, force=force)
        refuse_input_as_output(output, {"--calibration": calibration, "--corpus": corpus if corpus and Path(corpus).exists() else None})
    req = TuneRequest(
        gpu=gpu,
        model=model,
        gpus=gpus,
        quantization=quantization.value if quantization else None,
        kv_cache_dtype=getattr(kv_cache_dtype, "value", kv_cache_dtype),
        context_words=context_words,
        tokens_per_word=tokens_per_word,
        corpus=corpus,
        percentile=percentile,
        max_model_len=max_model_len,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        concurrency=concurrency,
        requests_per_day=requests_per_day,
        request_rate=request_rate,
        peak_factor=peak_factor,
        ttft_p95_ms=sla_ttft_p95_ms,
        e2e_p95_ms=sla_e2e_p95_ms,
        tpot_ms=sla_tpot_ms,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        gpu_memory_utilization=gpu_memory_utilization,
        compile_cache=getattr(compile_cache, "value", compile_cache),
        weights_read_gbps=weights_read_gbps,
        calibration=calibration,
        name=name,
        served_model_name=served_model_name,
        driver=driver,
        cuda=getattr(cuda, "value", cuda),
        gpus_per_node=gpus_per_node,
    )
    if compare_all:
        from trdeploy.sizing.compare import compare

        comparison = compare(req)
        emit(comparison.as_json(), as_json=as_json, render=lambda console: _render_comparison(console, comparison))
        return
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

    load = (
        f"Poisson arrivals at {lat['request_rate']:g} requests/s per replica (~{lat['concurrency']} in flight)"
        if lat.get("arrivals") == "poisson"
        else f"{lat['concurrency']} concurrent requests per replica (closed loop)"
    )
    perf = Table(title=f"Predicted at {load}", show_header=True, header_style="bold")
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
        default_sla = " (default SLA)" if pred.details.get("sla_source") == "default" else ""
        perf.add_row(f"SLA{default_sla}", f"{verdict} (holds up to {pred.sla_capacity_per_replica} per replica)")
    if pred.capacity is not None:
        cap = pred.capacity
        perf.add_row("replicas for the traffic (min-max)", f"{cap.replicas_min}-{cap.replicas_max} at {cap.per_replica_concurrency} in flight each")
    if pred.startup is not None:
        perf.add_row("start-up (cold / warm)", f"{pred.startup.cold_s:.0f} / {pred.startup.warm_s:.0f} s")
    console.print(perf)

    if pred.calibration is not None:
        cal = pred.calibration
        console.print(f"[dim]Speed and memory parameters: {cal.basis} ({cal.source}).[/]")
    console.print("[bold]Start it with:[/]")
    console.print(" ".join(p.engine_args.serve_command()), soft_wrap=True, highlight=False)
    console.print(f"[dim]{len(p.assumptions)} assumptions recorded in the profile (see --json or the YAML).[/]")
    if written:
        console.print(f"Wrote {written}")


def _money(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"${x:,.{digits}f}"


def _render_comparison(console: Console, c) -> None:
    sla = ", ".join(f"{k} {v:g}" for k, v in c.sla.items() if v is not None)
    console.print(
        f"[bold]{c.model}[/] ({c.quantization or 'as the checkpoint'}), max_model_len {c.max_model_len}, "
        f"{c.prompt_tokens}+{c.output_tokens} tokens per request, SLA {sla}{' (default)' if c.sla_default else ''}"
    )
    table = Table(title="Every GPU tier (predictions)", show_header=True, header_style="bold")
    for col, justify in (
        ("GPU", "left"), ("n", "right"), ("fits", "left"), ("KV tokens", "right"), ("SLA conc.", "right"),
        ("replicas", "right"), ("$/h", "right"), ("$/M words", "right"), ("measured", "left"), ("why not", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in c.rows:
        measured = "yes" if r.measured else ("memory" if r.memory_measured else ("speed" if r.speed_measured else "[yellow]no[/]"))
        if not r.fits:
            why = (r.why or "").split(": ", 1)[-1].split(" (gpu_memory_utilization")[0].rstrip(".")
            table.add_row(r.tier, str(r.gpus), "[red]no[/]", "-", "-", "-", "-", "-", measured, f"[dim]{why}[/]")
            continue
        table.add_row(
            r.tier, str(r.gpus), "yes", f"{r.kv_cache_tokens:,}",
            str(r.sla_capacity_per_replica) if r.sla_capacity_per_replica else "[red]0[/]",
            str(r.replicas), _money(r.hourly_usd), _money(r.usd_per_million_words), measured,
            "" if r.sla_capacity_per_replica else "[dim]SLA not met at 1 request[/]",
        )
    console.print(table)
    console.print(
        "[dim]SLA conc.: the most requests in flight per replica at which the SLA holds (0: not even one); replicas: for the "
        "traffic; $/h: all replicas; $/M words: one replica at its SLA concurrency; measured: memory and speed measured on "
        "that tier, else datasheet figures.[/]"
    )
    for note in c.notes:
        console.print(f"[dim]- {note}[/]")


def register(app: typer.Typer) -> None:
    app.command("tune", no_args_is_help=True)(tune)
