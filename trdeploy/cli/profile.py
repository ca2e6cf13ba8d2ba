"""`trdeploy profile`: measure what Turkish text costs a tokenizer."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.console import Console
from rich.table import Table

from trdeploy.args import default
from trdeploy.cli._options import ForceOpt, JsonOpt, OutputOpt, choices, opt
from trdeploy.errors import TrdeployError
from trdeploy.output import emit, ensure_writable, progress, refuse_input_as_output, to_json, warn, write_atomic
from trdeploy.text.request import DEFAULT_TOKENIZER, CorpusFormat, ProfileRequest

Format = choices("Format", get_args(CorpusFormat))
R = ProfileRequest

EXAMPLES = """
[bold]Examples[/]

  trdeploy profile                                   [dim]# Llama-3 on the embedded TR-EN corpus, offline[/]
  trdeploy profile -t llama3 -t llama4               [dim]# side by side[/]
  trdeploy profile --parallel flores_tur_Latn_devtest.txt flores_eng_Latn_devtest.txt --json
  trdeploy profile --parallel-tsv eng-tur.tsv        [dim]# Tatoeba layout: eng, tur, English, Turkish[/]
  trdeploy profile --corpus chats.jsonl --field messages -t ./my-model
  trdeploy profile --corpus tickets.csv --field body -t meta-llama/Meta-Llama-3-8B-Instruct
  trdeploy profile --corpus org/turkish-dataset --split train --limit 20000
