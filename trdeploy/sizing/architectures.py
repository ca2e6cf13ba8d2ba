"""Model architectures: the Llama-3 family presets, local checkpoint folders and hub ids.

`tune` needs shapes, not weights: layers, hidden and intermediate sizes, attention and KV heads, head
size, vocabulary, whether the embedding is tied, and how the checkpoint is quantized. Presets carry the
real config.json values of Meta's releases (Llama 3, 3.1, 3.2, 3.3; the sizes each release has:
3 -> 8B, 70B; 3.1 -> 8B, 70B, 405B; 3.2 -> 1B, 3B; 3.3 -> 70B), which Turkish fine-tunes share.
A local folder is read from its config.json (and quantization config) plus the safetensors headers;
a hub id is read from config.json, the quantization config and model.safetensors.index.json only, through
huggingface_hub (so HF_TOKEN, HF_HOME and HF_HUB_OFFLINE apply); no weights are downloaded.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trdeploy.errors import TrdeployError
from trdeploy.hub import hub_error, is_hub_id, looks_like_path, split_revision
from trdeploy.inputs import loads_json, read_limited

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
VOCAB_PADDING = 64  # vLLM pads vocab-parallel embeddings and lm_head to a multiple of 64 rows


@dataclass(frozen=True)
class QuantConfig:
    """How the checkpoint's linear layers are stored. `kind` is trdeploy's category: awq (4-bit weights,
    any int4 group format vLLM runs with Marlin/Machete) or fp8."""

    kind: str  # "awq" | "fp8"
    method: str  # quant_method as the checkpoint says it: awq, compressed-tensors, gptq, fp8
    bits: int = 4
    group_size: int = 128
    zero_point: bool = True


@dataclass(frozen=True)
class Architecture:
    name: str
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"
    hf_id: str | None = None
    architecture: str = "LlamaForCausalLM"

    # Parameter counts (unsharded). Llama has no biases.
    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def linear_params_per_layer(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        attn = h * self.q_size + 2 * h * self.kv_size + self.q_size * h
        mlp = 3 * h * i
        return attn + mlp

    @property
    def linear_params(self) -> int:
        return self.linear_params_per_layer * self.num_hidden_layers

    @property
    def norm_params(self) -> int:
        return (2 * self.num_hidden_layers + 1) * self.hidden_size

    @property
    def num_parameters(self) -> int:
        return self.embedding_params + self.lm_head_params + self.linear_params + self.norm_params

    @property
    def non_embedding_params(self) -> int:
        """Parameters a token passes through as matrix products (the prefill FLOPs are 2x this per token)."""
        return self.linear_params + self.norm_params


@dataclass(frozen=True)
class ResolvedModel:
    """A model `tune` can size: its architecture, how it is stored, and where it came from."""

    id: str  # what `vllm serve` gets: a hub id or a local path
    arch: Architecture
    source: str  # preset | local | hub
    quant: QuantConfig | None = None
    checkpoint_bytes: int | None = None  # safetensors total, when known
    checkpoint_params: int | None = None  # from the safetensors headers of an unquantized checkpoint
    tokenizer: str = "llama3"  # spec for trdeploy.text.tokenizers.load_tokenizer
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_parameters(self) -> int:
        return self.checkpoint_params or self.arch.num_parameters


def _arch(name, hf_id, layers, hidden, inter, heads, kv, vocab, max_pos, tied=False, head_dim=None) -> Architecture:
    return Architecture(
        name=name,
        hf_id=hf_id,
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim or hidden // heads,
        vocab_size=vocab,
        max_position_embeddings=max_pos,
        tie_word_embeddings=tied,
    )


# Values from each release's config.json on the hub.
PRESETS: dict[str, Architecture] = {
    a.name: a
    for a in (
        _arch("llama-3-8b", "meta-llama/Meta-Llama-3-8B-Instruct", 32, 4096, 14336, 32, 8, 128256, 8192),
        _arch("llama-3-70b", "meta-llama/Meta-Llama-3-70B-Instruct", 80, 8192, 28672, 64, 8, 128256, 8192),
        _arch("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", 32, 4096, 14336, 32, 8, 128256, 131072),
        _arch("llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct", 80, 8192, 28672, 64, 8, 128256, 131072),
        _arch("llama-3.1-405b", "meta-llama/Llama-3.1-405B-Instruct", 126, 16384, 53248, 128, 8, 128256, 131072),
        _arch("llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", 16, 2048, 8192, 32, 8, 128256, 131072, tied=True, head_dim=64),
        _arch("llama-3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", 28, 3072, 8192, 24, 8, 128256, 131072, tied=True, head_dim=128),
        _arch("llama-3.3-70b", "meta-llama/Llama-3.3-70B-Instruct", 80, 8192, 28672, 64, 8, 128256, 131072),
    )
}


def _preset_key(spec: str) -> str | None:
    key = spec.strip().lower().replace("_", "-")
    key = re.sub(r"^(meta-)?llama-?3", "llama-3", key)
    key = re.sub(r"-instruct$", "", key)
    return key if key in PRESETS else None


# ---------------------------------------------------------------------------------------------
# config.json -> Architecture


def _require(config: dict[str, Any], key: str, where: str) -> Any:
    if key not in config:
        raise TrdeployError(f"{where} has no '{key}'.", hint="Point --model at a Llama checkpoint's config.json folder.")
    return config[key]


def architecture_from_config(config: dict[str, Any], *, name: str, where: str) -> Architecture:
    archs = config.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise TrdeployError(
            f"{where} is a {', '.join(archs) or config.get('model_type', 'unknown')} model; tune sizes Llama models only.",
            hint=f"Use a LlamaForCausalLM checkpoint or a preset ({', '.join(PRESETS)}).",
        )
    try:
        heads = int(_require(config, "num_attention_heads", where))
        hidden = int(_require(config, "hidden_size", where))
        if heads <= 0:  # checked here: head_dim below divides by it
            raise TrdeployError(f"{where}: num_attention_heads is {heads}; a Llama model has at least one.", hint="Check the checkpoint's config.json.")
        arch = Architecture(
            name=name,
            num_hidden_layers=int(_require(config, "num_hidden_layers", where)),
            hidden_size=hidden,
            intermediate_size=int(_require(config, "intermediate_size", where)),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab_size=int(_require(config, "vocab_size", where)),
            max_position_embeddings=int(_require(config, "max_position_embeddings", where)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
            architecture=next(a for a in archs if a in SUPPORTED_ARCHITECTURES),
        )
    except (TypeError, ValueError, ArithmeticError) as exc:  # int(None), int("x"), int(inf)
        raise TrdeployError(f"{where} has a malformed value ({exc}).", hint="Check the checkpoint's config.json.") from None
    if min(arch.num_hidden_layers, arch.hidden_size, arch.intermediate_size, arch.num_attention_heads,
           arch.num_key_value_heads, arch.head_dim, arch.vocab_size, arch.max_position_embeddings) <= 0:
        raise TrdeployError(f"{where} has a size that is zero or negative.", hint="Check the checkpoint's config.json.")
    if arch.num_attention_heads % arch.num_key_value_heads:
        raise TrdeployError(f"{where}: num_attention_heads is not a multiple of num_key_value_heads.", hint="Check the checkpoint's config.json.")
    return arch


def quant_from_config(qc: dict[str, Any] | None, where: str) -> QuantConfig | None:
    """trdeploy's view of a checkpoint's quantization config (config.json quantization_config)."""
    if not qc:
        return None
    if not isinstance(qc, dict):
        raise TrdeployError(f"{where}: the quantization config is a {type(qc).__name__}, not an object.", hint="Check the checkpoint's quantization config.")
    try:
        return _quant_from_config(qc, where)
    except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:  # int("x"), a list where an object belongs
        raise TrdeployError(f"{where}: the quantization config has a malformed value ({exc}).", hint="Check the checkpoint's quantization config.") from None


def _quant_from_config(qc: dict[str, Any], where: str) -> QuantConfig | None:
    method = str(qc.get("quant_method") or qc.get("quant_type") or "").lower()
    if method in ("awq", "awq_marlin", "gptq", "gptq_marlin"):
        bits = int(qc.get("bits") or qc.get("w_bit") or 4)
        group = int(qc.get("group_size") or qc.get("q_group_size") or 128)
        zp = bool(qc.get("zero_point", method.startswith("awq")))
        if method.startswith("gptq"):
            zp = not bool(qc.get("sym", True))
        if bits != 4:
            raise TrdeployError(f"{where}: {method} with {bits} bits is not supported.", hint="tune sizes 4-bit AWQ/GPTQ and fp8 checkpoints.")
        return QuantConfig(kind="awq", method=method, bits=bits, group_size=group, zero_point=zp)
    if method == "fp8":
        return QuantConfig(kind="fp8", method="fp8", bits=8, group_size=0, zero_point=False)
    if method == "compressed-tensors":
        groups = qc.get("config_groups") or {}
        weights = [g.get("weights") or {} for g in groups.values() if isinstance(g, dict)]
        if not weights:
            raise TrdeployError(f"{where}: compressed-tensors config has no config_groups.weights.", hint="Check the checkpoint's quantization config.")
        w = weights[0]
        bits = int(w.get("num_bits") or 0)
        wtype = str(w.get("type") or "int")
        if bits == 8 and wtype == "float":
            return QuantConfig(kind="fp8", method=method, bits=8, group_size=0, zero_point=False)
        if bits == 4 and wtype == "int":
            return QuantConfig(
                kind="awq",
                method=method,
                bits=4,
                group_size=int(w.get("group_size") or 128),
                zero_point=not bool(w.get("symmetric", True)),
            )
        raise TrdeployError(f"{where}: compressed-tensors {wtype}{bits} weights are not supported.", hint="tune sizes W4A16 (int4) and fp8 checkpoints.")
    raise TrdeployError(f"{where}: quantization method '{method or '?'}' is not supported.", hint="tune sizes AWQ/GPTQ int4, compressed-tensors W4A16 and fp8 checkpoints.")


# ---------------------------------------------------------------------------------------------
# Local folders


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        text = read_limited(path, limit=64 * 1024 * 1024, what=what, hint=f"Check the {what}.")
    except OSError as exc:
        raise TrdeployError(f"{path} is not readable ({exc.__class__.__name__}).", hint=f"Check the {what}.") from None
    data = loads_json(text, where=str(path), hint=f"Check the {what}.", max_depth=32)
    if not isinstance(data, dict):
        raise TrdeployError(f"{path} is not a JSON object.", hint=f"Check the {what}.")
    return data


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one .safetensors file (8-byte little-endian length, then JSON)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than its header length")
            (length,) = struct.unpack("<Q", raw)
            if length > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as exc:
        raise TrdeployError(f"{path} is not a safetensors file ({exc}).", hint="Check the checkpoint folder.") from None
    if not isinstance(header, dict):
        raise TrdeployError(f"{path} has a malformed safetensors header.", hint="Check the checkpoint folder.")
    return header


def check_safetensors_file(path: Path) -> None:
    """Refuse a truncated or corrupt .safetensors file from its header and size alone (no tensor
    read): the tensors' data must end exactly where the file does, as the safetensors loader demands."""
    header = safetensors_header(path)
    safetensors_totals([path])  # validates every tensor entry (dtype, shape, offsets) with one-line errors
    ends = [int(info["data_offsets"][1]) for name, info in header.items() if name != "__metadata__" and isinstance(info, dict) and info.get("data_offsets")]
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
    expected = 8 + length + max(ends, default=0)
    size = path.stat().st_size
    if size != expected:
        raise TrdeployError(
            f"{path} is {'truncated' if size < expected else 'longer than its header says'} ({size:,} bytes, its header describes {expected:,}).",
            hint="Re-download or re-save the checkpoint.",
        )


