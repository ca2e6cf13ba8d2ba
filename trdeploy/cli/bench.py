"""`trdeploy bench`: parse options, call trdeploy.bench (plan, run, plot), print (thin)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from trdeploy.args import default
from trdeploy.bench.request import Api, BenchRequest, HttpClient
from trdeploy.cli._options import ForceOpt, JsonOpt, OutputOpt, choices, opt
from trdeploy.errors import TrdeployError
from trdeploy.output import emit, ensure_writable, progress, refuse_input_as_output, to_json, warn, write_atomic

HELP = """Measure a live OpenAI-compatible endpoint (vLLM first) against the SLA.

Streams chat completions (or completions) at a fixed concurrency (closed loop), at a Poisson request rate, or over a sweep of either, and reports \
TTFT, TPOT, ITL and end-to-end latency (mean, p50, p95, p99) exactly as `vllm bench serve` defines them, request/token throughput, Turkish words per \
second, error counts by kind, goodput, and what the server's Prometheus /metrics counted meanwhile.

The verdict checks p95 TTFT, p95 E2E and median TPOT against the SLA (from --profile or --sla-* flags) and the error rate against --max-error-rate. \
Exit code: 0 pass, 1 SLA failed, 2 bad input, 130 interrupted (Ctrl-C prints the partial report).

[bold]Examples[/]

  # SLA gate for the tuned deployment (SLA, served model name and workload from the profile)
  trdeploy bench --url http://localhost:8000 --profile trdeploy.yaml -o bench.json

  # Chat at concurrency 16 on the embedded Turkish conversations, 300 tokens max, with targets
  trdeploy bench -c 16 -n 200 --output-tokens 300 --sla-ttft-p95-ms 800 --sla-tpot-ms 40

  # Poisson arrivals at 4 req/s for two minutes
  trdeploy bench --request-rate 4 --duration 120

  # What `vllm bench serve --dataset-name random --random-input-len 512 --random-output-len 300
  #   --ignore-eos --max-concurrency 100 --num-prompts 300` measures
  trdeploy bench --api completions --synthetic 512 --output-tokens 300 --ignore-eos -c 100 -n 300 --json

  # Sweep concurrency, plot the distributions
  trdeploy bench --sweep concurrency=1,4,16,64 -n 100 --plot bench.png

  # Every request's send time, TTFT and latency as CSV rows (next to the report)
  trdeploy bench -c 32 -n 96 -o bench.json --requests requests.csv

  # Your own prompts: one per line (.txt) or JSONL with "prompt" / "messages"
  trdeploy bench --prompts prompts.jsonl --api chat

  # The same prompts as an earlier run (its report's prompts.salt); otherwise every run's prompts are new
  trdeploy bench --synthetic 512 --api completions --prompt-salt 1234567