"""


def profile(
    tokenizer: Annotated[list[str] | None, opt(R, "tokenizer", "--tokenizer", "-t", show_default=False)] = default(R, "tokenizer"),
    corpus: Annotated[str | None, opt(R, "corpus")] = default(R, "corpus"),
    field: Annotated[str | None, opt(R, "field")] = default(R, "field"),
    fmt: Annotated[Format, opt(R, "fmt")] = default(R, "fmt"),
    split: Annotated[str, opt(R, "split")] = default(R, "split"),
    subset: Annotated[str | None, opt(R, "subset")] = default(R, "subset"),
    parallel: Annotated[tuple[Path, Path] | None, opt(R, "parallel", metavar="TR_FILE EN_FILE")] = default(R, "parallel"),
    parallel_tsv: Annotated[Path | None, opt(R, "parallel_tsv")] = default(R, "parallel_tsv"),
    tr_column: Annotated[int | None, opt(R, "tr_column")] = default(R, "tr_column"),
    en_column: Annotated[int | None, opt(R, "en_column")] = default(R, "en_column"),
    limit: Annotated[int | None, opt(R, "limit")] = default(R, "limit"),
    min_count: Annotated[int, opt(R, "min_count")] = default(R, "min_count"),
    top_words: Annotated[int, opt(R, "top_words")] = default(R, "top_words"),
    resamples: Annotated[int, opt(R, "resamples")] = default(R, "resamples"),
    seed: Annotated[int, opt(R, "seed")] = default(R, "seed"),
    as_json: JsonOpt = False,
    output: OutputOpt = None,
    force: ForceOpt = False,
) -> None:
    """Measure what Turkish text costs a tokenizer: tokens per word, the Turkish/English premium, lengths.

    With no options: Meta's Llama-3 tokenizer (from the llama-models package) on the embedded
    Turkish-English parallel corpus, offline. Token counts are the tokenizer's own encode without
    special tokens. --corpus text is taken as Turkish; --parallel and --parallel-tsv also give the
    premium (Turkish tokens over English tokens of the same content) with a bootstrap 95% interval.
    """
    from trdeploy.text.corpora import embedded_corpus, open_corpus, parallel_corpus, parallel_tsv_corpus
    from trdeploy.text.inflation import measure, summarize
    from trdeploy.text.tokenizers import load_tokenizer

    req = ProfileRequest(
        tokenizer=tokenizer,
        corpus=corpus,
        field=field,
        fmt=getattr(fmt, "value", fmt),
        split=split,
        subset=subset,
        parallel=parallel,
        parallel_tsv=parallel_tsv,
        tr_column=tr_column,
        en_column=en_column,
        limit=limit,
        min_count=min_count,
        top_words=top_words,
        resamples=resamples,
        seed=seed,
    )
    chosen = [name for name, value in (("--corpus", req.corpus), ("--parallel", req.parallel), ("--parallel-tsv", req.parallel_tsv)) if value]
    if len(chosen) > 1:
        raise TrdeployError(f"{' and '.join(chosen)} cannot be used together.", hint="Profile one corpus at a time.")
    if (req.tr_column is not None or req.en_column is not None) and req.parallel_tsv is None:
        raise TrdeployError("--tr-column and --en-column apply to --parallel-tsv.", hint="Pass --parallel-tsv FILE.")
    if (req.field or req.fmt != "auto") and req.corpus is None:
        raise TrdeployError("--field and --format apply to --corpus.", hint="Pass --corpus FILE.")
    if output is not None:
        ensure_writable(output, force=force)  # fail before minutes of tokenizing, not after
        inputs = [("--corpus", req.corpus), ("--parallel-tsv", req.parallel_tsv)]
        inputs += [("--parallel", p) for p in req.parallel or ()] + [("--tokenizer", t) for t in req.tokenizer or ()]
        refuse_input_as_output(output, inputs)

    if req.parallel is not None:
        source = parallel_corpus(req.parallel[0], req.parallel[1], limit=req.limit)
    elif req.parallel_tsv is not None:
        source = parallel_tsv_corpus(req.parallel_tsv, tr_column=req.tr_column, en_column=req.en_column, limit=req.limit)
    elif req.corpus is not None:
        source = open_corpus(req.corpus, field=req.field, fmt=req.fmt, split=req.split, subset=req.subset, limit=req.limit)
    else:
        source = embedded_corpus(limit=req.limit)

    specs = list(dict.fromkeys(req.tokenizer or [DEFAULT_TOKENIZER]))
    tokenizers = [load_tokenizer(spec) for spec in specs]

    started = time.perf_counter()
    with progress() as bar:
        unit = source.progress_unit
        task = bar.add_task(f"Tokenizing {source.name} ({unit})", total=source.progress_total)
        measurements = measure(
            source.batches(),
            tokenizers,
            parallel=source.parallel,
            on_batch=lambda batch: bar.advance(task, batch.progress),
            word_frequencies=req.top_words > 0,
        )
    profiles = summarize(measurements, tokenizers, min_count=req.min_count, top_words=req.top_words, resamples=req.resamples, seed=req.seed)
    elapsed = time.perf_counter() - started
    for message in source.warnings:
        warn(message)

    from trdeploy.text.inflation import BOOTSTRAP_MAX_UNITS, WORD_DEFINITION

    report: dict[str, Any] = {
        "corpus": source.describe(),
        "definitions": {
            "word": WORD_DEFINITION,
            "tokens": "the tokenizer's own encode, without special tokens",
            "premium": "Turkish tokens / English tokens of the same content (ratio of sums)",
            "premium_ci95": f"percentile bootstrap over documents, {req.resamples} resamples, seed {req.seed}"
            + (f" (contiguous blocks above {BOOTSTRAP_MAX_UNITS} documents)" if source.documents > BOOTSTRAP_MAX_UNITS else ""),
            "fragmented_words": f"words seen at least {req.min_count} times, most tokens (after a space) first",
        },
        "seconds": round(elapsed, 3),
        "results": [p.to_dict() for p in profiles],
    }
    if output is not None:
        write_atomic(output, to_json(report) + "\n", force=force)
    emit(report, as_json=as_json, render=lambda console: _render(console, report, output))


def _fmt_int(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _fmt_float(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _render(console: Console, report: dict[str, Any], output: Path | None) -> None:
    corpus = report["corpus"]
    results = report["results"]
    parallel = corpus["parallel"]
    what = "pairs" if parallel else "documents"
    console.print(
        f"[bold]Corpus[/] {corpus['name']} ({corpus['kind']}): {corpus['documents']:,} {what}"
        + (f", {corpus['skipped_blank']:,} blank skipped" if corpus["skipped_blank"] else "")
        + f"  [dim]{report['seconds']:.2f} s[/]"
    )
    table = Table(title="Turkish token inflation", title_justify="left", show_lines=False)
    table.add_column("")
    for r in results:
        table.add_column(r["tokenizer"], justify="right")

    def row(label: str, fn) -> None:
        table.add_row(label, *[fn(r) for r in results])

    if parallel:
        row("[bold]premium TR/EN[/]", lambda r: f"[bold]{_fmt_float(r['premium'])}x[/]")
        row("  95% interval", lambda r: "–" if not r["premium_ci95"] else f"{r['premium_ci95'][0]:.3f}–{r['premium_ci95'][1]:.3f}")
    label = "Turkish " if parallel else ""
    row(f"[bold]{label}tokens per word[/]", lambda r: f"[bold]{_fmt_float(r['tokens_per_word'])}[/]")
    row("  per document, p95", lambda r: _fmt_float(r["tokens_per_word_p95"]))
    row(f"{label}characters per token", lambda r: _fmt_float(r["characters_per_token"], 2))
    row(f"{label}tokens", lambda r: _fmt_int(r["turkish_tokens"]))
    row(f"{label}words", lambda r: _fmt_int(r["turkish_words"]))
    row(f"{label}characters", lambda r: _fmt_int(r["turkish_characters"]))
    for key in ("p50", "p90", "p95", "p99", "max"):
        row(f"tokens per document {key}", lambda r, key=key: _fmt_int(r["document_tokens"][key]))
    if parallel:
        row("English tokens", lambda r: _fmt_int(r["english_tokens"]))
        row("English tokens per word", lambda r: _fmt_float(r["english_tokens_per_word"]))
        row("English characters per token", lambda r: _fmt_float(r["english_characters_per_token"], 2))
    console.print(table)

    for r in results:
        words = r["fragmented_words"]
        if not words:
            continue
        frag = Table(title=f"Most fragmented frequent Turkish words: {r['tokenizer']}", title_justify="left")
        frag.add_column("word")
        frag.add_column("count", justify="right")
        frag.add_column("tokens", justify="right")
        frag.add_column("pieces")
        for w in words:
            frag.add_row(w["word"], f"{w['count']:,}", str(w["tokens"]), " | ".join(p.replace(" ", "␣") for p in w["pieces"]))
        console.print(frag)
    if results and not any(r["fragmented_words"] for r in results) and results[0]["turkish_words"]:
        console.print(f"[dim]No word reaches the fragmented-words count ({report['definitions']['fragmented_words']}); lower --min-count.[/]")
    console.print(f"[dim]word: {report['definitions']['word']}.[/]")
    if output is not None:
        console.print(f"Wrote {output}")


def register(app: typer.Typer) -> None:
    app.command("profile", help=inspect.cleandoc(profile.__doc__ or "") + "\n\n" + EXAMPLES)(profile)
