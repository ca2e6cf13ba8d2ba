"""Corpus readers: the embedded parallel corpus and the user's own text, streamed in batches.

Every reader yields `DocumentBatch`es (Turkish documents, and their English translations on
parallel input) of about a megabyte each, so a large corpus is never held in memory whole. Bad input
(a missing or empty file, bytes that are not UTF-8, a JSONL row without the named field, parallel
files of different lengths) raises `TrdeployError` with the file and line.

Document rules, one for every reader:
- plain text: one document a line (lines end at ``\\n``; a trailing ``\\r`` is dropped); blank lines
  are skipped;
- JSONL / CSV / Parquet / hub datasets: one document a row, from a named text field (``--field``,
  default ``text``), or an OpenAI-style chat ``messages`` list whose contents are joined with ``\\n``;
  rows whose text is empty or null are skipped;
- parallel input: one pair a line (or TSV row); a pair is skipped only when both sides are blank.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, get_args

from trdeploy.errors import TrdeployError
from trdeploy.hub import hub_error, is_hub_id, not_cached_error
from trdeploy.text.request import CorpusFormat

BATCH_BYTES = 1 << 20  # about a megabyte of text per batch: big enough for threads, small enough to stream
BATCH_DOCUMENTS = 16_384
_READ_BLOCK = 1 << 20

FORMATS: tuple[str, ...] = get_args(CorpusFormat)
_SUFFIX_FORMAT = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_LANG_CODES = {"tr": "tr", "tur": "tr", "tr_latn": "tr", "tur_latn": "tr", "en": "en", "eng": "en", "en_latn": "en", "eng_latn": "en"}
_HEADER_NAMES = {
    "tr": "tr", "tur": "tr", "turkish": "tr", "türkçe": "tr", "turkce": "tr",
    "en": "en", "eng": "en", "english": "en", "ingilizce": "en", "İngilizce": "en",
}  # fmt: skip
UTF8_HINT = (
    "Convert it to UTF-8 first, e.g. `iconv -f windows-1254 -t utf-8 FILE > FILE.utf8` "
    "(windows-1254 and iso-8859-9 are the usual legacy Turkish encodings)."
)


@dataclass
class DocumentBatch:
    """A slice of the corpus: Turkish documents and, on parallel input, their English translations."""

    turkish: list[str]
    english: list[str] | None = None
    progress: float = 0.0  # in the corpus's progress unit (MB or documents)


@dataclass
class Corpus:
    """A corpus that can be streamed once or more. `batches()` re-reads it from the start."""

    name: str
    kind: str  # embedded | text | jsonl | csv | tsv | parquet | hub_dataset | parallel | parallel_tsv
    source: str
    parallel: bool
    reader: Callable[[Corpus], Iterator[DocumentBatch]]
    progress_total: float | None = None
    progress_unit: str = "MB"
    field: str | None = None
    documents: int = 0  # filled while streaming
    skipped_blank: int = 0
    warnings: list[str] = dc_field(default_factory=list)

    def batches(self) -> Iterator[DocumentBatch]:
        self.documents = 0
        self.skipped_blank = 0
        self.warnings = []
        for batch in self.reader(self):
            self.documents += len(batch.turkish)
            yield batch
        if self.documents == 0:
            raise TrdeployError(
                f"{self.source} has no documents (it is empty or every line/row is blank).",
                hint="Pass a file with text in it.",
            )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "parallel": self.parallel,
            "field": self.field,
            "documents": self.documents,
            "skipped_blank": self.skipped_blank,
        }


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _check_file(path: Path, what: str = "corpus file") -> Path:
    if not path.exists():
        raise TrdeployError(f"The {what} {path} does not exist.", hint="Check the path.")
    if path.is_dir():
        raise TrdeployError(f"The {what} {path} is a folder, not a file.", hint="Pass a file.")
    if path.stat().st_size == 0:
        raise TrdeployError(f"The {what} {path} is empty.", hint="Pass a file with text in it.")
    return path


def _not_utf8(path: Path, line_no: int, raw: bytes, exc: UnicodeDecodeError) -> TrdeployError:
    bad = raw[exc.start] if exc.start < len(raw) else 0
    return TrdeployError(
        f"{path} is not UTF-8 text: line {line_no} has the byte 0x{bad:02x} at byte {exc.start + 1}.", hint=UTF8_HINT
    )


def _line_blocks(path: Path) -> Iterator[tuple[int, list[str], int]]:
    """Yield (first line number, lines, bytes read) a block at a time; lines are UTF-8 checked."""
    line_no = 1
    pending = bytearray()  # the unfinished last line (grows in place, even for one huge line)
    first = True
    with open(path, "rb") as handle:
        while True:
            block = handle.read(_READ_BLOCK)
            if not block:
                data = bytes(pending)
                pending.clear()
                if not data:
                    return
            else:
                cut = block.rfind(b"\n")
                if cut < 0:
                    pending += block
                    continue
                data = bytes(pending) + block[: cut + 1]
                pending = bytearray(block[cut + 1 :])
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                before = data[: exc.start]
                bad_line = line_no + before.count(b"\n")
                line_start = before.rfind(b"\n") + 1
                line_end = data.find(b"\n", exc.start)
                raw = data[line_start : line_end if line_end >= 0 else len(data)]
                shifted = UnicodeDecodeError(exc.encoding, exc.object, exc.start - line_start, exc.end - line_start, exc.reason)
                raise _not_utf8(path, bad_line, raw, shifted) from None
            if first and text.startswith("\ufeff"):
                text = text[1:]
            first = False
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
            yield line_no, lines, len(data)
            line_no += len(lines)
            if not block:
                return


def _lines(path: Path) -> Iterator[tuple[int, str, int]]:
    """(line number, line, bytes) for each line; the byte count is carried on a block's last line."""
    for start, lines, nbytes in _line_blocks(path):
        last = len(lines) - 1
        for i, line in enumerate(lines):
            yield start + i, line, (nbytes if i == last else 0)


