"""Tokenizers behind one small interface: `load_tokenizer(spec)` -> `Tokenizer`.

A spec is one of:
- ``llama3`` / ``llama4``: Meta's tokenizers as shipped inside the `llama-models` package (no network);
- a local folder holding ``tokenizer.json`` (a Hugging Face fast tokenizer), or ``tokenizer_config.json``
  with a slow tokenizer (converted through `transformers` when it is installed), or a tiktoken
  ``tokenizer.model`` (Meta's ``original/`` layout);
- a tiktoken BPE file (``<base64 token> <rank>`` a line) or a ``tokenizer.json`` file;
- a hub model id (``org/name`` or ``org/name@revision``), downloaded with huggingface-hub, which honours
  HF_TOKEN, HF_HUB_OFFLINE and the local cache.

Counts never include special tokens (no BOS/EOS) and equal the tokenizer's own encode exactly:
llama_models' ``Tokenizer.encode(bos=False, eos=False)`` for tiktoken files, and
``tokenizers.Tokenizer.encode(add_special_tokens=False)`` for Hugging Face tokenizers.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from itertools import chain
from pathlib import Path
from threading import Lock

from trdeploy.errors import TrdeployError
from trdeploy.hub import hub_error, is_hub_id, looks_like_path, split_revision

# llama_models splits text before tiktoken sees it (tiktoken can panic on very long runs); counts of
# long documents must follow the same split to equal `Tokenizer.encode` exactly.
TIKTOKEN_MAX_ENCODE_CHARS = 400_000
MAX_NO_WHITESPACES_CHARS = 25_000

# What a hub snapshot needs for the tokenizer alone (never the weights).
HUB_TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
]

BUILTIN = {"llama3": "llama3", "llama-3": "llama3", "llama4": "llama4", "llama-4": "llama4"}
SPEC_HINT = (
    "Use llama3, llama4, a folder with tokenizer.json, a tiktoken BPE file, "
    "or a hub model id such as meta-llama/Meta-Llama-3-8B-Instruct."
)


# Encoded once when a user's tokenizer loads: Turkish letters, digits, punctuation, an emoji.
PROBE_TEXT = "Merhaba dünya! Çağrı 42 şiir ığdır ÖÜ 🙂"


def worker_threads() -> int:
    """Threads for batch tokenization: TRDEPLOY_THREADS, else the CPUs this process may use (at most 16)."""
    env = os.environ.get("TRDEPLOY_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError as exc:
            raise TrdeployError(f"TRDEPLOY_THREADS={env!r} is not a number.", hint="Set it to a thread count, e.g. 4.") from exc
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


_pool_lock = Lock()
_pool: ThreadPoolExecutor | None = None


def _thread_pool() -> ThreadPoolExecutor:
    global _pool  # noqa: PLW0603 - one pool per process, made on first use
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=worker_threads(), thread_name_prefix="trdeploy-tok")
        return _pool


def _chunks(texts: Sequence[str], parts: int) -> list[Sequence[str]]:
    size = max(1, -(-len(texts) // parts))
    return [texts[i : i + size] for i in range(0, len(texts), size)]


class Tokenizer(ABC):
    """A tokenizer as the profile sees it: names, batch encode and batch count, no special tokens."""

    name: str
    kind: str  # "tiktoken" or "huggingface"
    source: str  # where it was loaded from (a path or hub id)
    parallel_batches = False  # True when one count_batch call already uses every core

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens, exactly as the tokenizer's own encode."""

    @abstractmethod
    def count_batch(self, texts: list[str]) -> list[int]:
        """Token counts of each text; equal to `len` of `encode_batch`, computed on the fast path."""

    def count_chunk(self, texts: list[str]) -> list[int]:
        """Like `count_batch`, on the calling thread only (for callers that run their own workers)."""
        return self.count_batch(texts)

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes a token stands for (a token may hold part of a multi-byte character)."""

    def pieces(self, text: str) -> list[str]:
        """The text as the tokenizer splits it, one readable string per token."""
        return [self.token_bytes(t).decode("utf-8", errors="backslashreplace") for t in self.encode_batch([text])[0]]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} from {self.source}>"


class TiktokenTokenizer(Tokenizer):
    """A tiktoken BPE (Llama-3, Llama-4 or a file in their format), encoded like llama_models does."""

    kind = "tiktoken"

    def __init__(self, name: str, source: str, encoding, pattern_name: str) -> None:
        self.name = name
        self.source = source
        self.encoding = encoding
        self.pattern_name = pattern_name

    def _encode_long(self, text: str) -> list[int]:
        # Same slicing as llama_models' Tokenizer.encode, so long documents count exactly the same.
        from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

        encode = self.encoding.encode_ordinary
        out: list[int] = []
        for i in range(0, len(text), TIKTOKEN_MAX_ENCODE_CHARS):
            for sub in MetaTokenizer._split_whitespaces_or_nonwhitespaces(
                text[i : i + TIKTOKEN_MAX_ENCODE_CHARS], MAX_NO_WHITESPACES_CHARS
            ):
                out.extend(encode(sub))
        return out

    def _encode_chunk(self, texts: Sequence[str]) -> list[list[int]]:
        encode = self.encoding.encode_ordinary
        if max(map(len, texts), default=0) <= MAX_NO_WHITESPACES_CHARS:
            return [encode(t) for t in texts]
        return [encode(t) if len(t) <= MAX_NO_WHITESPACES_CHARS else self._encode_long(t) for t in texts]

    def count_chunk(self, texts: Sequence[str]) -> list[int]:
        encode = self.encoding.encode_ordinary
        if max(map(len, texts), default=0) <= MAX_NO_WHITESPACES_CHARS:
            return [len(encode(t)) for t in texts]
        return [len(encode(t)) if len(t) <= MAX_NO_WHITESPACES_CHARS else len(self._encode_long(t)) for t in texts]

    def _fan_out(self, fn: Callable[[Sequence[str]], list], texts: list[str]) -> list:
        threads = worker_threads()
        # tiktoken releases the GIL while encoding: a few chunks per thread keeps every core busy
        # without a future per document (which is what makes tiktoken's own encode_batch slow).
        if threads == 1 or len(texts) < 64:
            return fn(texts)
        return list(chain.from_iterable(_thread_pool().map(fn, _chunks(texts, threads * 2))))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._fan_out(self._encode_chunk, texts)

    def count_batch(self, texts: list[str]) -> list[int]:
        return self._fan_out(self.count_chunk, texts)

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token_id)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2 byte-level alphabet: each byte is shown as one printable character in tokenizer.json.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class HFTokenizer(Tokenizer):
    """A Hugging Face fast tokenizer (tokenizer.json) through the `tokenizers` library."""

    kind = "huggingface"
    parallel_batches = True  # encode_batch runs in Rust on a Rayon thread pool, without the GIL

    def __init__(self, name: str, source: str, backend) -> None:
        self.name = name
        self.source = source
        # tokenizer.json may carry truncation or padding settings; counting needs neither.
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        decoder = backend.decoder
        self._byte_level = decoder is not None and b'"ByteLevel"' in decoder.__getstate__()

    def _encode(self, texts: list[str]):
        if not texts:
            return []
        fast = getattr(self.backend, "encode_batch_fast", None)  # tokenizers >= 0.20: no offsets kept
        try:
            if fast is not None:
                return fast(texts, add_special_tokens=False)
            return self.backend.encode_batch(texts, add_special_tokens=False)
        except Exception as exc:  # the Rust side raises a plain Exception (e.g. a WordLevel without its unk token)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TrdeployError(f"The tokenizer {self.source} failed to encode text: {first}.", hint="Fix its tokenizer.json, or pass another tokenizer.") from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._encode(texts)]

    def count_batch(self, texts: list[str]) -> list[int]:
        return [len(e) for e in self._encode(texts)]

    def token_bytes(self, token_id: int) -> bytes:
        token = self.backend.id_to_token(token_id)
        if token is None:
            return b""
        if self._byte_level:
            decoder = _byte_decoder()
            if all(ch in decoder for ch in token):
                return bytes(decoder[ch] for ch in token)
        match = _BYTE_FALLBACK.match(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace("▁", " ").encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Loading


def _llama_models_dir() -> Path:
    import llama_models

    return Path(llama_models.__file__).resolve().parent


def builtin_model_path(which: str) -> Path:
    return _llama_models_dir() / which / "tokenizer.model"


@lru_cache(maxsize=4)
def _builtin(which: str) -> TiktokenTokenizer:
    if which == "llama3":
        from llama_models.llama3.tokenizer import Tokenizer as Meta3

        meta = Meta3.get_instance()
    else:
        from llama_models.llama4.tokenizer import Tokenizer as Meta4

        meta = Meta4.get_instance()
    return TiktokenTokenizer(which, f"llama-models {_llama_models_version()} {which}/tokenizer.model", meta.model, which)


def _llama_models_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-models")
    except PackageNotFoundError:  # pragma: no cover
        return "?"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_tiktoken_file(path: Path) -> bool:
    """True when the file starts like a tiktoken BPE file (`<base64> <rank>`)."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(4096).strip()
    except OSError:
        return False
    parts = first.split()
    if len(parts) != 2 or not parts[1].isdigit():
        return False
    try:
        base64.b64decode(parts[0], validate=True)
    except ValueError:
        return False
    return True


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    if len(parts) != 2:
                        raise ValueError
                    token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
                    if not 0 <= rank < 2**32:  # tiktoken keeps ranks as u32
                        raise ValueError
                    if token in ranks:
                        raise TrdeployError(f"{path} line {line_no} repeats a token already ranked {ranks[token]}.", hint="Each token appears once in a tiktoken BPE file.")
                    ranks[token] = rank
                except ValueError as exc:
                    raise TrdeployError(
                        f"{path} line {line_no} is not '<base64 token> <rank>': it is not a tiktoken BPE file.",
                        hint="Pass a tiktoken tokenizer.model, or the folder holding tokenizer.json.",
                    ) from exc
    except UnicodeDecodeError as exc:
        raise TrdeployError(
            f"{path} is not a tiktoken BPE file (it is binary; a SentencePiece model?).",
            hint="Pass the folder holding tokenizer.json (a fast tokenizer) instead.",
        ) from exc
    if not ranks:
        raise TrdeployError(f"{path} is empty.", hint="Pass a tiktoken BPE file with one '<base64 token> <rank>' a line.")
    # tiktoken's Rust core panics (not raises) on either: duplicate ranks at load, a missing byte at encode.
    if len(set(ranks.values())) != len(ranks):
        raise TrdeployError(f"{path} gives two tokens the same rank.", hint="Each rank appears once in a tiktoken BPE file.")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TrdeployError(
            f"{path} lacks {len(missing)} of the 256 single-byte tokens (e.g. 0x{missing[0]:02x}); byte-level BPE cannot encode text without them.",
            hint="Pass a complete tiktoken BPE file (Llama-3's tokenizer.model has all 256).",
        )
    return ranks


