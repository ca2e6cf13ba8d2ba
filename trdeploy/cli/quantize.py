"""`trdeploy quantize`: AWQ 4-bit with Turkish calibration, verified, with a quality report."""

from __future__ import annotations

import os
import signal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.console import Console
from rich.table import Table

from trdeploy.args import default, describe
from trdeploy.cli._options import ForceOpt, JsonOpt, OutputOpt, choices, opt
from trdeploy.errors import TrdeployError
from trdeploy.output import emit, err_console, progress, refuse_input_as_output, warn
from trdeploy.quant.checks import (
    REPORT_NAME,
    human_bytes,
)
from trdeploy.quant.model_io import Format, Reporter
from trdeploy.quant.quantization import QuantizeRequest


class Compare(StrEnum):
    rtn = "rtn"


OutputFormat = choices("OutputFormat", get_args(Format))


class _RichReporter(Reporter):
    """One progress bar per step on stderr; one plain line per step when stderr is not a terminal."""

    def __init__(self, *, quiet: bool) -> None:
        self._quiet = quiet
        # Set by the SIGTERM handler. Its KeyboardInterrupt can land where Python drops it (a
        # __del__ or weakref callback running at that moment); every later step raises it again,
        # so a terminated run never reaches the point where its output is moved into place.
        self.terminated = False
        self._progress = progress(transient=False, disable=quiet)
        self._progress.start()
        self._task: Any = None

    def _finish_current(self) -> None:
        if self._task is not None:
            total = self._progress.tasks[self._task].total or 1
            self._progress.update(self._task, total=total, completed=total)

    def stage(self, description: str, total: int | None = None) -> None:
        if self.terminated:
            raise KeyboardInterrupt
        self._finish_current()
        self._task = self._progress.add_task(description, total=total)
        if not self._quiet and not err_console.is_terminal:
            err_console.print(f"... {description}", highlight=False)

    def update(self, completed: int) -> None:
        if self.terminated:
            raise KeyboardInterrupt
        if self._task is not None:
            self._progress.update(self._task, completed=completed)

    def close(self) -> None:
        self._progress.stop()


R = QuantizeRequest