class _Batcher:
    """Collect documents into ~1 MB batches."""

    def __init__(self, parallel: bool) -> None:
        self.parallel = parallel
        self.turkish: list[str] = []
        self.english: list[str] = []
        self.chars = 0
        self.progress = 0.0

    def add(self, tr: str, en: str | None = None) -> None:
        self.turkish.append(tr)
        self.chars += len(tr)
        if self.parallel:
            self.english.append(en or "")
            self.chars += len(en or "")

    def full(self) -> bool:
        return self.chars >= BATCH_BYTES or len(self.turkish) >= BATCH_DOCUMENTS

    def take(self) -> DocumentBatch:
        batch = DocumentBatch(self.turkish, self.english if self.parallel else None, self.progress)
        self.turkish, self.english, self.chars, self.progress = [], [], 0, 0.0
        return batch

    def add_row(self, text: str | None, corpus: Corpus) -> bool:
        """One row of a table (Parquet, hub dataset): add its text or count it blank; True when full."""
        if text and text.strip():
            self.add(text)
        else:
            corpus.skipped_blank += 1
        self.progress += 1
        return self.full()

    def rest(self) -> Iterator[DocumentBatch]:
        """The last, partly filled batch, if anything is left."""
        if self.turkish or self.progress:
            yield self.take()


def _mb(nbytes: int) -> float:
    return nbytes / 1_000_000


# ---------------------------------------------------------------------------------------------
# Rows (JSONL, CSV, Parquet, hub datasets) -> document text


def _message_text(messages: Any, where: str) -> str:
    if not isinstance(messages, list):
        raise TrdeployError(f"{where}: 'messages' is not a list of chat messages.", hint="Use OpenAI-style [{\"role\": ..., \"content\": ...}].")
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise TrdeployError(f"{where}: a chat message is not an object.", hint="Use OpenAI-style [{\"role\": ..., \"content\": ...}].")
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # multimodal parts: keep the text ones
            parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        elif content is not None:
            raise TrdeployError(f"{where}: a message's content is {type(content).__name__}, not text.", hint="Each content must be a string.")
    return "\n".join(p for p in parts if p)