"""


R = BenchRequest
ApiChoice = choices("ApiChoice", get_args(Api))
HttpClientChoice = choices("HttpClientChoice", get_args(HttpClient))


def bench(
    url: Annotated[str, opt(R, "url")] = default(R, "url"),
    api: Annotated[ApiChoice, opt(R, "api")] = default(R, "api"),
    model: Annotated[str | None, opt(R, "model", "--model", "-m")] = default(R, "model"),
    api_key: Annotated[str | None, opt(R, "api_key", envvar="OPENAI_API_KEY", show_default=False)] = default(R, "api_key"),
    profile: Annotated[Path | None, opt(R, "profile", "--profile", "-p")] = default(R, "profile"),
    concurrency: Annotated[int | None, opt(R, "concurrency", "--concurrency", "-c")] = default(R, "concurrency"),
    request_rate: Annotated[float | None, opt(R, "request_rate", "--request-rate", "-r")] = default(R, "request_rate"),
    burstiness: Annotated[float, opt(R, "burstiness")] = default(R, "burstiness"),
    sweep: Annotated[str | None, opt(R, "sweep")] = default(R, "sweep"),
    num_prompts: Annotated[int | None, opt(R, "num_prompts", "--num-prompts", "-n")] = default(R, "num_prompts"),
    duration: Annotated[float | None, opt(R, "duration_s")] = default(R, "duration_s"),
    prompts: Annotated[str, opt(R, "prompts")] = default(R, "prompts"),
    dataset: Annotated[str | None, opt(R, "dataset")] = default(R, "dataset"),
    dataset_split: Annotated[str, opt(R, "dataset_split")] = default(R, "dataset_split"),
    dataset_field: Annotated[str | None, opt(R, "dataset_field")] = default(R, "dataset_field"),
    synthetic: Annotated[int | None, opt(R, "synthetic")] = default(R, "synthetic"),
    synthetic_vocab_size: Annotated[int, opt(R, "synthetic_vocab_size")] = default(R, "synthetic_vocab_size"),
    output_tokens: Annotated[int | None, opt(R, "output_tokens")] = default(R, "output_tokens"),
    ignore_eos: Annotated[bool, opt(R, "ignore_eos")] = default(R, "ignore_eos"),
    min_tokens: Annotated[int | None, opt(R, "min_tokens")] = default(R, "min_tokens"),
    temperature: Annotated[float | None, opt(R, "temperature")] = default(R, "temperature"),
    extra_body: Annotated[str | None, opt(R, "extra_body")] = default(R, "extra_body"),
    timeout: Annotated[float, opt(R, "timeout_s")] = default(R, "timeout_s"),
    sla_ttft_p95_ms: Annotated[float | None, opt(R, "sla_ttft_p95_ms")] = default(R, "sla_ttft_p95_ms"),
    sla_e2e_p95_ms: Annotated[float | None, opt(R, "sla_e2e_p95_ms")] = default(R, "sla_e2e_p95_ms"),
    sla_tpot_ms: Annotated[float | None, opt(R, "sla_tpot_ms")] = default(R, "sla_tpot_ms"),
    max_error_rate: Annotated[float, opt(R, "max_error_rate")] = default(R, "max_error_rate"),
    percentiles: Annotated[str, opt(R, "percentiles")] = default(R, "percentiles"),
    warmup: Annotated[int, opt(R, "warmup")] = default(R, "warmup"),
    server_metrics: Annotated[bool, opt(R, "server_metrics", "--server-metrics/--no-server-metrics")] = default(R, "server_metrics"),
    gauge_interval: Annotated[float, opt(R, "gauge_interval_s")] = default(R, "gauge_interval_s"),
    http_client: Annotated[HttpClientChoice, opt(R, "http_client")] = default(R, "http_client"),
    seed: Annotated[int, opt(R, "seed")] = default(R, "seed"),
    prompt_salt: Annotated[int | None, opt(R, "prompt_salt")] = default(R, "prompt_salt"),
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG of the TTFT/TPOT/ITL/E2E distributions (needs matplotlib).")] = None,
    requests_out: Annotated[
        Path | None, typer.Option("--requests", help="Write every request as a CSV row: run, send time, TTFT, end-to-end latency, tokens, status.")
    ] = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    from trdeploy.bench.plan import plan_bench
    from trdeploy.bench.plot import plot_png
    from trdeploy.bench.run import load_label, requests_csv, run_bench

    for path in (output, plot, requests_out):
        if path is not None:
            ensure_writable(path, force=force)
    inputs = {"--prompts": prompts if Path(prompts).is_file() else None, "--profile": profile, "--dataset": dataset}
    refuse_input_as_output(output, {**inputs, "--plot": plot, "--requests": requests_out})
    refuse_input_as_output(plot, {**inputs, "--requests": requests_out})
    refuse_input_as_output(requests_out, inputs)
    if plot is not None and plot.suffix.lower() != ".png":
        raise TrdeployError(f"--plot {plot} should end in .png.", hint="E.g. --plot bench.png.")
    if plot is not None and importlib.util.find_spec("matplotlib") is None:  # fail before the run, not after
        raise TrdeployError("--plot needs matplotlib.", hint="pip install 'trdeploy[bench]'.")
    request = BenchRequest(
        url=url, api=getattr(api, "value", api), model=model, api_key=api_key, profile=profile, concurrency=concurrency,
        request_rate=request_rate, burstiness=burstiness, sweep=sweep, num_prompts=num_prompts,
        duration_s=duration, prompts=prompts, dataset=dataset, dataset_split=dataset_split,
        dataset_field=dataset_field, synthetic=synthetic, synthetic_vocab_size=synthetic_vocab_size,
        output_tokens=output_tokens, ignore_eos=ignore_eos, min_tokens=min_tokens, temperature=temperature,
        extra_body=extra_body, timeout_s=timeout, sla_ttft_p95_ms=sla_ttft_p95_ms, sla_e2e_p95_ms=sla_e2e_p95_ms,
        sla_tpot_ms=sla_tpot_ms, max_error_rate=max_error_rate, percentiles=percentiles, warmup=warmup,
        server_metrics=server_metrics, gauge_interval_s=gauge_interval, seed=seed, http_client=getattr(http_client, "value", http_client),
        prompt_salt=prompt_salt,
    )
    plan = plan_bench(request)

    with progress(transient=True) as bar:
        state: dict[str, Any] = {}

        def on_start(i: int, spec: Any) -> None:
            if "task" in state:
                bar.remove_task(state["task"])
            state["task"] = bar.add_task(f"[{i + 1}/{len(plan.loads)}] {load_label(spec)}", total=spec.num_requests)

        def on_done(_result: Any) -> None:
            if "task" in state:
                bar.advance(state["task"])

        result = run_bench(plan, on_start=on_start, on_done=on_done)
    report = result.report

    if report["interrupted"]:
        warn("interrupted: the report covers the requests finished before Ctrl-C.")
    for run in report["runs"]:
        pc = run["server_metrics"].get("prefix_cache") or {}
        if pc.get("flagged"):
            warn(
                f"{run['label']}: {pc['hit_rate']:.0%} of the prompt tokens came from vLLM's prefix cache: its TTFT is what "
                "prompts seen before get (a shared system prompt, or prompts sent again with --prompt-salt)."
            )
    if output is not None:
        write_atomic(output, to_json(report) + "\n", force=True)
    if requests_out is not None:
        write_atomic(requests_out, requests_csv(result.requests), force=True)
    if plot is not None:
        ep = report["endpoint"]
        write_atomic(plot, plot_png(result.samples, f"trdeploy bench: {ep['model']} at {ep['url']} ({ep['api']})"), force=True)
    emit(report, as_json=as_json, render=lambda c: render(c, report, output, plot))
    code = result.exit_code
    if code:
        # SystemExit, not typer.Exit: the app runs with standalone_mode=False, where click returns an
        # Exit's code instead of exiting with it.
        sys.exit(code)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def render(console: Console, report: dict[str, Any], output: Path | None, plot: Path | None) -> None:
    ep = report["endpoint"]
    console.print(f"[bold]trdeploy bench[/]: {ep['model']} at {ep['url']} ({ep['api']}), prompts: {report['prompts']['description']}")
    load = report["load"]
    console.print(f"Load: {', '.join(load['levels'])} ({load['source']})", highlight=False)
    pcts = list(report["percentiles"])
    runs = report["runs"]
    for run in runs:
        _render_run(console, run, pcts, len(runs) > 1)
    if len(runs) > 1:
        _render_sweep(console, report)
    v = report["verdict"]
    sla = report["sla"]
    if report["interrupted"]:
        console.print("[yellow]Interrupted[/]: partial results.")
    verdict = "[bold green]PASS[/]" if v["passed"] else "[bold red]FAIL[/]"
    targets = ", ".join(f"{k}={sla[k]:g}" for k in ("ttft_p95_ms", "e2e_p95_ms", "tpot_ms", "max_error_rate") if sla.get(k) is not None)
    console.print(f"SLA ({sla['source']}; {targets or 'no targets'}): {verdict}")
    if report["sweep"] and v.get("max_passing") is not None:
        console.print(f"Highest passing {report['sweep']['parameter']}: {v['max_passing']:g}")
    for path, what in ((output, "report"), (plot, "plot")):
        if path is not None:
            console.print(f"Wrote {what} to {path}")


def _render_run(console: Console, run: dict[str, Any], pcts: list[float], title_load: bool) -> None:
    from trdeploy.bench.metrics import percentile_key

    table = Table(title=f"Latency, {run['label']}" if title_load else "Latency", title_justify="left")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    for p in pcts:
        table.add_column(f"p{percentile_key(p)}", justify="right")
    for key, name in (("ttft", "TTFT (ms)"), ("tpot", "TPOT (ms)"), ("itl", "ITL (ms)"), ("e2el", "E2E (ms)")):
        table.add_row(name, _ms(run[f"mean_{key}_ms"]), *(_ms(run[f"p{percentile_key(p)}_{key}_ms"]) for p in pcts))
    console.print(table)

    t = Table(show_header=False, title="Throughput and errors", title_justify="left")
    t.add_column("what")
    t.add_column("value", justify="right")
    errors = ", ".join(f"{k}: {n}" for k, n in run["errors"].items()) or "none"
    rows = [
        ("Requests completed / failed", f"{run['completed']} / {run['failed']}" + (f" (+{run['cancelled']} cancelled)" if run["cancelled"] else "")),
        ("Errors by kind", errors),
        ("Duration (s)", _num(run["duration"])),
        ("Request throughput (req/s)", _num(run["request_throughput"])),
        ("Goodput (req/s)", _num(run["request_goodput"])),
        ("Output tokens (from usage)", f"{run['total_output_tokens']:,} ({run['output_tokens_from_usage']} of {run['completed']} requests)"),
        ("Output token throughput (tok/s)", _num(run["output_throughput"])),
        ("Total token throughput (tok/s)", _num(run["total_token_throughput"])),
        ("Turkish words / s (output)", _num(run["output_words_per_s"])),
        ("Output tokens per word", _num(run["tokens_per_word"])),
        ("Peak concurrent requests", str(run["max_concurrent_requests"])),
    ]
    for kind, samples in run.get("error_samples", {}).items():
        if samples:
            rows.append((f"  e.g. {kind}", samples[0][:110]))
    for row in rows:
        t.add_row(*row)
    sm = run["server_metrics"]
    if sm.get("available"):
        c = sm["counters"]
        rows = [
            ("Server: generated tokens (client)", f"{_num(c.get('generation_tokens'), 0)} ({sm['client']['generation_tokens']:,})"),
            ("Server: prompt tokens (client)", f"{_num(c.get('prompt_tokens'), 0)} ({sm['client']['prompt_tokens']:,})"),
            ("Server: successful requests (client)", f"{_num(c.get('request_success'), 0)} ({sm['client']['completed']})"),
            ("Server: mean TTFT / E2E / queue (ms)", " / ".join(_ms(sm["mean_ms"].get(k)) for k in ("ttft", "e2el", "queue"))),
        ]
        pc = sm.get("prefix_cache") or {}
        if pc.get("hit_rate") is not None:
            flag = " [yellow](flagged)[/]" if pc["flagged"] else ""
            rows.append(("Server: prefix cache hits / prompt tokens looked up", f"{pc['hit_rate']:.1%} of {pc['queries']:,.0f}{flag}"))
        if sm["peak"]:
            rows.append(("Server: peak running / waiting / KV use", " / ".join(_num(sm["peak"].get(k)) for k in ("running", "waiting", "kv_cache_usage"))))
        for row in rows:
            t.add_row(*row)
    else:
        t.add_row("Server metrics", f"skipped: {sm.get('reason')}")
    console.print(t)

    checks = Table(title="SLA checks", title_justify="left")
    for col in ("target", "statistic", "measured", "limit", ""):
        checks.add_column(col, justify="right" if col in ("measured", "limit") else "left")
    for chk in run["verdict"]["checks"]:
        measured = chk["measured"]
        mtxt = "-" if measured is None else (f"{measured:.4f}" if chk["name"] == "max_error_rate" else f"{measured:,.1f}" if isinstance(measured, float) else str(measured))
        limit = f">= {chk['target']}" if chk["name"] == "completed" else f"<= {chk['target']:g}"
        checks.add_row(chk["name"], chk["metric"], mtxt, limit, "[green]ok[/]" if chk["passed"] else "[red]FAIL[/]")
    console.print(checks)


def _short_label(load: dict[str, Any]) -> str:
    if load["closed_loop"]:
        return f"c={load['concurrency']}"
    label = f"{load['request_rate']:g}/s"
    return label + (f" c<={load['concurrency']}" if load["concurrency"] else "")


def _compact(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if abs(value) < 100 else f"{value:,.0f}"


def _render_sweep(console: Console, report: dict[str, Any]) -> None:
    t = Table(title=f"Sweep over {report['sweep']['parameter']}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    heads = ("load", "req/s", "out\ntok/s", "words\n/s", "TTFT\np50 ms", "TTFT\np95 ms", "TPOT\np50 ms", "E2E\np95 ms", "good-\nput", "SLA")
    for col in heads:
        t.add_column(col, justify="left" if col in ("load", "SLA") else "right", no_wrap=True, min_width=4 if col == "SLA" else None)
    for run in report["runs"]:
        verdict = "[green]pass[/]" if run["verdict"]["passed"] else "[red]fail[/]"
        if run["failed"]:
            verdict += f" ({run['failed']} err)"
        t.add_row(
            _short_label(run["load"]),
            _compact(run["request_throughput"]),
            _compact(run["output_throughput"]),
            _compact(run["output_words_per_s"]),
            _compact(run["median_ttft_ms"]),
            _compact(run["p95_ttft_ms"]),
            _compact(run["median_tpot_ms"]),
            _compact(run["p95_e2el_ms"]),
            _compact(run["request_goodput"]),
            verdict,
        )
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("bench", help=HELP, no_args_is_help=False)(bench)


__all__ = ["bench", "register", "render"]