def quantize(
    model: Annotated[str, typer.Argument(help=describe(R, "model"), show_default=False)],
    output: OutputOpt = None,
    dataset: Annotated[str | None, opt(R, "dataset")] = default(R, "dataset"),
    dataset_split: Annotated[str, opt(R, "dataset_split")] = default(R, "dataset_split"),
    dataset_config: Annotated[str | None, opt(R, "dataset_config")] = default(R, "dataset_config"),
    text_column: Annotated[str | None, opt(R, "text_column")] = default(R, "text_column"),
    num_samples: Annotated[int, opt(R, "num_samples")] = default(R, "num_samples"),
    max_seq_len: Annotated[int, opt(R, "max_seq_len")] = default(R, "max_seq_len"),
    compare: Annotated[Compare | None, opt(R, "compare_rtn")] = None,
    output_format: Annotated[OutputFormat, opt(R, "output_format")] = default(R, "output_format"),
    eval_tokens: Annotated[int, opt(R, "eval_tokens")] = default(R, "eval_tokens"),
    eval_seq_len: Annotated[int, opt(R, "eval_seq_len")] = default(R, "eval_seq_len"),
    max_ppl_increase: Annotated[float, opt(R, "max_ppl_increase_pct")] = default(R, "max_ppl_increase_pct"),
    seed: Annotated[int, opt(R, "seed")] = default(R, "seed"),
    verbose: Annotated[bool, opt(R, "verbose", "--verbose", "-v")] = default(R, "verbose"),
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """AWQ 4-bit (W4A16, group 128, asymmetric; lm_head stays 16-bit) with Turkish calibration.

    Writes a compressed-tensors checkpoint that vLLM loads without flags, with the tokenizer and
    chat template, quantization_report.json (perplexity before/after on held-out Turkish text,
    time, peak memory, sizes) and a model card. The output appears only after it reloads and
    every tensor matches the quantized model; perplexity after AWQ is that of the reloaded output.

    Runs on a GPU for real models (layer-by-layer, an 8B fits a 24 GiB card) and on the CPU for
    small ones. Needs: pip install 'trdeploy\\[quantize]'.

    [bold]Examples[/]

      trdeploy quantize meta-llama/Meta-Llama-3-8B-Instruct -o llama3-8b-tr-awq

      trdeploy quantize ./my-llama -o ./my-llama-awq --compare rtn --json

      trdeploy quantize ./my-llama -o out --dataset chats.jsonl --num-samples 256 --max-seq-len 1024

      trdeploy quantize ./my-llama -o out --dataset my-org/turkish-chats --dataset-split train --force
    """
    if output is None:
        raise TrdeployError("Missing the output folder.", hint="Pass -o OUT, e.g. `trdeploy quantize MODEL -o MODEL-awq`.")
    # With --force, -o MODEL would replace the checkpoint it is made from.
    refuse_input_as_output(output, {"MODEL": model if Path(model).expanduser().exists() else None, "--dataset": dataset})
    from trdeploy.quant.quantization import quantize as run

    request = QuantizeRequest(
        model=model,
        output=output,
        dataset=dataset,
        dataset_split=dataset_split,
        dataset_config=dataset_config,
        text_column=text_column,
        num_samples=num_samples,
        max_seq_len=max_seq_len,
        compare_rtn=compare == Compare.rtn,
        output_format=getattr(output_format, "value", output_format),
        eval_tokens=eval_tokens,
        eval_seq_len=eval_seq_len,
        max_ppl_increase_pct=max_ppl_increase,
        seed=seed,
        force=force,
        verbose=verbose,
    )
    # The libraries' own tqdm bars and progress lines are replaced by ours unless --verbose.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    reporter = _RichReporter(quiet=as_json and not err_console.is_terminal)

    def terminate(signum: int, frame: Any) -> None:
        reporter.terminated = True
        raise KeyboardInterrupt

    # SIGTERM (kill, a Kubernetes job ending) unwinds like Ctrl-C, so the temporary folder is removed.
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        report = run(request, reporter)
    except KeyboardInterrupt:
        err_console.print(f"Interrupted: nothing was written to {output}.", highlight=False, soft_wrap=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    for message in report["warnings"]:
        warn(message)
    emit(report, as_json=as_json, render=lambda console: _render(console, report))


def _render(console: Console, report: dict[str, Any]) -> None:
    ppl, delta = report["perplexity"], report["perplexity_delta_pct"]
    table = Table(title=f"Turkish perplexity ({report['evaluation']['tokens']} held-out tokens)", title_justify="left")
    table.add_column("model")
    table.add_column("perplexity", justify="right")
    table.add_column("change", justify="right")
    table.add_row("original", f"{ppl['original']:.3f}", "")
    table.add_row(f"AWQ W4A16 g{report['group_size']}", f"{ppl['awq']:.3f}", f"{delta['awq']:+.2f}%")
    if ppl.get("rtn") is not None:
        table.add_row(f"round-to-nearest W4A16 g{report['group_size']}", f"{ppl['rtn']:.3f}", f"{delta['rtn']:+.2f}%")
    console.print(table)
    cal, size, mem = report["calibration"], report["size_bytes"], report["peak_memory"]
    gpu = human_bytes(mem["gpu_bytes"]) if mem["gpu_bytes"] is not None else "n/a (CPU)"
    console.print(
        f"Calibration: {cal['num_samples']} {cal['kind']} samples from {cal['source']}, {cal['tokens']} tokens (max {cal['max_seq_len']} each).\n"
        f"Size: {human_bytes(size['original'])} -> {human_bytes(size['quantized'])} ({report['compression_ratio']}x).  "
        f"Time: {report['time_s']['total']:.0f} s on {report['device']}.  Peak GPU memory: {gpu}.\n"
        f"Wrote {report['output']} ({report['format']}; report: {Path(report['output']) / REPORT_NAME}).\n"
        f"Serve: [bold]{report['vllm']['serve']}[/]",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