def _row_text(row: Any, fld: str, where: str, available: Callable[[], str]) -> str | None:
    if not isinstance(row, dict):
        raise TrdeployError(f"{where} is not an object.", hint="Each line of a JSONL corpus must be a JSON object.")
    if fld not in row:
        raise TrdeployError(f"{where} has no field '{fld}' (it has: {available()}).", hint="Pass --field with the name of the text field.")
    value = row[fld]
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _message_text(value, where)
    raise TrdeployError(f"{where}: field '{fld}' is {type(value).__name__}, not text.", hint="Pass --field with the name of a text field.")


def _looks_like_text(name: str) -> bool:
    """A column name that reads like a sentence: the file probably has no header row."""
    return len(name) > 40 or len(name.split()) >= 3 or name.rstrip()[-1:] in (".", "?", "!")


def _choose_field(fld: str | None, names: Iterable[str], where: str) -> str:
    names = list(names)
    if fld:
        if fld not in names:
            raise TrdeployError(f"{where} has no field '{fld}' (it has: {', '.join(names) or 'none'}).", hint="Pass --field with the name of the text field.")
        return fld
    for candidate in ("text", "messages"):
        if candidate in names:
            return candidate
    if len(names) == 1:
        return names[0]
    raise TrdeployError(
        f"{where} has no 'text' or 'messages' field (it has: {', '.join(names) or 'none'}).",
        hint="Pass --field with the name of the text field.",
    )


# ---------------------------------------------------------------------------------------------
# Readers


def _read_text(corpus: Corpus) -> Iterator[DocumentBatch]:
    # A read block (1 MiB) is a batch: list operations per block, no Python call per line.
    path = Path(corpus.source)
    for _, lines, nbytes in _line_blocks(path):
        documents = [line for line in lines if line and not line.isspace()]
        corpus.skipped_blank += len(lines) - len(documents)
        yield DocumentBatch(documents, None, _mb(nbytes))


def _read_jsonl(corpus: Corpus) -> Iterator[DocumentBatch]:
    path = Path(corpus.source)
    batcher = _Batcher(parallel=False)
    fld = corpus.field
    for line_no, line, nbytes in _lines(path):
        batcher.progress += _mb(nbytes)
        if not line.strip():
            continue
        where = f"{path} line {line_no}"
        try:
            row = json.loads(line)
        except RecursionError:
            raise TrdeployError(f"{where} is nested too deeply to read.", hint="A JSONL corpus holds one JSON object a line.") from None
        except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
            raise TrdeployError(f"{where} is not valid JSON ({getattr(exc, 'msg', str(exc)[:80])}).", hint="A JSONL corpus holds one JSON object a line.") from None
        if fld is None:
            if not isinstance(row, dict):
                raise TrdeployError(f"{where} is not an object.", hint="Each line of a JSONL corpus must be a JSON object.")
            fld = corpus.field = _choose_field(None, row.keys(), where)
        text = _row_text(row, fld, where, lambda row=row: ", ".join(row) if isinstance(row, dict) else "")
        if text and text.strip():
            batcher.add(text)
            if batcher.full():
                yield batcher.take()
        else:
            corpus.skipped_blank += 1
    yield from batcher.rest()


