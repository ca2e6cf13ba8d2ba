"""Calibration and evaluation text for `quantize`: where it comes from and how it becomes tokens.

Calibration (what AWQ looks at to pick its scales):
- the embedded default: Turkish chat conversations written for this project
  (`trdeploy.text.embedded.calibration_conversations()`), rendered through the model's chat template;
- `--dataset`: a local JSONL / JSON / Parquet file (or a folder of them), or a Hugging Face hub
  dataset, with either a text column or OpenAI-style `messages`.

Evaluation (held out, never calibrated on): the Turkish side of the embedded parallel corpus
(`trdeploy.text.embedded.embedded_pairs()`), joined and cut into fixed-length windows.

Records are plain dicts. Loading is I/O; selecting and rendering are deterministic functions of
(records, tokenizer, options), so the same inputs always calibrate on the same tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trdeploy.errors import TrdeployError
from trdeploy.hub import looks_like_path

Kind = Literal["chat", "text"]

EMBEDDED = "embedded"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
# A calibration sample shorter than this says little about activations; such rows are skipped.
MIN_SAMPLE_TOKENS = 16


@dataclass(frozen=True)
class CalibrationRecords:
    """Rows read from a calibration source, all of one kind."""

    source: str
    kind: Kind
    rows: list[Any]  # chat: list of messages lists; text: list of str


@dataclass(frozen=True)
class CalibrationSet:
    """Token ids ready for llm-compressor, and what they were made from."""

    source: str
    kind: Kind
    samples: list[list[int]]
    requested: int
    available: int
    max_seq_len: int
    skipped_short: int = 0
    truncated: int = 0

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.samples)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "num_samples": len(self.samples),
            "requested_samples": self.requested,
            "available_rows": self.available,
            "max_seq_len": self.max_seq_len,
            "tokens": self.tokens,
            "mean_tokens": round(self.tokens / len(self.samples), 1) if self.samples else 0.0,
            "truncated_samples": self.truncated,
            "skipped_short_rows": self.skipped_short,
        }


@dataclass(frozen=True)
class EvaluationSet:
    """Held-out Turkish text cut into windows for perplexity."""

    source: str
    texts: int
    windows: list[list[int]] = field(default_factory=list)
    seq_len: int = 512

    @property
    def tokens(self) -> int:
        return sum(len(w) for w in self.windows)

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "texts": self.texts, "windows": len(self.windows), "seq_len": self.seq_len, "tokens": self.tokens}


# --------------------------------------------------------------------------------------------
# Loading (I/O)
# --------------------------------------------------------------------------------------------


def load_calibration_records(
    dataset: str | None = None,
    *,
    split: str = "train",
    config_name: str | None = None,
    text_column: str | None = None,
) -> CalibrationRecords:
    """Read calibration rows from the embedded default, a local file/folder, or a hub dataset."""
    if dataset is None or dataset == EMBEDDED:
        from trdeploy.text.embedded import calibration_conversations

        convs = calibration_conversations()
        rows = [c["messages"] for c in convs]
        if not rows:
            raise TrdeployError(
                "The embedded calibration set is empty (trdeploy/data/calibration/*.jsonl).",
                hint="Reinstall trdeploy, or pass --dataset FILE.",
            )
        return CalibrationRecords(EMBEDDED, "chat", [validate_messages(m, where=f"embedded row {i + 1}") for i, m in enumerate(rows)])

    path = Path(dataset).expanduser()
    if path.exists():
        table = _read_local(path)
        return records_from_table(table, source=str(path), text_column=text_column)
    if looks_like_path(dataset, LOCAL_SUFFIXES):
        raise TrdeployError(
            f"Calibration dataset {dataset} does not exist.",
            hint="Pass an existing .jsonl/.json/.parquet file or folder, or a hub dataset id like `org/name`.",
        )
    table = _read_hub(dataset, split=split, config_name=config_name)
    return records_from_table(table, source=f"hub:{dataset}" + (f"/{config_name}" if config_name else "") + f"[{split}]", text_column=text_column)


def _read_local(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_SUFFIXES and p.is_file())
        if not files:
            raise TrdeployError(f"The folder {path} has no .jsonl, .json or .parquet files.", hint="Point --dataset at a data file or a folder of them.")
        rows: list[dict[str, Any]] = []
        for f in files:
            rows.extend(_read_local(f))
        return rows
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise TrdeployError("Reading Parquet needs pyarrow.", hint="pip install 'trdeploy[data]'") from exc
        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise TrdeployError(f"Cannot read {path} as Parquet ({exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}).", hint="Check the file, or convert it to JSONL.") from exc
    if suffix in (".jsonl", ".json"):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TrdeployError(f"Cannot read {path} as UTF-8 text ({exc.__class__.__name__}).", hint="Check the file.") from exc
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                data = json.loads(text)
            except RecursionError:
                raise TrdeployError(f"{path} is nested too deeply to read.", hint="Fix the file or use JSONL, one object a line.") from None
            except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
                raise TrdeployError(f"{path} is not valid JSON ({str(exc)[:100]}).", hint="Fix the file or use JSONL, one object a line.") from None
            if not all(isinstance(r, dict) for r in data):
                raise TrdeployError(f"{path} must hold a list of objects.", hint="Each row: {\"text\": ...} or {\"messages\": [...]}.")
            return data
        rows = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except RecursionError:
                raise TrdeployError(f"{path}:{line_no} is nested too deeply to read.", hint="Fix that line; JSONL holds one JSON object a line.") from None
            except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
                raise TrdeployError(f"{path}:{line_no} is not valid JSON ({str(exc)[:100]}).", hint="Fix that line; JSONL holds one JSON object a line.") from None
            if not isinstance(row, dict):
                raise TrdeployError(f"{path}:{line_no} is not a JSON object.", hint="Each row: {\"text\": ...} or {\"messages\": [...]}.")
            rows.append(row)
        return rows
    raise TrdeployError(f"Unsupported calibration file type {path.suffix or '(none)'} for {path}.", hint="Use .jsonl, .json or .parquet.")


def _read_hub(name: str, *, split: str, config_name: str | None) -> list[dict[str, Any]]:
    from trdeploy.text.corpora import load_hub_dataset

    return [dict(r) for r in load_hub_dataset(name, config_name, split, streaming=False)]


def records_from_table(table: list[dict[str, Any]], *, source: str, text_column: str | None = None) -> CalibrationRecords:
    """Pick the chat or text column of a table of rows (pure)."""
    if not table:
        raise TrdeployError(f"The calibration dataset {source} has no rows.", hint="Pass a dataset with at least one row.")
    columns = sorted({k for row in table[:100] for k in row})
    if text_column is not None:
        if text_column not in columns:
            raise TrdeployError(f"Column {text_column!r} is not in {source} (columns: {', '.join(columns)}).", hint="Pick one of those with --text-column.")
        column = text_column
    elif "messages" in columns:
        column = "messages"
    elif "text" in columns:
        column = "text"
    else:
        raise TrdeployError(
            f"{source} has neither a `messages` nor a `text` column (columns: {', '.join(columns) or 'none'}).",
            hint="Name the text column with --text-column.",
        )
    values = [row.get(column) for row in table]
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, list):
        rows = [validate_messages(v, where=f"{source} row {i + 1}") for i, v in enumerate(values) if v]
        return CalibrationRecords(source, "chat", rows)
    rows_text = []
    for i, v in enumerate(values):
        if v is None:
            continue
        if not isinstance(v, str):
            raise TrdeployError(f"{source} row {i + 1}: column {column!r} holds {type(v).__name__}, not text.", hint="Pick a text column with --text-column.")
        if v.strip():
            rows_text.append(v)
    if not rows_text:
        raise TrdeployError(f"Column {column!r} of {source} holds no text.", hint="Pick a non-empty column with --text-column.")
    return CalibrationRecords(source, "text", rows_text)


def validate_messages(messages: Any, *, where: str) -> list[dict[str, str]]:
    """OpenAI-style chat messages: a list of {"role": str, "content": str}."""
    if not isinstance(messages, list) or not messages:
        raise TrdeployError(f"{where}: `messages` must be a non-empty list.", hint='Each row: {"messages": [{"role": "user", "content": "..."}, ...]}.')
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TrdeployError(f"{where}: every message needs a string `role` and `content`.", hint='Each message: {"role": "user", "content": "..."}.')
        out.append({"role": m["role"], "content": m["content"]})
    return out


# --------------------------------------------------------------------------------------------
# Rendering (deterministic)
# --------------------------------------------------------------------------------------------


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_calibration(
    records: CalibrationRecords,
    tokenizer: Any,
    *,
    num_samples: int,
    max_seq_len: int,
    seed: int = 0,
) -> CalibrationSet:
    """Turn rows into up to `num_samples` token-id lists of at most `max_seq_len` tokens.

    Rows are taken in a seeded shuffle (the embedded files are grouped by domain, so the first
    N rows would all be one domain). Chat rows go through the tokenizer's chat template, which
    carries the BOS token itself; text rows get the tokenizer's usual special tokens.
    """
    if num_samples < 1:
        raise TrdeployError(f"--num-samples must be at least 1 (got {num_samples}).", hint="AWQ needs calibration data; 128 is a good default.")
    if max_seq_len < MIN_SAMPLE_TOKENS:
        raise TrdeployError(f"--max-seq-len must be at least {MIN_SAMPLE_TOKENS} (got {max_seq_len}).", hint="512 is a good default.")
    if records.kind == "chat" and not has_chat_template(tokenizer):
        raise TrdeployError(
            f"The calibration data ({records.source}) is chat messages, but the model's tokenizer has no chat template.",
            hint="Add a chat_template to the tokenizer (Llama-3 Instruct: scripts/make_llama3_hf_tokenizer.py), or pass --dataset with a text column.",
        )
    order = list(range(len(records.rows)))
    random.Random(seed).shuffle(order)
    samples: list[list[int]] = []
    skipped = truncated = 0
    for index in order:
        if len(samples) >= num_samples:
            break
        ids = _encode_row(records.rows[index], records.kind, tokenizer)
        if len(ids) < MIN_SAMPLE_TOKENS:
            skipped += 1
            continue
        if len(ids) > max_seq_len:
            ids = ids[:max_seq_len]
            truncated += 1
        samples.append(ids)
    if not samples:
        raise TrdeployError(
            f"No calibration row of {records.source} has at least {MIN_SAMPLE_TOKENS} tokens.",
            hint="Pass a dataset with longer texts.",
        )
    return CalibrationSet(
        source=records.source,
        kind=records.kind,
        samples=samples,
        requested=num_samples,
        available=len(records.rows),
        max_seq_len=max_seq_len,
        skipped_short=skipped,
        truncated=truncated,
    )


def _encode_row(row: Any, kind: Kind, tokenizer: Any) -> list[int]:
    if kind == "chat":
        text = tokenizer.apply_chat_template(row, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(row)["input_ids"])


def evaluation_texts() -> list[str]:
    """The held-out Turkish evaluation text: the Turkish side of the embedded parallel corpus."""
    from trdeploy.text.embedded import embedded_pairs

    return [p.tr for p in embedded_pairs() if p.tr.strip()]


def render_evaluation(texts: list[str], tokenizer: Any, *, seq_len: int = 512, max_tokens: int = 16384, source: str = "embedded parallel corpus (Turkish side)") -> EvaluationSet:
    """Join the texts, tokenize once, and cut into windows of `seq_len` tokens (each led by BOS).

    A trailing window shorter than 32 tokens is dropped; evaluation stops at `max_tokens`.
    """
    if not texts:
        raise TrdeployError("No held-out Turkish evaluation text is available.", hint="Reinstall trdeploy (trdeploy/data/corpus/*.jsonl).")
    ids = list(tokenizer("\n".join(texts), add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    body = seq_len - (1 if bos is not None else 0)
    windows = []
    used = 0
    for start in range(0, len(ids), body):
        chunk = ids[start : start + body]
        if len(chunk) < 32 or used >= max_tokens:
            break
        window = ([bos] if bos is not None else []) + chunk
        windows.append(window)
        used += len(window)
    if not windows:
        raise TrdeployError("The evaluation text is shorter than one window.", hint="Lower --eval-seq-len.")
    return EvaluationSet(source=source, texts=len(texts), windows=windows, seq_len=seq_len)
