"""`trdeploy calibrate`: measure a live vLLM server and fit the latency and memory models to it (thin)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.console import Console
from rich.table import Table

from trdeploy.args import default
from trdeploy.calibrate.request import CalibrateRequest, Prior
from trdeploy.cli._options import ForceOpt, JsonOpt, OutputOpt, choices, opt
from trdeploy.errors import TrdeployError
from trdeploy.output import emit, ensure_writable, err_console, refuse_input_as_output, warn

HELP = """Measure your GPU: run a short planned sweep against a live vLLM server that runs a profile, fit the latency and memory \
models to it, and write a calibration that `trdeploy tune --calibration FILE` predicts with.

The sweep (inside --budget-minutes, default 10) measures the profile's typical request at concurrencies from 1 to the KV/SLA \
limit, a long-prompt and a long-answer shape (so prefill and decode costs separate) and one Poisson rate, with new synthetic \
prompts (never served from the prefix cache). The KV cache vLLM allocated is read from its /metrics (vllm:cache_config_info). \
The calibration holds every measured point, the fitted parameters and each point's error before and after calibration \
(after: leave-one-out, each point predicted by a fit to the others). Progress goes to stderr; Ctrl-C stops the sweep and \
keeps what was measured.

[bold]Examples[/]

  # The server runs the profile's `vllm serve` command (tune prints it); 10 minutes of sweep
  trdeploy calibrate --url http://localhost:8000 --profile trdeploy.yaml -o calibration.yaml

  # A shorter sweep, then tune with it
  trdeploy calibrate --url http://gpu-box:8000 --profile trdeploy.yaml -o calibration.yaml --budget-minutes 5
  trdeploy tune --gpu h100 --calibration calibration.yaml -o trdeploy.yaml

  # Offline, from bench reports made with fixed shapes (--synthetic N --output-tokens O --ignore-eos)
  trdeploy calibrate --from-bench sweep-1024.json sweep-3000.json --profile trdeploy.yaml -o calibration.yaml

  # How well does a calibration predict runs it never saw?
  trdeploy calibrate --check calibration.yaml --from-bench held-out.json --profile trdeploy.yaml --json
