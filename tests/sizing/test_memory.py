"""vLLM 0.25 memory accounting: hand-computed cases and the measured H100 start-ups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trdeploy.errors import TrdeployError
from trdeploy.sizing.architectures import PRESETS, Architecture
from trdeploy.sizing.gpus import GiB, MiB, get_gpu
from trdeploy.sizing.memory import (
    activation_breakdown,
    check_tp,
    kv_bytes_per_token,
    kv_cache_tokens_for_blocks,
    kv_heads_per_rank,
    page_size_bytes,
    predict_kv_cache,
    valid_tp_sizes,
    weights_breakdown,
)

MEASUREMENTS = Path(__file__).resolve().parents[1] / "data" / "vllm_measurements.json"
L8, L70, L1 = PRESETS["llama-3-8b"], PRESETS["llama-3-70b"], PRESETS["llama-3.2-1b"]
H100 = get_gpu("h100")


def _points():
    return json.loads(MEASUREMENTS.read_text(encoding="utf-8"))["points"]


# --- KV bytes per token: grouped-query attention, fp8, tensor parallel splits -----------------------


def test_kv_bytes_per_token_uses_grouped_query_attention():
    # 2 (K,V) x 32 layers x 8 KV heads x 128 head_dim x 2 bytes = 131,072 B = 128 KiB, not the 512 KiB that
    # 32 attention heads would give.
    assert kv_bytes_per_token(L8) == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert kv_bytes_per_token(L8) * 4 == 2 * 32 * 32 * 128 * 2  # the popular 512 KiB figure is 4x too big
    assert kv_bytes_per_token(L8, "fp8") == 64 * 1024
    # Llama-3.2-1B: 16 layers, 8 KV heads of 64: 2*16*8*64*2 = 32 KiB.
    assert kv_bytes_per_token(L1) == 32 * 1024
    # 70B: 80 layers: 2*80*8*128*2 = 320 KiB.
    assert kv_bytes_per_token(L70) == 320 * 1024


def test_kv_heads_split_across_tensor_parallel_ranks():
    assert [kv_heads_per_rank(L70, tp) for tp in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert kv_bytes_per_token(L70, "auto", 2) == 2 * 80 * 4 * 128 * 2 == 160 * 1024
    assert kv_bytes_per_token(L70, "auto", 8) == 2 * 80 * 1 * 128 * 2 == 40 * 1024
    assert page_size_bytes(L70, "auto", 4) == 16 * 2 * 2 * 128 * 2  # 16 tokens x K,V x 2 heads x 128 x bf16


def test_kv_heads_replicated_when_tp_exceeds_kv_heads():
    arch = Architecture(name="wide", num_hidden_layers=4, hidden_size=4096, intermediate_size=8192,
                        num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=32000,
                        max_position_embeddings=4096)
    assert valid_tp_sizes(arch) == [1, 2, 4, 8]
    # tp 8 > 4 KV heads: every rank keeps one head (each head on two ranks), so the total KV memory per token
    # across ranks is twice the unsharded model's.
    assert kv_heads_per_rank(arch, 8) == 1
    assert kv_bytes_per_token(arch, "auto", 8) == 2 * 4 * 1 * 128 * 2
    assert 8 * kv_bytes_per_token(arch, "auto", 8) == 2 * kv_bytes_per_token(arch, "auto", 1)
    with pytest.raises(TrdeployError, match="cannot split"):
        check_tp(arch, 3)
    odd = Architecture(name="odd", num_hidden_layers=2, hidden_size=768, intermediate_size=3072,
                       num_attention_heads=12, num_key_value_heads=6, head_dim=64, vocab_size=1000,
                       max_position_embeddings=2048)
    assert 4 not in valid_tp_sizes(odd)  # 6 KV heads do not split over 4 ranks, nor does 4 replicate 6


def test_per_rank_capacity_with_tensor_parallelism():
    one = predict_kv_cache(L70, H100, tp=2, max_model_len=8192, max_num_seqs=64, max_num_batched_tokens=8192, quantization="awq")
    two = predict_kv_cache(L70, H100, tp=4, max_model_len=8192, max_num_seqs=64, max_num_batched_tokens=8192, quantization="awq")
    # Blocks are per rank: page size halves with the KV heads, and the freed weight memory adds blocks.
    assert two.page_size_bytes * 2 == one.page_size_bytes
    assert two.num_blocks == two.available_bytes // two.page_size_bytes // 80
    assert two.kv_cache_tokens > 2 * one.kv_cache_tokens


# --- Weights ------------------------------------------------------------------------------------------


def test_weights_bf16_match_the_checkpoint_and_split_over_ranks():
    parts = weights_breakdown(L8, H100)
    # The random-weight Llama-3-8B made for the calibration printed: params 8030261248 bytes 16060522496.
    assert sum(parts.values()) == 16_060_522_496 == 2 * L8.num_parameters
    two = weights_breakdown(L8, H100, tp=2)
    linear = 32 * (4096 * 4096 * 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    assert two["linear"] == linear // 2 * 2
    assert two["embedding"] == two["lm_head"] == 128256 // 2 * 4096 * 2  # vocab-parallel rows
    assert two["norms"] == parts["norms"] == (2 * 32 + 1) * 4096 * 2  # replicated
    # A vocabulary that is not a multiple of 64 is padded before it is split.
    arch = Architecture(name="v", num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                        num_key_value_heads=4, head_dim=16, vocab_size=32001, max_position_embeddings=512)
    assert weights_breakdown(arch, H100)["embedding"] == 32064 * 64 * 2
    assert weights_breakdown(arch, H100, tp=2)["embedding"] == 16032 * 64 * 2


def test_awq_weights_machete_on_hopper_marlin_elsewhere():
    from trdeploy.sizing.architectures import QuantConfig

    q = QuantConfig(kind="awq", method="awq", bits=4, group_size=128, zero_point=True)
    ada = weights_breakdown(L8, get_gpu("l40s"), quant=q)
    # Marlin keeps the checkpoint's layout: the AutoAWQ random checkpoint printed "bytes 5727854592".
    assert sum(ada.values()) - ada["kernel_workspace"] == 5_727_854_592
    hopper = weights_breakdown(L8, H100, quant=q)
    groups = L8.linear_params // 128
    assert hopper["group_zeros"] == groups * 2 and ada["group_zeros"] == groups // 2
    fp8 = weights_breakdown(L8, H100, quant=QuantConfig(kind="fp8", method="fp8", bits=8, group_size=0, zero_point=False))
    assert fp8["linear"] * 2 == weights_breakdown(L8, H100)["linear"]


# --- Blocks and the logged token count ------------------------------------------------------------------


def test_kv_tokens_are_whole_16_token_blocks():
    assert kv_cache_tokens_for_blocks(28146, 8192) == 450_336  # the calibration log: 28,146 blocks
    # max_model_len not a multiple of 16: vLLM logs int(blocks / ceil(len/16) * len).
    assert kv_cache_tokens_for_blocks(28146, 8001) == int(28146 / 501 * 8001)
    p = predict_kv_cache(L8, H100, max_model_len=8192, max_num_seqs=256, max_num_batched_tokens=2048)
    assert p.page_size_bytes == 16 * 2 * 8 * 128 * 2
    assert p.num_blocks == p.available_bytes // p.page_size_bytes // 32
    assert p.kv_cache_tokens == p.num_blocks * 16
    assert p.kv_cache_bytes <= p.available_bytes < p.kv_cache_bytes + p.page_size_bytes * 32
    fp8 = predict_kv_cache(L8, H100, max_model_len=8192, max_num_seqs=256, max_num_batched_tokens=2048, kv_cache_dtype="fp8")
    assert fp8.kv_cache_tokens > 1.99 * p.kv_cache_tokens


def test_fits_means_one_max_model_len_request_fits():
    l4 = get_gpu("l4")
    p = predict_kv_cache(PRESETS["llama-3.1-8b"], l4, max_model_len=16384, max_num_seqs=64, max_num_batched_tokens=2048)
    need = 16384 // 16
    assert p.fits == (p.num_blocks >= need)
    longer = predict_kv_cache(PRESETS["llama-3.1-8b"], l4, max_model_len=p.num_blocks * 16 + 16, max_num_seqs=64, max_num_batched_tokens=2048)
    assert not longer.fits
    exact = predict_kv_cache(PRESETS["llama-3.1-8b"], l4, max_model_len=p.num_blocks * 16, max_num_seqs=64, max_num_batched_tokens=2048)
    assert exact.fits


def test_activation_grows_with_the_batch_limits():
    small = activation_breakdown(L8, tp=1, max_num_batched_tokens=2048, max_num_seqs=128, compile_cache="warm")
    big = activation_breakdown(L8, tp=1, max_num_batched_tokens=16384, max_num_seqs=128, compile_cache="warm")
    # The MLP's gate_up + activation (3 x 14336 x 2 bytes per token) and three hidden-size rows (3 x 4096 x 2).
    assert big["forward"] - small["forward"] == (16384 - 2048) * (3 * 14336 + 3 * 4096) * 2
    many = activation_breakdown(L8, tp=1, max_num_batched_tokens=2048, max_num_seqs=2048, compile_cache="warm")
    assert many["sampler"] - small["sampler"] == (2048 - 128) * 128256 * 4  # float32 logits
    cold = activation_breakdown(L8, tp=1, max_num_batched_tokens=2048, max_num_seqs=128, compile_cache="cold")
    assert cold["peak"] > small["peak"]
    half = activation_breakdown(L8, tp=2, max_num_batched_tokens=16384, max_num_seqs=128, compile_cache="warm")
    assert half["forward"] < big["forward"]


def test_cold_compile_floor_is_the_ranks_share_of_the_embedding():
    # At 2048 tokens a first start peaks at the floor: the rank's embedding rows x hidden in bf16 plus two
    # hidden-size rows per token (measured 1.01 GiB on one H100).
    for tp, rows in ((1, 128256), (2, 64128), (4, 32064)):
        a = activation_breakdown(L8, tp=tp, max_num_batched_tokens=2048, max_num_seqs=128, compile_cache="cold")
        assert a["compile_floor"] == rows * 4096 * 2 + 2048 * 2 * 4096 * 2
    one = activation_breakdown(L8, tp=1, max_num_batched_tokens=2048, max_num_seqs=128, compile_cache="cold")
    assert one["peak"] == one["compile_floor"]
    assert abs(one["peak"] / GiB - 1.01) < 0.005


def test_tensor_parallel_forward_keeps_the_all_reduce_output():
    # tp=2 splits the MLP intermediates but adds the all-reduce's hidden-size output; the first start's
    # compile extra is added to the forward, not to the sampler that runs after it.
    for cache in ("cold", "warm"):
        one = activation_breakdown(L8, tp=1, max_num_batched_tokens=8192, max_num_seqs=1024, compile_cache=cache)
        two = activation_breakdown(L8, tp=2, max_num_batched_tokens=8192, max_num_seqs=1024, compile_cache=cache)
        assert one["forward"] - two["forward"] == 8192 * 3 * (14336 - 7168) * 2 - 8192 * 4096 * 2
        assert two["sampler"] == one["sampler"]  # float32 logits over the gathered vocabulary
    cold2 = activation_breakdown(L8, tp=2, max_num_batched_tokens=8192, max_num_seqs=1024, compile_cache="cold")
    assert cold2["peak"] == cold2["forward"] + int(0.375 * GiB)
    assert cold2["peak"] < cold2["sampler"] + int(0.375 * GiB)


def test_tensor_parallel_context_lowers_the_highest_utilisation():
    from trdeploy.sizing.memory import cuda_context_gib, max_gpu_memory_utilization

    assert cuda_context_gib(1) == 0.51 and cuda_context_gib(2) == 1.47
    # vLLM on two H100s logged 77.71 of 79.18 GiB free per rank at start-up: it refuses more than 0.981.
    assert round(max_gpu_memory_utilization(H100, 2), 3) == 0.981
    assert max_gpu_memory_utilization(H100, 1) > 0.99


# --- Against what vLLM logged ------------------------------------------------------------------------------


@pytest.mark.parametrize("point", _points(), ids=lambda p: p["id"])
def test_prediction_within_1_percent_of_vllm_log(point):
    s = point["settings"]
    pred = predict_kv_cache(
        PRESETS[point["model"]],
        get_gpu(point["gpu"]),
        tp=point["gpu_count"],
        quantization=point["quantization"],
        compile_cache=point["compile_cache"],
        **s,
    )
    measured = point["measured"]
    err = abs(pred.kv_cache_tokens - measured["kv_cache_tokens"]) / measured["kv_cache_tokens"]
    assert err <= 0.01, f"{point['id']}: predicted {pred.kv_cache_tokens:,} vs logged {measured['kv_cache_tokens']:,}"
    # The components, to the 0.01 GiB vLLM prints them with (plus rounding).
    assert abs(pred.weights_bytes / GiB - measured["model_loading_gib"]) <= 0.015
    assert abs(pred.activation_bytes / GiB - measured["torch_peak_increase_gib"]) <= 0.015
    assert abs(pred.available_bytes / GiB - measured["available_kv_gib"]) <= 0.02
    assert abs(pred.non_torch_bytes / GiB - measured["non_torch_increase_gib"]) <= 0.01


def test_measured_points_cover_the_accuracy_goals():
    pts = _points()
    assert {p["quantization"] for p in pts} >= {"none", "awq"}
    assert {p["settings"]["kv_cache_dtype"] for p in pts} >= {"auto", "fp8"}
    assert len({(p["settings"]["max_num_batched_tokens"], p["settings"]["max_num_seqs"]) for p in pts}) >= 4
    assert {p["compile_cache"] for p in pts} == {"cold", "warm"}
    assert {p["gpu_count"] for p in pts} >= {1, 2}


def test_h100_cuda_total_is_the_measured_one():
    # vLLM multiplies cudaMemGetInfo's total, not nvidia-smi's 81559 MiB.
    assert H100.memory_mib == 81559
    assert H100.cuda_total_bytes == 85_017_493_504
    assert H100.cuda_total_bytes < H100.memory_mib * MiB
