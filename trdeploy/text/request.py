"""`ProfileRequest`: the arguments of `trdeploy profile`, the single source of their defaults, ranges and
allowed values (the CLI's options read them). What depends on several of them (one corpus at a time,
--field/--format only with --corpus, --tr-column/--en-column only with --parallel-tsv) is checked by the
command; None means "not given" or "derived", and the note says what then."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from trdeploy.args import Args, arg

CorpusFormat = Literal["auto", "text", "jsonl", "csv", "tsv", "parquet"]
DEFAULT_TOKENIZER = "llama3"
DEFAULT_MIN_COUNT = 5
DEFAULT_TOP_WORDS = 10
BOOTSTRAP_RESAMPLES = 2000
MIN_RESAMPLES = 100
BOOTSTRAP_SEED = 0


class ProfileRequest(Args):
    command: ClassVar[str] = "profile"

    tokenizer: list[str] | None = arg(
        None,
        help=f"{DEFAULT_TOKENIZER} (default), llama4, a folder with tokenizer.json, a tiktoken BPE file, or a hub model id "
        "(org/name or org/name@revision). Repeat for a side-by-side table.",
    )
    corpus: str | None = arg(None, help="Turkish text: .txt (a document a line), .jsonl, .csv/.tsv, .parquet, or a hub dataset id.")
    field: str | None = arg(
        None, help="Text field/column of a JSONL, CSV, Parquet or hub dataset ('messages' for chats). Default: text, else messages."
    )
    fmt: CorpusFormat = arg("auto", flag="--format", help="Corpus format: auto (by extension), text, jsonl, csv, tsv, parquet.")
    split: str = arg("train", help="Split of a hub dataset.")
    subset: str | None = arg(None, help="Configuration (subset) of a hub dataset.")
    parallel: tuple[Path, Path] | None = arg(None, help="Two line-aligned files, Turkish then English (the FLORES layout).")
    parallel_tsv: Path | None = arg(None, help="A TSV with Turkish and English columns (Tatoeba's layout is detected).")
    tr_column: int | None = arg(None, ge=1, help="1-based Turkish column of --parallel-tsv.")
    en_column: int | None = arg(None, ge=1, help="1-based English column of --parallel-tsv.")
    limit: int | None = arg(None, ge=1, help="Read only the first N documents (pairs).")
    min_count: int = arg(DEFAULT_MIN_COUNT, ge=1, help="Fragmented words: seen at least this often.")
    top_words: int = arg(DEFAULT_TOP_WORDS, ge=0, help="Fragmented words: how many to list (0: none).")
    resamples: int = arg(BOOTSTRAP_RESAMPLES, ge=MIN_RESAMPLES, le=1_000_000, help="Bootstrap resamples for the premium's 95% interval.")
    seed: int = arg(BOOTSTRAP_SEED, ge=0, help="Bootstrap seed.")  # numpy's generators take no negative seed
