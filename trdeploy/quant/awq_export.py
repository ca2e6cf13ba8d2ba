"""`--format awq`: the classic AutoAWQ GEMM layout, written from the quantized values llm-compressor computed, and read back for the check."""

from __future__ import annotations

import contextlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from trdeploy.quant.checks import GIB, GROUP_SIZE

NUM_BITS = 4


#
# AutoAWQ is deprecated, so the layout is written here from the quantized values llm-compressor
# computed (the same integers the compressed-tensors checkpoint holds), per AutoAWQ's GEMM spec:
#   qweight [in, out/8] int32, qzeros [in/group, out/8] int32: eight unsigned 4-bit values per
#   int32, nibble i holding column AWQ_PACK_ORDER[i] of each block of eight;
#   scales  [in/group, out] float16;  weight = (q - zero) * scale.
# compressed-tensors stores signed int4 (q and zero point in [-8, 7]); AWQ's unsigned values are
# those plus 8, so (q - zero) and the dequantized weight are unchanged.
# The written folder is checked by reloading it through auto-round's `dequantize_gemm` (a
# maintained copy of AutoAWQ's own unpacking), independent of the packing code below.

AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_SHARD_BYTES = 4 * GIB


def _quantized_linear(module: Any) -> bool:
    import torch

    scheme = getattr(module, "quantization_scheme", None)
    return isinstance(module, torch.nn.Linear) and scheme is not None and getattr(scheme, "weights", None) is not None


def awq_quantization_config() -> dict[str, Any]:
    """config.json's quantization_config for the AutoAWQ GEMM layout (what vLLM's awq reader expects)."""
    return {"quant_method": "awq", "bits": NUM_BITS, "group_size": GROUP_SIZE, "zero_point": True, "version": "gemm", "modules_to_not_convert": None}


def pack_awq(values: Any) -> Any:
    """Pack unsigned 4-bit values [rows, cols] into int32 [rows, cols/8] in AutoAWQ's nibble order."""
    import torch

    rows, cols = values.shape
    if cols % 8:
        raise ValueError(f"AWQ packing needs a multiple of 8 columns, got {cols}")
    if values.min() < 0 or values.max() > 15:
        raise ValueError("AWQ packing needs values in [0, 15]")
    blocks = values.to(torch.int64).reshape(rows, cols // 8, 8)[:, :, list(AWQ_PACK_ORDER)]
    shifts = torch.arange(8, dtype=torch.int64, device=values.device) * 4
    packed = (blocks << shifts).sum(dim=-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # the same 32 bits as int32
    return packed.to(torch.int32)


def awq_gemm_tensors(module: Any) -> dict[str, Any]:
    """qweight / qzeros / scales (and bias) of one quantized Linear, on the CPU."""
    import torch
    from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize

    args = module.quantization_scheme.weights
    weight = module.weight.detach()
    scale = module.weight_scale.detach()
    zero = module.weight_zero_point.detach()
    q = ct_quantize(weight.float(), scale.float(), zero, args, dtype=torch.int8)  # signed int4 in [-8, 7]
    offset = 2 ** (NUM_BITS - 1)
    out = {
        "qweight": pack_awq((q.to(torch.int16) + offset).t().contiguous()).cpu(),
        "qzeros": pack_awq((zero.to(torch.int16) + offset).t().contiguous()).cpu(),
        "scales": scale.t().contiguous().to(torch.float16).cpu(),
    }
    if getattr(module, "bias", None) is not None:
        out["bias"] = module.bias.detach().to(torch.float16).cpu()
    return out


def save_awq_gemm(model: Any, folder: Path) -> None:
    """Write `model` (quantized in memory by llm-compressor) in the AutoAWQ GEMM layout, float16."""
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    quantized_prefixes = []
    for name, module in model.named_modules():
        if _quantized_linear(module):
            quantized_prefixes.append(name)
            for key, value in awq_gemm_tensors(module).items():
                tensors[f"{name}.{key}"] = value
            continue
        if any(name == p or name.startswith(p + ".") for p in quantized_prefixes):
            continue
        for key, param in module._parameters.items():
            if param is not None:
                tensors[f"{name}.{key}" if name else key] = param.detach().to(torch.float16).cpu()
        for key, buf in module._buffers.items():
            if buf is not None and key not in module._non_persistent_buffers_set:
                tensors[f"{name}.{key}" if name else key] = buf.detach().cpu()
    if getattr(model.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)

    shards: list[dict[str, Any]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > AWQ_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float16"
    config["quantization_config"] = awq_quantization_config()
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)


def load_awq_gemm_reference(folder: Path, config_file: Path) -> Any:
    """Rebuild a dense model from an AutoAWQ GEMM folder with auto-round's reference unpacking."""
    import torch
    from auto_round.export.export_to_awq.utils import dequantize_gemm
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads(config_file.read_text())
    qcfg = raw.pop("quantization_config", {})
    if qcfg.get("quant_method") != "awq" or qcfg.get("version") != "gemm":
        raise RuntimeError(f"config.json is not the AutoAWQ GEMM layout: {qcfg}")
    config = AutoConfig.for_model(**{k: v for k, v in raw.items() if k != "model_type"}, model_type=raw["model_type"])
    state: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(file)))
    for key in [k for k in state if k.endswith(".qweight")]:
        prefix = key[: -len(".qweight")]
        weight = dequantize_gemm(state.pop(key), state.pop(prefix + ".qzeros"), state.pop(prefix + ".scales").float(), qcfg["bits"], qcfg["group_size"])
        state[prefix + ".weight"] = weight.t().contiguous()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"AWQ checkpoint does not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("trdeploy", "llmcompressor", "compressed-tensors", "transformers", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name.replace("-", "_")] = metadata.version(name)
    return out