def safetensors_totals(files: list[Path]) -> tuple[int, int, set[str]]:
    """(parameters, bytes, dtypes) over the tensors of these safetensors files, from headers only."""
    params = nbytes = 0
    dtypes: set[str] = set()
    for f in files:
        for name, info in safetensors_header(f).items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            try:
                numel = 1
                for dim in info.get("shape", []):
                    if int(dim) < 0:
                        raise ValueError(f"negative dimension {dim}")
                    numel *= int(dim)
                start, end = info.get("data_offsets", [0, 0])
                if int(end) < int(start):
                    raise ValueError("data_offsets end before they start")
            except (TypeError, ValueError, ArithmeticError) as exc:  # a shape of None, "a", or two offsets missing
                raise TrdeployError(f"{f} has a corrupt safetensors header (tensor {name!r}: {exc}).", hint="Re-download or re-save the checkpoint.") from None
            params += numel
            nbytes += int(end) - int(start)
            dtypes.add(str(info.get("dtype")))
    return params, nbytes, dtypes


def _local_quant(folder: Path, config: dict[str, Any]) -> QuantConfig | None:
    qc = config.get("quantization_config")
    if not qc:
        for fname in ("quantize_config.json", "quant_config.json"):
            if (folder / fname).is_file():
                qc = _read_json(folder / fname, "quantization config")
                qc.setdefault("quant_method", "awq" if "w_bit" in qc or "zero_point" in qc else "gptq")
                break
    return quant_from_config(qc, str(folder))