def _is_panic(exc: BaseException) -> bool:
    # pyo3's PanicException derives from BaseException, so `except Exception` lets it through.
    return type(exc).__name__ == "PanicException"


def _tiktoken_from_file(path: Path, name: str | None = None) -> TiktokenTokenizer:
    import tiktoken

    name = name or path.name
    digest = _sha256(path)
    for which in ("llama3", "llama4"):
        if digest == _sha256_cached(str(builtin_model_path(which))):
            builtin = _builtin(which)
            return TiktokenTokenizer(name, str(path), builtin.encoding, which)
    ranks = _read_tiktoken_ranks(path)
    # Llama-4's vocabulary has 200,000 ranks; every other tiktoken file is read with the Llama-3
    # pre-tokenizer pattern and special tokens, the family this tool is about.
    if len(ranks) == 200_000:
        from llama_models.llama4.tokenizer import BASIC_SPECIAL_TOKENS, LLAMA4_SPECIAL_TOKENS
        from llama_models.llama4.tokenizer import Tokenizer as Meta4

        pattern, pattern_name = Meta4.O200K_PATTERN, "llama4"
        specials = BASIC_SPECIAL_TOKENS + LLAMA4_SPECIAL_TOKENS
        specials += [f"<|reserved_special_token_{i}|>" for i in range(Meta4.num_reserved_special_tokens - len(specials))]
    else:
        from llama_models.llama3.tokenizer import Tokenizer as Meta3

        pattern, pattern_name = Meta3.pat_str, "llama3"
        specials = [f"<|reserved_special_token_{i}|>" for i in range(Meta3.num_reserved_special_tokens)]
    base = max(ranks.values()) + 1
    try:
        encoding = tiktoken.Encoding(
            name=name,
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens={tok: base + i for i, tok in enumerate(specials)},
        )
        encoding.encode_ordinary(PROBE_TEXT)  # fail here, in one line, rather than mid-corpus
    except (ValueError, OverflowError) as exc:
        raise TrdeployError(f"{path} is not a usable tiktoken BPE file: {exc}", hint="Check the file, or pass another tokenizer.") from exc
    except BaseException as exc:
        if not _is_panic(exc):
            raise
        first = str(exc).splitlines()[0] if str(exc) else "panic"
        raise TrdeployError(f"{path} is not a usable tiktoken BPE file (tiktoken: {first}).", hint="Check the file, or pass another tokenizer.") from None
    return TiktokenTokenizer(name, str(path), encoding, pattern_name)