class _CountingReader(io.RawIOBase):
    """A binary reader that counts bytes, so CSV parsing can report progress in MB."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.handle.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


def _read_csv(corpus: Corpus) -> Iterator[DocumentBatch]:
    path = Path(corpus.source)
    delimiter = "\t" if corpus.kind == "tsv" else ","
    csv.field_size_limit(2**31 - 1)
    batcher = _Batcher(parallel=False)
    with open(path, "rb") as raw:
        counter = _CountingReader(raw)
        text = io.TextIOWrapper(io.BufferedReader(counter, 1 << 20), encoding="utf-8-sig", newline="")
        # strict: a quote still open at the end of the file is an error, not one last field that
        # silently swallowed every row after it.
        reader = csv.reader(text, delimiter=delimiter, strict=True)
        seen = 0
        swallowed: list[tuple[int, int]] = []  # (line where the field starts, row-like lines inside it)
        try:
            header = next(reader, None)
            if header is None:
                return
            named = corpus.field
            column = header.index(_choose_field(corpus.field, header, f"The header of {path}"))
            corpus.field = header[column]
            if named is None and len(header) == 1 and _looks_like_text(header[0]):
                corpus.warnings.append(
                    f"the first line of {path} ({header[0][:40]!r}) was read as the column name, so it is not counted; "
                    "if the file has no header row, add one (e.g. 'text')."
                )
            for row in reader:
                if column >= len(row):
                    if not any(cell.strip() for cell in row):
                        continue
                    raise TrdeployError(f"{path} line {reader.line_num} has {len(row)} columns, the header has {len(header)}.", hint="Fix the row or quote its text.")
                value = row[column]
                if len(header) > 1 and "\n" in value:
                    rows_inside = sum(line.count(delimiter) >= len(header) - 1 for line in value.split("\n")[1:])
                    if rows_inside:
                        swallowed.append((reader.line_num - value.count("\n"), rows_inside))
                if value.strip():
                    batcher.add(value)
                    if batcher.full():
                        batcher.progress = _mb(counter.count - seen)
                        seen = counter.count
                        yield batcher.take()
                else:
                    corpus.skipped_blank += 1
        except UnicodeDecodeError:
            raise TrdeployError(f"{path} is not UTF-8 text (near line {reader.line_num + 1}).", hint=UTF8_HINT) from None
        except csv.Error as exc:
            raise TrdeployError(f"{path} line {reader.line_num} is not valid CSV: {exc}.", hint="Check the quoting of that row (a quote left open?).") from None
    if swallowed:
        line, rows = swallowed[0]
        total = sum(n for _, n in swallowed)
        corpus.warnings.append(
            f"{path}: {total} line(s) that look like rows are inside quoted text (first at line {line}, {rows} of them); "
            "a quote left open merges rows into one document. Check the quoting."
        )
    batcher.progress = _mb(counter.count - seen)
    yield from batcher.rest()


def _need(module: str, extra: str = "data"):
    try:
        return __import__(module)
    except ImportError as exc:
        raise TrdeployError(f"Reading this data needs the '{module}' package.", hint=f"pip install 'trdeploy[{extra}]'") from exc


def _read_parquet(corpus: Corpus) -> Iterator[DocumentBatch]:
    _need("pyarrow")
    import pyarrow.parquet as pq

    path = Path(corpus.source)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise TrdeployError(f"{path} is not a Parquet file: {(str(exc).splitlines() or [''])[0]}", hint="Check the file, or pass --format.") from None
    names = parquet.schema_arrow.names
    fld = corpus.field = _choose_field(corpus.field, names, str(path))
    batcher = _Batcher(parallel=False)
    row_no = 0
    for record_batch in parquet.iter_batches(batch_size=4096, columns=[fld]):
        for cell in record_batch.column(0).to_pylist():
            row_no += 1
            value = cell
            if isinstance(value, list):
                value = _message_text(value, f"{path} row {row_no}")
            elif value is not None and not isinstance(value, str):
                raise TrdeployError(f"{path}: column '{fld}' holds {type(value).__name__}, not text.", hint="Pass --field with a text column.")
            if batcher.add_row(value, corpus):
                yield batcher.take()
    yield from batcher.rest()


def load_hub_dataset(repo_id: str, subset: str | None = None, split: str = "train", *, streaming: bool = True):
    """A hub dataset (or a local dataset folder) through `datasets`, honouring HF_HUB_OFFLINE and the
    huggingface_hub cache. Shared by `profile --corpus`, `quantize --dataset` and `bench --dataset`."""
    _need("datasets")
    import datasets
    from huggingface_hub import snapshot_download

    try:
        return datasets.load_dataset(repo_id, name=subset, split=split, streaming=streaming)
    except (ConnectionError, OSError) as online_error:
        # Offline (HF_HUB_OFFLINE) or no network: datasets only looks in its own cache, so read the
        # dataset repository from the huggingface_hub cache, where `hf download` puts it.
        try:
            folder = snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
        except Exception:
            raise _dataset_error(repo_id, online_error) from None
        try:
            return datasets.load_dataset(folder, name=subset, split=split, streaming=streaming)
        except Exception as exc:
            raise _dataset_error(repo_id, exc) from None
    except Exception as exc:
        raise _dataset_error(repo_id, exc) from None


def _dataset_error(repo_id: str, exc: Exception) -> TrdeployError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    name = type(exc).__name__
    if name in ("FileNotFoundError", "DataFilesNotFoundError"):  # datasets': no data files at that name
        return TrdeployError(
            f"No local file or hub dataset named {repo_id} ({first}).",
            hint="Check the path or the dataset id; for a gated or private dataset set HF_TOKEN.",
        )
    if name == "ConnectionError":  # datasets' own offline failure
        return not_cached_error(repo_id, instead=_HUB_INSTEAD)
    if isinstance(exc, ValueError):  # datasets: bad split or config name
        return TrdeployError(f"The hub dataset {repo_id}: {first}", hint="Pass a split and a subset (configuration) from the names it lists.")
    return hub_error(repo_id, exc, kind="dataset", instead=_HUB_INSTEAD)


_HUB_INSTEAD = "pass a local file"


def _read_hub_dataset(corpus: Corpus, subset: str | None, split: str) -> Iterator[DocumentBatch]:
    dataset = load_hub_dataset(corpus.source, subset, split)
    batcher = _Batcher(parallel=False)
    fld = corpus.field
    iterator = iter(dataset)
    row_no = 0
    while True:
        try:
            row = next(iterator)
        except StopIteration:
            break
        except TrdeployError:
            raise
        except Exception as exc:  # network or format errors surface while streaming
            raise _dataset_error(corpus.source, exc) from None
        row_no += 1
        where = f"{corpus.source} row {row_no}"
        if fld is None:
            fld = corpus.field = _choose_field(None, row.keys(), where)
        text = _row_text(row, fld, where, lambda row=row: ", ".join(row))
        if batcher.add_row(text, corpus):
            yield batcher.take()
    yield from batcher.rest()


def _read_parallel(corpus: Corpus, tr_path: Path, en_path: Path) -> Iterator[DocumentBatch]:
    batcher = _Batcher(parallel=True)
    one_sided = 0
    tr_lines, en_lines = _lines(tr_path), _lines(en_path)
    n = 0
    while True:
        tr = next(tr_lines, None)
        en = next(en_lines, None)
        if tr is None or en is None:
            if tr is None and en is None:
                break
            tr_count = n + (1 + sum(1 for _ in tr_lines) if tr is not None else 0)
            en_count = n + (1 + sum(1 for _ in en_lines) if en is not None else 0)
            raise TrdeployError(
                f"The parallel files have different lengths: {tr_path} has {tr_count} lines, {en_path} has {en_count}.",
                hint="Line i of the Turkish file must translate line i of the English file.",
            )
        n += 1
        batcher.progress += _mb(tr[2] + en[2])
        tr_text, en_text = tr[1], en[1]
        tr_blank, en_blank = not tr_text.strip(), not en_text.strip()
        if tr_blank and en_blank:
            corpus.skipped_blank += 1
            continue
        if tr_blank or en_blank:
            one_sided += 1
        batcher.add(tr_text, en_text)
        if batcher.full():
            yield batcher.take()
    if one_sided:
        corpus.warnings.append(f"{one_sided} pairs have one blank side (kept; check the alignment).")
    yield from batcher.rest()


def _tsv_columns(path: Path, first: list[str], line_no: int, tr_column: int | None, en_column: int | None):
    """(tr index, en index, header line to skip or 0, the language-code cells to check, or None)."""
    if tr_column is not None or en_column is not None:
        if tr_column is None or en_column is None:
            raise TrdeployError("Pass both --tr-column and --en-column (1-based), or neither.", hint="Tatoeba's layout is detected without them.")
        if tr_column < 1 or en_column < 1 or tr_column == en_column:
            raise TrdeployError("--tr-column and --en-column are two different 1-based column numbers.", hint="Tatoeba's layout is --en-column 3 --tr-column 4.")
        tr_i, en_i = tr_column - 1, en_column - 1
        # A first row whose two chosen cells are language names (tr/en, Turkish/English...) is a header.
        is_header = max(tr_i, en_i) < len(first) and all(_HEADER_NAMES.get(first[i].strip().lower()) for i in (tr_i, en_i))
        return tr_i, en_i, line_no if is_header else 0, None
    codes = [_LANG_CODES.get(cell.strip().lower()) for cell in first[:2]]
    if len(first) >= 4 and sorted(c or "" for c in codes) == ["en", "tr"]:
        # Tatoeba: eng<TAB>tur<TAB>English<TAB>Turkish (the codes say which text column is which).
        return 2 + codes.index("tr"), 2 + codes.index("en"), 0, (first[0], first[1])
    names = [_HEADER_NAMES.get(cell.strip().lower()) for cell in first]
    if names.count("tr") == 1 and names.count("en") == 1:
        return names.index("tr"), names.index("en"), line_no, None
    raise TrdeployError(
        f"Cannot tell the Turkish and English columns of {path} (first row: {first[:4]}).",
        hint="Pass --tr-column N --en-column M (1-based), or use a header row naming 'tr' and 'en'.",
    )


def _read_parallel_tsv(corpus: Corpus, tr_column: int | None, en_column: int | None) -> Iterator[DocumentBatch]:
    path = Path(corpus.source)
    batcher = _Batcher(parallel=True)
    columns = None
    for line_no, line, nbytes in _lines(path):
        batcher.progress += _mb(nbytes)
        if not line.strip():
            corpus.skipped_blank += 1
            continue
        cells = line.split("\t")
        if columns is None:
            columns = _tsv_columns(path, cells, line_no, tr_column, en_column)
            corpus.field = f"tr=column {columns[0] + 1}, en=column {columns[1] + 1}"
            if columns[2] == line_no:
                continue  # the header row
        tr_i, en_i, _, codes = columns
        if max(tr_i, en_i) >= len(cells):
            raise TrdeployError(
                f"{path} line {line_no} has {len(cells)} columns; the Turkish and English text are in columns {tr_i + 1} and {en_i + 1}.",
                hint="Fix that row, or pass --tr-column / --en-column.",
            )
        if codes is not None and (cells[0], cells[1]) != codes:
            raise TrdeployError(f"{path} line {line_no} has languages {cells[0]}/{cells[1]}, the first row {codes[0]}/{codes[1]}.", hint="Keep one language order in the file.")
        tr_text, en_text = cells[tr_i], cells[en_i]
        if not tr_text.strip() and not en_text.strip():
            corpus.skipped_blank += 1
            continue
        batcher.add(tr_text, en_text)
        if batcher.full():
            yield batcher.take()
    yield from batcher.rest()


def _read_embedded(corpus: Corpus) -> Iterator[DocumentBatch]:
    from trdeploy.text.embedded import embedded_pairs

    pairs = embedded_pairs()
    if not pairs:
        raise TrdeployError("The embedded corpus is missing from this installation.", hint="Reinstall trdeploy.")
    yield DocumentBatch([p.tr for p in pairs], [p.en for p in pairs], float(len(pairs)))


# ---------------------------------------------------------------------------------------------
# Public constructors


def _limited(reader: Callable[[Corpus], Iterator[DocumentBatch]], limit: int | None):
    if limit is None:
        return reader

    def limited(corpus: Corpus) -> Iterator[DocumentBatch]:
        left = limit
        for batch in reader(corpus):
            if len(batch.turkish) >= left:
                yield DocumentBatch(batch.turkish[:left], batch.english[:left] if batch.english is not None else None, batch.progress)
                return
            left -= len(batch.turkish)
            yield batch

    return limited


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise TrdeployError(f"--limit must be at least 1 (got {limit}).", hint="Leave it out to read the whole corpus.")


def embedded_corpus(*, limit: int | None = None) -> Corpus:
    """The embedded Turkish-English parallel corpus (trdeploy.text.embedded.embedded_pairs())."""
    from trdeploy.text.embedded import embedded_pairs

    _check_limit(limit)
    total = float(min(len(embedded_pairs()), limit or len(embedded_pairs())))
    return Corpus("embedded Turkish-English corpus", "embedded", "trdeploy/data/corpus", True, _limited(_read_embedded, limit), total, "documents")


def detect_format(path: Path) -> str:
    return _SUFFIX_FORMAT.get(path.suffix.lower(), "text")


def open_corpus(
    spec: str,
    *,
    field: str | None = None,
    fmt: str = "auto",
    split: str = "train",
    subset: str | None = None,
    limit: int | None = None,
) -> Corpus:
    """A monolingual (Turkish) corpus: a text, JSONL, CSV/TSV or Parquet file, or a hub dataset id."""
    _check_limit(limit)
    if fmt not in FORMATS:
        raise TrdeployError(f"Unknown corpus format '{fmt}'.", hint=f"Use one of: {', '.join(FORMATS)}.")
    path = Path(spec).expanduser()
    if not path.exists() and is_hub_id(spec, revision=False, file_suffixes=_SUFFIX_FORMAT):
        corpus = Corpus(spec, "hub_dataset", spec, False, lambda c: _read_hub_dataset(c, subset, split), float(limit) if limit else None, "documents", field)
        corpus.reader = _limited(corpus.reader, limit)
        return corpus
    _check_file(path)
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "text" and field:
        raise TrdeployError("--field applies to JSONL, CSV, Parquet and hub datasets, not to plain text.", hint="Leave --field out, or pass --format.")
    size = _mb(path.stat().st_size)
    readers = {"text": _read_text, "jsonl": _read_jsonl, "csv": _read_csv, "tsv": _read_csv}
    if kind == "parquet":
        _need("pyarrow")
        import pyarrow.parquet as pq

        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception as exc:
            raise TrdeployError(f"{path} is not a Parquet file: {(str(exc).splitlines() or [''])[0]}", hint="Check the file, or pass --format.") from None
        return Corpus(path.name, "parquet", str(path), False, _limited(_read_parquet, limit), float(rows), "documents", field)
    return Corpus(path.name, kind, str(path), False, _limited(readers[kind], limit), size, "MB", field)


def parallel_corpus(tr_file: str | Path, en_file: str | Path, *, limit: int | None = None) -> Corpus:
    """Two line-aligned files: line i of the Turkish file translates line i of the English file (FLORES)."""
    _check_limit(limit)
    tr_path = _check_file(Path(tr_file).expanduser(), "Turkish file")
    en_path = _check_file(Path(en_file).expanduser(), "English file")
    size = _mb(tr_path.stat().st_size + en_path.stat().st_size)
    return Corpus(
        f"{tr_path.name} + {en_path.name}",
        "parallel",
        f"{tr_path} | {en_path}",
        True,
        _limited(lambda c: _read_parallel(c, tr_path, en_path), limit),
        size,
        "MB",
    )


def parallel_tsv_corpus(
    path: str | Path, *, tr_column: int | None = None, en_column: int | None = None, limit: int | None = None
) -> Corpus:
    """A TSV with a Turkish and an English column (Tatoeba's eng/tur/English/Turkish layout is detected)."""
    _check_limit(limit)
    path = _check_file(Path(path).expanduser(), "parallel TSV file")
    return Corpus(
        path.name,
        "parallel_tsv",
        str(path),
        True,
        _limited(lambda c: _read_parallel_tsv(c, tr_column, en_column), limit),
        _mb(path.stat().st_size),
        "MB",
    )


def iter_documents(corpus: Corpus) -> Iterator[str]:
    """Every Turkish document of a corpus, one at a time (for callers that want plain strings)."""
    for batch in corpus.batches():
        yield from batch.turkish