def _folder_tokenizer(folder: Path, arch: Architecture) -> str:
    if arch.vocab_size == 128256 or not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "original/tokenizer.model")):
        return "llama3"  # every Llama-3 release shares this tokenizer (vocab 128,256)
    return str(folder)


def resolve_local(folder: Path) -> ResolvedModel:
    if not (folder / "config.json").is_file():
        raise TrdeployError(f"{folder} has no config.json.", hint="Point --model at a Hugging Face checkpoint folder, a preset, or a hub id.")
    config = _read_json(folder / "config.json", "checkpoint's config.json")
    arch = architecture_from_config(config, name=folder.name, where=str(folder / "config.json"))
    quant = _local_quant(folder, config)
    files = sorted(folder.glob("*.safetensors"))
    params = nbytes = None
    if files:
        p, b, _ = safetensors_totals(files)
        nbytes = b
        params = p if quant is None else None  # packed int4 tensors do not count parameters
    return ResolvedModel(
        id=str(folder),
        arch=arch,
        source="local",
        quant=quant,
        checkpoint_bytes=nbytes,
        checkpoint_params=params,
        tokenizer=_folder_tokenizer(folder, arch),
    )


# ---------------------------------------------------------------------------------------------
# Hub ids

_INSTEAD = "pass a local folder or use a preset"