@lru_cache(maxsize=8)
def _sha256_cached(path: str) -> str:
    return _sha256(Path(path))


def _hf_from_json(path: Path, name: str, source: str) -> HFTokenizer:
    from tokenizers import Tokenizer as Backend

    try:
        backend = Backend.from_file(str(path))
    except Exception as exc:  # the Rust side raises a plain Exception for any malformed file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrdeployError(f"{path} is not a valid tokenizer.json: {first}.", hint="Re-save it with tokenizer.save_pretrained().") from exc
    tokenizer = HFTokenizer(name, source, backend)
    tokenizer.count_batch([PROBE_TEXT])  # one that loads but cannot encode fails here, in one line
    return tokenizer


def _from_folder(folder: Path, name: str, source: str) -> Tokenizer:
    if (folder / "tokenizer.json").is_file():
        return _hf_from_json(folder / "tokenizer.json", name, source)
    for candidate in (folder / "tokenizer.model", folder / "original" / "tokenizer.model"):
        if candidate.is_file() and is_tiktoken_file(candidate):
            tok = _tiktoken_from_file(candidate, name)
            tok.source = source
            return tok
    if (folder / "tokenizer_config.json").is_file():
        # A slow-only tokenizer (SentencePiece or vocab files): transformers converts it to a fast one.
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise TrdeployError(
                f"{folder} has tokenizer_config.json but no tokenizer.json.",
                hint="Install transformers (pip install 'trdeploy[quantize]') to convert it, or save a fast tokenizer there.",
            ) from exc
        try:
            auto = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        except Exception as exc:  # transformers raises many types for a broken folder
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise TrdeployError(f"transformers could not load the tokenizer in {folder}: {first}", hint="Check the folder's tokenizer files.") from exc
        backend = getattr(auto, "backend_tokenizer", None)
        if backend is None:
            raise TrdeployError(f"{folder} holds a tokenizer with no fast version.", hint="Convert it to tokenizer.json first.")
        return HFTokenizer(name, source, backend)
    raise TrdeployError(
        f"{folder} holds no tokenizer (no tokenizer.json, tokenizer_config.json or tiktoken tokenizer.model).",
        hint="Pass the model folder that holds tokenizer.json.",
    )