"""

R = CalibrateRequest
PriorChoice = choices("PriorChoice", get_args(Prior))


def calibrate(
    profile: Annotated[Path, opt(R, "profile", "--profile", "-p", show_default=False)],
    reports: Annotated[list[Path] | None, typer.Argument(help="With --from-bench: the `trdeploy bench --json` reports.", show_default=False)] = None,
    url: Annotated[str | None, opt(R, "url")] = default(R, "url"),
    from_bench: Annotated[bool, typer.Option("--from-bench", help=R.model_fields["from_bench"].description or "")] = False,
    check: Annotated[Path | None, opt(R, "check")] = default(R, "check"),
    budget_minutes: Annotated[float, opt(R, "budget_minutes")] = default(R, "budget_minutes"),
    max_waves: Annotated[int, opt(R, "max_waves")] = default(R, "max_waves"),
    api_key: Annotated[str | None, opt(R, "api_key", envvar="OPENAI_API_KEY", show_default=False)] = default(R, "api_key"),
    model: Annotated[str | None, opt(R, "model", "--model", "-m")] = default(R, "model"),
    prior: Annotated[PriorChoice, opt(R, "prior")] = default(R, "prior"),
    seed: Annotated[int, opt(R, "seed")] = default(R, "seed"),
    prompt_salt: Annotated[int | None, opt(R, "prompt_salt")] = default(R, "prompt_salt"),
    timeout: Annotated[float, opt(R, "timeout_s")] = default(R, "timeout_s"),
    leave_one_out: Annotated[bool, opt(R, "leave_one_out", "--leave-one-out/--no-leave-one-out")] = default(R, "leave_one_out"),
    name: Annotated[str | None, opt(R, "name")] = default(R, "name"),
    output: OutputOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    from trdeploy.calibrate.job import calibrate as run_calibrate

    bench_files = list(reports or [])
    if bench_files and not from_bench:
        raise TrdeployError(f"{bench_files[0]}: report files go after --from-bench.", hint="E.g. trdeploy calibrate --from-bench run1.json run2.json --profile P")
    if from_bench and not bench_files:
        raise TrdeployError("--from-bench needs the bench reports after it.", hint="E.g. trdeploy calibrate --from-bench run1.json run2.json --profile P")
    if output is not None:
        if check is not None:
            raise TrdeployError("--check reports errors and writes no calibration; -o/--output is for a new one.", hint="Leave -o out, or add --json.")
        ensure_writable(output, force=force)
        refuse_input_as_output(output, [("--profile", profile), ("--check", check), *(("--from-bench", p) for p in bench_files)])
    req = CalibrateRequest(
        url=url, profile=profile, from_bench=bench_files, check=check, budget_minutes=budget_minutes, max_waves=max_waves, api_key=api_key, model=model,
        prior=getattr(prior, "value", prior), seed=seed, prompt_salt=prompt_salt, timeout_s=timeout, leave_one_out=leave_one_out, name=name,
    )  # fmt: skip
    result = run_calibrate(req, say=lambda msg: err_console.print(msg, highlight=False, markup=False, soft_wrap=True))
    for w in result.warnings:
        warn(w)
    if result.check is not None:
        emit(result.check, as_json=as_json, render=lambda c: _render_check(c, result.check))
        return
    cal = result.calibration
    assert cal is not None
    written = str(cal.save(output, force=True)) if output is not None else None
    data = cal.model_dump(mode="json")
    data["written"] = written
    data["interrupted"] = result.interrupted
    emit(data, as_json=as_json, render=lambda c: _render(c, cal, written))
    if result.interrupted:
        sys.exit(130)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _render(console: Console, cal: Any, written: str | None) -> None:
    from trdeploy.calibrate.job import error_table

    points = sum(1 for _ in cal.all_points())
    fitted = sum(1 for _, p in cal.all_points() if p.fit)
    console.print(f"[bold]{cal.name}[/]: {cal.gpu.tier}, vLLM {cal.vllm_version}, {points} points ({fitted} fitted), prior {cal.prior}")
    t = Table(title="Absolute error per metric (after: leave-one-out, each point predicted by a fit to the others)", header_style="bold")
    for col in ("metric", "points", "before median", "before P90", "after median", "after P90"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for row in error_table(cal):
        t.add_row(row["metric"], str(row["points"]), _pct(row["before_median"]), _pct(row["before_p90"]), _pct(row["after_median"]), _pct(row["after_p90"]))
    console.print(t)
    p = Table(title="Fitted parameters", header_style="bold")
    p.add_column("parameter")
    p.add_column("value", justify="right")
    for key in cal.fitted:
        p.add_row(key, f"{cal.latency[key]:.4g}")
    if cal.cuda_total_bytes:
        p.add_row("cuda_total_bytes", f"{cal.cuda_total_bytes:,}")
    console.print(p)
    for run in cal.runs:
        if run.kv is not None:
            console.print(
                f"KV cache: vLLM {run.kv.measured_tokens:,} tokens; predicted {run.kv.predicted_before:,} before ({_pct(run.kv.error_before())}), "
                f"{run.kv.predicted_after:,} after ({_pct(run.kv.error_after())}{', fitted' if run.kv.after_is_fitted else ''})"
            )
    if written:
        console.print(f"Wrote {written}; use it with `trdeploy tune --gpu {cal.gpu.tier} --calibration {written}`.")


def _render_check(console: Console, check: dict[str, Any]) -> None:
    t = Table(title=f"{check['calibration']} on runs it did not see (predicted / measured - 1)", header_style="bold")
    metrics = ("ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "e2e_p95_ms", "output_throughput")
    for col in ("point", *metrics):
        t.add_column(col, justify="left" if col == "point" else "right")
    for row in check["points"]:
        t.add_row(f"{row['load']} {row['prompt_tokens']}/{row['output_tokens']}", *(_signed(row["error"].get(m)) for m in metrics))
    console.print(t)
    s = check["summary"]
    console.print("median |error|: " + ", ".join(f"{m} {_pct(v['median_abs'])} (P90 {_pct(v['p90_abs'])}, {v['points']} points)" for m, v in s.items()))
    if check.get("kv_cache_tokens"):
        kv = check["kv_cache_tokens"]
        console.print(f"KV cache: vLLM {kv['measured_tokens']:,} tokens, predicted {kv['predicted_tokens']:,} ({_pct(kv['error'])})")


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}%"


def register(app: typer.Typer) -> None:
    app.command("calibrate", help=HELP, no_args_is_help=True)(calibrate)


__all__ = ["calibrate", "register"]
