"""Token inflation: what Turkish text costs a tokenizer, measured on a corpus.

Definitions (one for every number the profile reports):
- A *word* is a match of `WORD_PATTERN`: a maximal run of letters, digits, underscores and combining
  accents (Python's ``\\w`` plus U+0300-U+036F), where an apostrophe (``'`` or ``’``) between two
  such runs joins them. So "Ankara'ya", "TL'ye", "2024'te" and "don't" are one word each;
  "e-posta" is two; punctuation, symbols and emoji are not words. Case is kept.
- *Characters* are Unicode code points (Python ``len``).
- *Tokens* are the tokenizer's own encode without special tokens (see trdeploy.text.tokenizers).
- The *premium* is Turkish tokens over English tokens of the same content (ratio of sums over all
  pairs). Its 95% interval is a seeded percentile bootstrap over documents (pairs resampled with
  replacement, ratio of sums per resample); above `BOOTSTRAP_MAX_UNITS` pairs, contiguous blocks of
  pairs are resampled instead of single pairs.
- *Tokens per word* is total tokens over total words (Turkish side). `tokens_per_word()` gives the
  per-document value at a percentile (documents without words are left out).
- The *most fragmented frequent words* are Turkish words seen at least `min_count` times (with at
  least one letter), ranked by their token count as they appear after a space mid-sentence.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from threading import get_ident
from typing import TYPE_CHECKING, Any

import numpy as np

from trdeploy.errors import TrdeployError
from trdeploy.text.request import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, DEFAULT_MIN_COUNT, DEFAULT_TOP_WORDS

try:  # the C helper behind Counter.update(iterable), without its per-call Python overhead
    from collections import _count_elements  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - other Python implementations

    def _count_elements(mapping: Counter, iterable: Iterable[str]) -> None:
        mapping.update(iterable)


if TYPE_CHECKING:
    from trdeploy.text.corpora import DocumentBatch
    from trdeploy.text.tokenizers import Tokenizer

_WORD_CHARS = r"[\w\u0300-\u036f]"
WORD_PATTERN = re.compile(rf"{_WORD_CHARS}+(?:['’]{_WORD_CHARS}+)*")
WORD_DEFINITION = (
    "a maximal run of letters, digits, underscores and combining accents; an apostrophe (' or ’) between "
    "two runs joins them (Ankara'ya, TL'ye, 2024'te are one word; e-posta is two); punctuation is not a word"
)
PERCENTILES = (50, 90, 95, 99)
BOOTSTRAP_MAX_UNITS = 20_000
_WORD_CONTEXT = "x"  # a word is measured as it follows a space: tokens("x " + w) - tokens("x")


def find_words(text: str) -> list[str]:
    """The words of a text (see the module docstring)."""
    return WORD_PATTERN.findall(text)


def count_words(text: str) -> int:
    return len(WORD_PATTERN.findall(text))


# ---------------------------------------------------------------------------------------------
# Pure statistics over per-document counts


def per_document_tokens_per_word(tokens: Sequence[int] | np.ndarray, words: Sequence[int] | np.ndarray, percentile: float = 95.0) -> float:
    """Tokens per word of each document (documents with words), at `percentile` (0-100)."""
    if not 0.0 <= percentile <= 100.0:
        raise TrdeployError(f"The percentile must be between 0 and 100 (got {percentile}).", hint="Use e.g. 95.")
    tokens = np.asarray(tokens, dtype=np.float64)
    words = np.asarray(words, dtype=np.float64)
    mask = words > 0
    if not mask.any():
        raise TrdeployError("None of the texts has a word in it.", hint="Pass Turkish text with words.")
    return float(np.percentile(tokens[mask] / words[mask], percentile))


def length_percentiles(lengths: np.ndarray) -> dict[str, float]:
    """p50/p90/p95/p99 (each the length of a real document: nearest rank), max and mean."""
    if lengths.size == 0:
        return {**{f"p{p}": 0 for p in PERCENTILES}, "max": 0, "mean": 0.0}
    values = np.percentile(lengths, PERCENTILES, method="inverted_cdf")
    out: dict[str, float] = {f"p{p}": int(v) for p, v in zip(PERCENTILES, values, strict=True)}
    out["max"] = int(lengths.max())
    out["mean"] = round(float(lengths.mean()), 2)
    return out


def bootstrap_ratio_ci(
    numerator: np.ndarray,
    denominator: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
    max_units: int = BOOTSTRAP_MAX_UNITS,
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerator)/sum(denominator), resampling documents."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    n = num.size
    if n == 0 or den.sum() == 0:
        raise ValueError("bootstrap needs at least one document with a non-zero denominator")
    if n > max_units:
        # Contiguous blocks of documents: the ratio of sums only needs block sums, and the interval
        # stays honest (neighbouring documents are often related, so blocks are if anything wider).
        starts = np.linspace(0, n, max_units + 1).astype(np.int64)[:-1]
        num, den, n = np.add.reduceat(num, starts), np.add.reduceat(den, starts), max_units
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples, dtype=np.float64)
    step = max(1, 4_000_000 // n)  # resamples per vectorised block: bounded memory
    for start in range(0, resamples, step):
        m = min(step, resamples - start)
        idx = rng.integers(0, n, size=(m, n))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[start : start + m] = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.nanquantile(ratios[np.isfinite(ratios)], [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


# ---------------------------------------------------------------------------------------------
# Streaming measurement


@dataclass
class SideCounts:
    """Tokenizer-independent counts of one side (Turkish or English), per document."""

    words: list[np.ndarray] = field(default_factory=list)
    characters: int = 0

    def words_array(self) -> np.ndarray:
        return np.concatenate(self.words) if self.words else np.zeros(0, dtype=np.int64)


@dataclass
class Measurements:
    """Everything counted in one pass over a corpus: per-document arrays, totals, word frequencies."""

    parallel: bool
    turkish: SideCounts = field(default_factory=SideCounts)
    english: SideCounts = field(default_factory=SideCounts)
    word_counts: Counter = field(default_factory=Counter)
    # tokenizer index -> per-document token counts, batch by batch
    turkish_tokens: dict[int, list[np.ndarray]] = field(default_factory=dict)
    english_tokens: dict[int, list[np.ndarray]] = field(default_factory=dict)

    def tokens_array(self, index: int, side: str = "turkish") -> np.ndarray:
        chunks = (self.turkish_tokens if side == "turkish" else self.english_tokens).get(index, [])
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)


def _chunk_size(n: int, threads: int) -> int:
    # A few chunks per thread per batch keeps every thread busy without a task per document.
    return max(256, -(-n // (threads * 2)))


def _measure_chunk(
    tokenizers: Sequence[Tokenizer], texts: list[str], counters: dict[int, Counter] | None
) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Token counts per tokenizer, words per document and characters of one chunk (runs on a worker).

    Encoding and word finding are separate passes over the chunk (alternating them document by
    document measured a third slower: the two evict each other's tables from the CPU caches).
    Word frequencies go to this thread's own Counter, merged once at the end.
    """
    tokens = [np.asarray(tok.count_chunk(texts), dtype=np.int64) for tok in tokenizers]
    findall = WORD_PATTERN.findall
    if counters is None:
        words = [len(findall(text)) for text in texts]
    else:
        counter = counters.setdefault(get_ident(), Counter())
        words = []
        add_words = words.append
        for text in texts:
            found = findall(text)
            add_words(len(found))
            _count_elements(counter, found)
    return tokens, np.asarray(words, dtype=np.int64), sum(map(len, texts))