def _from_hub(spec: str) -> Tokenizer:
    from huggingface_hub import snapshot_download

    repo_id, revision = split_revision(spec)
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_TOKENIZER_FILES)
    except Exception as exc:  # mapped to one line: every hub failure is something the user can fix
        raise hub_error(repo_id, exc, kind="tokenizer", instead="pass a local folder with tokenizer.json") from exc
    return _from_folder(Path(folder), spec, f"hub:{spec}")


_FILE_SUFFIXES = {".model", ".json", ".tiktoken", ".bpe", ".txt"}


def load_tokenizer(spec: str) -> Tokenizer:
    """Load a tokenizer from a spec (see the module docstring). Bad specs raise TrdeployError."""
    spec = spec.strip()
    if not spec:
        raise TrdeployError("The tokenizer name is empty.", hint=SPEC_HINT)
    builtin = BUILTIN.get(spec.lower())
    if builtin:
        return _builtin(builtin)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_folder(path, path.resolve().name, str(path))
    if path.is_file():
        if path.stat().st_size == 0:
            raise TrdeployError(f"The tokenizer file {path} is empty.", hint=SPEC_HINT)
        if path.suffix.lower() == ".json":
            return _hf_from_json(path, path.name, str(path))
        if is_tiktoken_file(path):
            return _tiktoken_from_file(path)
        raise TrdeployError(f"{path} is neither a tiktoken BPE file nor a tokenizer.json.", hint=SPEC_HINT)
    if is_hub_id(spec, file_suffixes=_FILE_SUFFIXES):
        return _from_hub(spec)
    if looks_like_path(spec, _FILE_SUFFIXES):
        raise TrdeployError(f"The tokenizer path {spec} does not exist.", hint=SPEC_HINT)
    raise TrdeployError(f"Unknown tokenizer '{spec}'.", hint=SPEC_HINT)