def _hub_json(repo_id: str, revision: str | None, filename: str, *, optional: bool) -> dict[str, Any] | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(repo_id, filename, revision=revision)
    except LocalEntryNotFoundError as exc:  # a subclass of EntryNotFoundError: check it first
        if optional:
            return None
        raise hub_error(repo_id, exc, instead=_INSTEAD) from None
    except EntryNotFoundError:
        if optional:
            return None
        raise TrdeployError(f"{repo_id} has no {filename}.", hint="Is it a model repository?") from None
    except Exception as exc:  # network, auth, offline: one line for the user
        if optional and type(exc).__name__ not in ("GatedRepoError", "RepositoryNotFoundError"):
            return None
        raise hub_error(repo_id, exc, instead=_INSTEAD) from None
    return _read_json(Path(path), f"{filename} of {repo_id}")


def resolve_hub(spec: str) -> ResolvedModel:
    repo_id, revision = split_revision(spec)
    config = _hub_json(repo_id, revision, "config.json", optional=False)
    assert config is not None
    arch = architecture_from_config(config, name=repo_id, where=f"{repo_id}/config.json")
    qc = config.get("quantization_config")
    if not qc:
        qc = _hub_json(repo_id, revision, "quantize_config.json", optional=True)
        if qc:
            qc.setdefault("quant_method", "awq" if "w_bit" in qc or "zero_point" in qc else "gptq")
    quant = quant_from_config(qc, repo_id)
    index = _hub_json(repo_id, revision, "model.safetensors.index.json", optional=True)
    nbytes = None
    if index and isinstance(index.get("metadata"), dict) and index["metadata"].get("total_size"):
        nbytes = int(index["metadata"]["total_size"])
    params = None
    if nbytes and quant is None:
        dtype_bytes = 4 if arch.torch_dtype in ("float32",) else 2
        params = nbytes // dtype_bytes
    return ResolvedModel(
        id=spec,
        arch=arch,
        source="hub",
        quant=quant,
        checkpoint_bytes=nbytes,
        checkpoint_params=params,
        tokenizer="llama3" if arch.vocab_size == 128256 else repo_id,
    )


def resolve_model(spec: str) -> ResolvedModel:
    """A preset name, a local checkpoint folder or a hub id -> what `tune` sizes."""
    spec = (spec or "").strip()
    if not spec:
        raise TrdeployError("No model given.", hint=f"Pass --model with a preset ({', '.join(PRESETS)}), a folder or a hub id.")
    key = _preset_key(spec)
    if key:
        arch = PRESETS[key]
        return ResolvedModel(id=arch.hf_id or key, arch=arch, source="preset")
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TrdeployError(f"{path} is a file, not a checkpoint folder.", hint="Point --model at the folder that holds config.json.")
        return resolve_local(path)
    if looks_like_path(spec):
        raise TrdeployError(f"No checkpoint folder at {path}.", hint="Check the path, or use a preset or a hub id.")
    if is_hub_id(spec):
        return resolve_hub(spec)
    raise TrdeployError(f"Unknown model '{spec}'.", hint=f"Use a preset ({', '.join(PRESETS)}), a local folder or a hub id (org/name).")
