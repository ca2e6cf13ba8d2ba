#!/usr/bin/env python3
"""Random-weight Llama-3 checkpoint in the AutoAWQ GEMM layout (int4, group 128, zero points, fp16), sharded.

    python3 scripts/device/make_llama3_awq.py OUT [--shape 8b|70b]

Run on the GPU machine (random numbers are drawn on the GPU). Same layout as
scripts/device/vllm/make_llama3_8b_awq.py, with the Llama-3-70B shapes as an option and shards of
about 1.8 GB (one 40 GB safetensors file would need its size again in host memory to write). Weights are
noise: for memory and speed measurements only (vLLM serves them with its Machete kernel on Hopper).
On the lent H200 the 70B shape (39.77 GB, 21 shards) took 48 s.
"""

import argparse
import json
import os

import torch
from safetensors.torch import save_file

# hidden, intermediate, layers, attention heads, KV heads
SHAPES = {"8b": (4096, 14336, 32, 32, 8), "70b": (8192, 28672, 80, 64, 8)}
VOCAB, GROUP, HEAD_DIM = 128256, 128, 128


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", choices=SHAPES, default="8b")
    a = ap.parse_args()
    hidden, inter, layers, heads, kv_heads = SHAPES[a.shape]
    os.makedirs(a.out, exist_ok=True)
    quant = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm", "modules_to_not_convert": None}
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": VOCAB,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
        "torch_dtype": "float16", "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "head_dim": HEAD_DIM,
        "quantization_config": quant,
    }  # fmt: skip
    with open(f"{a.out}/config.json", "w") as f:
        json.dump(cfg, f, indent=1)
    with open(f"{a.out}/generation_config.json", "w") as f:
        json.dump({"bos_token_id": 128000, "eos_token_id": 128001}, f)
    g = torch.Generator(device="cuda").manual_seed(0)
    index: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    names: list[str] = []
    total = 0

    def flush() -> None:
        if shard:
            fn = f"model-{len(names) + 1:05d}.safetensors"
            save_file(shard, f"{a.out}/{fn}", metadata={"format": "pt"})
            names.append(fn)
            index.update(dict.fromkeys(shard, fn))
            shard.clear()

    def put(key: str, t: torch.Tensor) -> None:
        nonlocal total
        shard[key] = t
        total += t.numel() * t.element_size()

    def half(*s: int) -> torch.Tensor:
        return (torch.randn(*s, device="cuda", generator=g) * 0.02).half().cpu()

    def packed(*s: int) -> torch.Tensor:
        return torch.randint(-(2**31), 2**31 - 1, s, device="cuda", generator=g, dtype=torch.int64).to(torch.int32).cpu()

    def linear(prefix: str, out_features: int, in_features: int) -> None:
        put(prefix + ".qweight", packed(in_features, out_features // 8))
        put(prefix + ".qzeros", packed(in_features // GROUP, out_features // 8))
        put(prefix + ".scales", (torch.rand(in_features // GROUP, out_features, device="cuda", generator=g) * 0.004 + 0.001).half().cpu())

    put("model.embed_tokens.weight", half(VOCAB, hidden))
    put("lm_head.weight", half(VOCAB, hidden))
    put("model.norm.weight", torch.ones(hidden, dtype=torch.half))
    flush()
    for layer in range(layers):
        p = f"model.layers.{layer}."
        linear(p + "self_attn.q_proj", heads * HEAD_DIM, hidden)
        linear(p + "self_attn.k_proj", kv_heads * HEAD_DIM, hidden)
        linear(p + "self_attn.v_proj", kv_heads * HEAD_DIM, hidden)
        linear(p + "self_attn.o_proj", hidden, heads * HEAD_DIM)
        linear(p + "mlp.gate_proj", inter, hidden)
        linear(p + "mlp.up_proj", inter, hidden)
        linear(p + "mlp.down_proj", hidden, inter)
        put(p + "input_layernorm.weight", torch.ones(hidden, dtype=torch.half))
        put(p + "post_attention_layernorm.weight", torch.ones(hidden, dtype=torch.half))
        if (layer + 1) % 4 == 0:
            flush()
    flush()
    with open(f"{a.out}/model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": index}, f)
    print("shape", a.shape, "bytes", total, "shards", len(names))


if __name__ == "__main__":
    main()