def _merge_counters(counters: Iterable[Counter]) -> Counter:
    ordered = sorted(counters, key=len, reverse=True)
    if not ordered:
        return Counter()
    total = ordered[0]
    for other in ordered[1:]:
        total.update(other)
    return total


def _count_whole(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    return np.asarray(tokenizer.count_batch(texts), dtype=np.int64)


@dataclass
class _SideWork:
    """The futures measuring one side of one batch."""

    chunks: list[Future]  # _measure_chunk over slices: chunked tokenizers' counts, words, characters
    whole: dict[int, Future]  # tokenizer index -> counts of the whole side (tokenizers that parallelise inside)


def measure(
    batches: Iterable[DocumentBatch],
    tokenizers: Sequence[Tokenizer],
    *,
    parallel: bool,
    on_batch: Callable[[DocumentBatch], None] | None = None,
    word_frequencies: bool = True,
) -> Measurements:
    """Stream the batches once: token counts per tokenizer, words and characters, word frequencies.

    Each batch is split into chunks measured on worker threads; a tokenizer that parallelises a
    batch itself (Hugging Face `tokenizers`, in Rust) gets the whole batch in one call instead.
    This thread reads the next batch meanwhile. At most three batches are in flight, so memory
    stays bounded on any corpus size. `word_frequencies=False` skips counting Turkish word
    frequencies (only the fragmented-words list needs them).
    """
    from trdeploy.text.tokenizers import _thread_pool, worker_threads

    result = Measurements(parallel=parallel)
    for i in range(len(tokenizers)):
        result.turkish_tokens[i] = []
        result.english_tokens[i] = []
    threads = worker_threads()
    pool = _thread_pool()
    counters: dict[int, Counter] = {}
    chunked = [i for i, tok in enumerate(tokenizers) if not tok.parallel_batches]
    chunked_tokenizers = [tokenizers[i] for i in chunked]
    in_flight: deque[tuple[DocumentBatch, _SideWork, _SideWork | None]] = deque()

    def submit(texts: list[str], with_counter: bool) -> _SideWork:
        whole = {i: pool.submit(_count_whole, tok, texts) for i, tok in enumerate(tokenizers) if tok.parallel_batches and texts}
        size = _chunk_size(len(texts), threads)
        chunks = [
            pool.submit(_measure_chunk, chunked_tokenizers, texts[i : i + size], counters if with_counter else None)
            for i in range(0, len(texts), size)
        ]
        return _SideWork(chunks, whole)

    def collect_side(work: _SideWork, store: dict[int, list[np.ndarray]], counts: SideCounts) -> None:
        for future in work.chunks:
            token_arrays, words, characters = future.result()
            for i, array in zip(chunked, token_arrays, strict=True):
                store[i].append(array)
            counts.words.append(words)
            counts.characters += characters
        for i, future in work.whole.items():
            store[i].append(future.result())

    def collect(batch: DocumentBatch, turkish: _SideWork, english: _SideWork | None) -> None:
        collect_side(turkish, result.turkish_tokens, result.turkish)
        if english is not None:
            collect_side(english, result.english_tokens, result.english)
        if on_batch is not None:
            on_batch(batch)

    try:
        for batch in batches:
            turkish = submit(batch.turkish, word_frequencies)
            english = submit(batch.english, False) if batch.english is not None else None
            in_flight.append((batch, turkish, english))
            while len(in_flight) > 2:
                collect(*in_flight.popleft())
        while in_flight:
            collect(*in_flight.popleft())
    finally:
        for _, *sides in in_flight:  # an error: drop the work not started yet
            for work in sides:
                if work is not None:
                    for future in (*work.chunks, *work.whole.values()):
                        future.cancel()
    result.word_counts = _merge_counters(counters.values())
    return result


# ---------------------------------------------------------------------------------------------
# Summaries


@dataclass
class FragmentedWord:
    word: str
    count: int
    tokens: int
    pieces: list[str]


@dataclass
class TokenizerProfile:
    """One tokenizer's profile of a corpus. Turkish-side keys are always set; English ones on parallel input."""

    tokenizer: str
    tokenizer_kind: str
    tokenizer_source: str
    documents: int
    turkish_tokens: int
    turkish_words: int
    turkish_characters: int
    tokens_per_word: float | None
    characters_per_token: float | None
    tokens_per_word_p95: float | None
    document_tokens: dict[str, float]
    english_tokens: int | None = None
    english_words: int | None = None
    english_characters: int | None = None
    english_tokens_per_word: float | None = None
    english_characters_per_token: float | None = None
    english_document_tokens: dict[str, float] | None = None
    premium: float | None = None
    premium_ci95: list[float] | None = None
    fragmented_words: list[FragmentedWord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def word_token_ids(tokenizer: Tokenizer, words: Sequence[str]) -> list[list[int]]:
    """Token ids of each word as it appears after a space mid-sentence ("x word" minus "x")."""
    if not words:
        return []
    encoded = tokenizer.encode_batch([_WORD_CONTEXT] + [f"{_WORD_CONTEXT} {w}" for w in words])
    prefix, rest = encoded[0], encoded[1:]
    k = len(prefix)
    fallback = [i for i, ids in enumerate(rest) if ids[:k] != prefix]
    if fallback:  # the context merged with the word: measure " word" alone instead
        again = tokenizer.encode_batch([" " + words[i] for i in fallback])
        for i, ids in zip(fallback, again, strict=True):
            rest[i] = [*prefix, *ids]
    return [ids[k:] for ids in rest]


def fragmented_words(
    tokenizer: Tokenizer, word_counts: Counter, *, min_count: int = DEFAULT_MIN_COUNT, top: int = DEFAULT_TOP_WORDS
) -> list[FragmentedWord]:
    """Words seen at least `min_count` times, most tokens first (then most frequent, then alphabetical)."""
    if top <= 0:
        return []
    frequent = [(w, c) for w, c in word_counts.items() if c >= min_count and any(ch.isalpha() for ch in w)]
    ids = word_token_ids(tokenizer, [w for w, _ in frequent])
    ranked = sorted(zip(frequent, ids, strict=True), key=lambda item: (-len(item[1]), -item[0][1], item[0][0]))[:top]
    return [
        FragmentedWord(
            word=w,
            count=c,
            tokens=len(tok_ids),
            pieces=[tokenizer.token_bytes(t).decode("utf-8", errors="backslashreplace") for t in tok_ids],
        )
        for (w, c), tok_ids in ranked
    ]


def summarize(
    measurements: Measurements,
    tokenizers: Sequence[Tokenizer],
    *,
    min_count: int = DEFAULT_MIN_COUNT,
    top_words: int = DEFAULT_TOP_WORDS,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> list[TokenizerProfile]:
    """One `TokenizerProfile` per tokenizer, from the counts of one pass (pure: no I/O)."""
    tr_words = measurements.turkish.words_array()
    en_words = measurements.english.words_array() if measurements.parallel else None
    total_tr_words = int(tr_words.sum())
    profiles = []
    for i, tok in enumerate(tokenizers):
        tr = measurements.tokens_array(i, "turkish")
        tr_total = int(tr.sum())
        has_words = tr_words > 0
        profile = TokenizerProfile(
            tokenizer=tok.name,
            tokenizer_kind=tok.kind,
            tokenizer_source=tok.source,
            documents=int(tr.size),
            turkish_tokens=tr_total,
            turkish_words=total_tr_words,
            turkish_characters=measurements.turkish.characters,
            tokens_per_word=_ratio(tr_total, total_tr_words),
            characters_per_token=_ratio(measurements.turkish.characters, tr_total),
            tokens_per_word_p95=round(per_document_tokens_per_word(tr, tr_words, 95.0), 4) if has_words.any() else None,
            document_tokens=length_percentiles(tr),
            fragmented_words=fragmented_words(tok, measurements.word_counts, min_count=min_count, top=top_words),
        )
        if measurements.parallel and en_words is not None:
            en = measurements.tokens_array(i, "english")
            en_total = int(en.sum())
            profile.english_tokens = en_total
            profile.english_words = int(en_words.sum())
            profile.english_characters = measurements.english.characters
            profile.english_tokens_per_word = _ratio(en_total, int(en_words.sum()))
            profile.english_characters_per_token = _ratio(measurements.english.characters, en_total)
            profile.english_document_tokens = length_percentiles(en)
            profile.premium = _ratio(tr_total, en_total)
            if en_total:
                lo, hi = bootstrap_ratio_ci(tr, en, resamples=resamples, seed=seed)
                profile.premium_ci95 = [round(lo, 4), round(hi, 4)]
        profiles.append(profile)
    return profiles


def tokens_per_word(tokenizer: Tokenizer, texts: list[str], percentile: float = 95.0) -> float:
    """Per-document tokens per word at `percentile` (used by `tune --context-words`)."""
    texts = list(texts)
    if not texts:
        raise TrdeployError("No texts to measure tokens per word on.", hint="Pass at least one Turkish text.")
    tokens = tokenizer.count_batch(texts)
    words = [count_words(t) for t in texts]
    return per_document_tokens_per_word(tokens, words, percentile)
