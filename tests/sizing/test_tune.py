"""`trdeploy tune` end to end: the CLI, the DeploymentProfile, errors, the latency calibration, recipes."""

from __future__ import annotations

import importlib.util
import json
import struct
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli

from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError
from trdeploy.sizing.architectures import PRESETS
from trdeploy.sizing.batching import Engine, Load, Mix
from trdeploy.sizing.calibration import resolve
from trdeploy.sizing.gpus import GPUS
from trdeploy.sizing.latency import predict_latency, step_model
from trdeploy.sizing.memory import predict_kv_cache
from trdeploy.sizing.tuning import TuneRequest, tune

MEASUREMENTS = Path(__file__).resolve().parents[1] / "data" / "vllm_measurements.json"


def _json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    text = " ".join(proc.stderr.split())
    assert text.startswith("Error:")
    return text


# --- The CLI -------------------------------------------------------------------------------------------


def test_tune_gpu_h100_alone_works_offline_and_fast(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    started = time.perf_counter()
    proc = run_cli("tune", "--gpu", "h100", "--json", env=env)
    elapsed = time.perf_counter() - started
    data = _json(proc)
    ea, pred = data["engine_args"], data["prediction"]
    for key in ("model", "tensor_parallel_size", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "kv_cache_dtype"):
        assert key in ea
    for key in ("weights_gib", "kv_cache_gib", "kv_cache_tokens", "max_concurrency", "tpot_ms", "ttft_ms", "e2e_ms", "output_tokens_per_s", "replicas", "hourly_cost_usd"):
        assert key in pred
    assert set(pred["max_concurrency"]) == {"at_max_model_len", "at_typical_request"}
    assert pred["kv_bytes_per_token"] == 128 * 1024  # GQA: 8 KV heads
    assert ea["tensor_parallel_size"] == data["gpu"]["count"] == 1
    assert data["serve_command"].startswith("vllm serve meta-llama/Meta-Llama-3-8B-Instruct --served-model-name meta-llama/Meta-Llama-3-8B-Instruct --tensor-parallel-size 1")
    # The context came from words x the measured Turkish tokens per word on the llama3 tokenizer.
    w = data["workload"]
    assert w["context_words"] == 2000 and w["tokens_per_word"] > 1
    assert ea["max_model_len"] >= 2000 * w["tokens_per_word"] + w["output_tokens"]
    assert elapsed < 15, f"tune took {elapsed:.1f} s"  # < 3 s on an idle machine; CI boxes are shared


def test_context_words_use_the_profile_tokens_per_word():
    from trdeploy.text.embedded import embedded_pairs
    from trdeploy.text.inflation import tokens_per_word
    from trdeploy.text.tokenizers import load_tokenizer

    expected = tokens_per_word(load_tokenizer("llama3"), [p.tr for p in embedded_pairs()], 95.0)
    result = tune(TuneRequest(gpu="h100", context_words=1500, output_tokens=200))
    assert result.profile.workload.tokens_per_word == pytest.approx(expected, abs=1e-4)
    # Given explicitly: 3000 words x 2.0 + 256 output = 6256 -> rounded up to 6400.
    given = tune(TuneRequest(gpu="h100", context_words=3000, tokens_per_word=2.0, output_tokens=256))
    assert given.profile.engine_args.max_model_len == 6400


def test_profile_written_validates_and_is_not_overwritten(tmp_path):
    out = tmp_path / "trdeploy.yaml"
    proc = run_cli("tune", "--gpu", "l40s", "--quantization", "awq", "--max-model-len", "8192", "--concurrency", "24", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "vllm serve" in proc.stdout and "GPU KV cache size" in proc.stdout
    profile = DeploymentProfile.load(out)
    assert profile.quantization == "awq" and profile.gpu.tier == "l40s"
    assert profile.engine_args.quantization is None  # vLLM detects AWQ / compressed-tensors by itself
    assert profile.gpu.node_labels == ["NVIDIA-L40S"]
    assert profile.assumptions
    before = out.read_text()
    again = run_cli("tune", "--gpu", "h100", "-o", str(out))
    assert "--force" in _one_line_error(again)
    assert out.read_text() == before


def test_does_not_fit_lists_what_would_with_numbers(tmp_path):
    out = tmp_path / "p.yaml"
    proc = run_cli("tune", "--gpu", "h100", "--model", "llama-3-70b", "--gpus", "1", "--max-model-len", "8192", "-o", str(out))
    msg = _one_line_error(proc)
    assert "does not fit one h100" in msg
    assert "--quantization awq (" in msg and "--gpus 2 (" in msg and "KV tokens/GPU" in msg
    assert not out.exists()
    # Long context on a small card: fp8 KV cache, AWQ, more GPUs or a larger tier, or a shorter context.
    msg = _one_line_error(run_cli("tune", "--gpu", "l4", "--model", "llama-3.1-8b", "--gpus", "1", "--max-model-len", "32768"))
    assert "--kv-cache-dtype fp8 (" in msg and "--max-model-len" in msg


def test_default_gpus_is_the_fewest_that_fit():
    r = tune(TuneRequest(gpu="h100", model="llama-3-70b", max_model_len=8192))
    assert r.profile.engine_args.tensor_parallel_size == 2
    with pytest.raises(TrdeployError):
        tune(TuneRequest(gpu="h100", model="llama-3-70b", max_model_len=8192, gpus=1))
    r8 = tune(TuneRequest(gpu="h100", model="llama-3-8b", max_model_len=8192))
    assert r8.profile.engine_args.tensor_parallel_size == 1


def test_highest_utilisation_depends_on_the_gpus_per_replica():
    # One H100 has 0.51 GiB of context before vLLM's snapshot, each of two ranks 1.47 GiB (measured).
    one = tune(TuneRequest(gpu="h100", model="llama-3-8b", max_model_len=8192, gpu_memory_utilization=0.985))
    assert one.profile.engine_args.tensor_parallel_size == 1
    with pytest.raises(TrdeployError, match="each of 2 h100 GPUs"):
        tune(TuneRequest(gpu="h100", model="llama-3-8b", max_model_len=8192, gpus=2, gpu_memory_utilization=0.985))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--gpu", "v100"], "Unknown GPU tier"),
        (["--gpu", "h100", "--gpus", "3"], "cannot split"),
        (["--gpu", "h100", "--model", "llama-3-8b", "--max-model-len", "16384"], "8192 positions"),
        (["--gpu", "h100", "--max-model-len", "4096", "--context-words", "100"], "either --context-words or --max-model-len"),
        (["--gpu", "h100", "--gpu-memory-utilization", "1.0"], "CUDA context"),
        (["--gpu", "h100", "--gpus", "2", "--gpu-memory-utilization", "0.985"], "each of 2 h100 GPUs"),
        (["--gpu", "h100", "--model", "llama-3-70b", "--gpu-memory-utilization", "0.985"], "each of"),
        (["--gpu", "h100", "--max-num-seqs", "512", "--max-num-batched-tokens", "256"], "below --max-num-seqs"),
        (["--gpu", "h100", "--model", "./no/such/folder"], "No checkpoint folder"),
        (["--gpu", "h100", "--max-model-len", "1024", "--prompt-tokens", "1000"], "does not fit max_model_len"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, expected):
    assert expected in _one_line_error(run_cli("tune", *args))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--sla-ttft-p95-ms", "0"], "--sla-ttft-p95-ms: input should be greater than 0"),
        (["--prompt-tokens", "0"], "--prompt-tokens: input should be greater than or equal to 1"),
        (["--output-tokens", "0"], "--output-tokens"),
        (["--peak-factor", "nan"], "--peak-factor: input should be a finite number"),
        (["--requests-per-day", "inf"], "--requests-per-day: input should be a finite number"),
        (["--tokens-per-word", "-1"], "--tokens-per-word"),
        # An SLA that always holds: one replica takes all 100, so max_num_seqs must be above 64.
            (["--max-model-len", "4096", "--max-num-batched-tokens", "64", "--concurrency", "100", "--sla-e2e-p95-ms", "1e9"], "--max-num-batched-tokens 64 is below the max_num_seqs"),
    ],
)
def test_the_argument_model_is_the_one_line_error(args, expected):
    # TuneRequest holds every range; zero and NaN are errors, never replaced by a default.
    assert expected in _one_line_error(run_cli("tune", "--gpu", "h100", *args))


def test_tune_request_is_the_source_of_the_cli_defaults():
    import inspect

    from trdeploy.cli.tune import tune as cli_tune

    params = inspect.signature(cli_tune).parameters
    fields = TuneRequest.model_fields
    assert params["peak_factor"].default == fields["peak_factor"].default == 3.0
    assert params["percentile"].default == fields["percentile"].default
    assert params["model"].default == fields["model"].default
    with pytest.raises(ValueError, match="finite"):
        TuneRequest(gpu="h100", peak_factor=float("nan"))


def test_the_steps_compose_to_tune():
    from trdeploy.sizing import tuning as t

    req = TuneRequest(gpu="h100", max_model_len=8192, concurrency=48)
    warnings: list[str] = []
    target = t.resolve_target(req, warnings)
    util = t.check_load_and_overrides(req, target.gpu)
    shape = t.plan_shape(req, target.model, t.context_tokens_per_word)
    assert (shape.max_model_len, shape.prompt_tokens, shape.output_tokens) == (8192, 1024, 256)
    plan, kv = t.choose_tensor_parallel(target, t.initial_plan(req, target, shape.max_model_len, util), None, "cold")
    assert plan.tp == 1 and plan.max_num_seqs == 1024  # vLLM's H100 default before the plan
    sla = t.plan_sla(req)  # no --sla-*: the default interactive SLA
    assert (sla.ttft_p95_ms, sla.tpot_ms) == (2000.0, 50.0)
    latency_at = t._latency_fn(target, plan, kv, shape)
    traffic = t.plan_traffic(req, latency_at, t._kv_capacity(kv, shape), sla)
    assert (traffic.replicas, traffic.per_replica) == (1, 48)
    capacity = t.sla_capacity(latency_at, sla, t._kv_capacity(kv, shape))
    assert capacity > 48
    plan, kv = t.settle_max_num_seqs(req, target, plan, kv, traffic.per_replica, t._kv_capacity(kv, shape), capacity)
    assert plan.max_num_seqs == t.round_up(capacity, 8)  # admits the SLA capacity, not just the planned 48
    profile = t.build_profile(req, target, plan, kv, shape, sla, traffic, t.assess(target, plan, kv, shape, traffic, sla))
    assert profile == tune(req).profile


# --- Latency calibration -----------------------------------------------------------------------------------


def _h100_step(quant: str, params=None):
    arch, tier = PRESETS["llama-3-8b"], resolve("h100")
    kv = predict_kv_cache(arch, tier.gpu, max_model_len=8192, max_num_seqs=1024, max_num_batched_tokens=8192, quantization=quant)
    step = step_model(arch, tier.gpu, tp=1, weights_parts=kv.weights_parts, kv_bytes_per_token=kv.kv_bytes_per_token, quantization=quant, params=params or tier.params)
    return step, Engine(1024, 8192, kv.num_blocks * 16)


@pytest.mark.parametrize("quant, bench_ids", [("none", ["h100-bf16-default-c100", "h100-bf16-default-c100-rerun"]), ("awq", ["h100-awq-default-c100"])])
def test_the_shipped_h100_calibration_predicts_its_points(quant, bench_ids):
    step, engine = _h100_step(quant)
    lat = predict_latency(step, engine, Mix(512, 300), Load.closed(100, 300))
    for bid in bench_ids:
        m = next(b for b in json.loads(MEASUREMENTS.read_text())["benchmarks"] if b["id"] == bid)["measured"]
        assert lat.tpot_p50_ms == pytest.approx(m["tpot_ms"]["p50"], rel=0.10)
        assert lat.ttft_p95_ms == pytest.approx(m["ttft_ms"]["p95"], rel=0.15)
        assert lat.e2e_p95_ms == pytest.approx(m["e2e_ms"]["p95"], rel=0.15)
        assert lat.output_tokens_per_s == pytest.approx(m["output_tok_s"], rel=0.10)


def test_latency_physics():
    arch, h100, l4 = PRESETS["llama-3-8b"], resolve("h100"), resolve("l4")

    def step(tier, quant="none"):
        kv = predict_kv_cache(arch, tier.gpu, max_model_len=4096, max_num_seqs=64, max_num_batched_tokens=2048, quantization=quant)
        return step_model(arch, tier.gpu, tp=1, weights_parts=kv.weights_parts, kv_bytes_per_token=kv.kv_bytes_per_token, quantization=quant, params=tier.params)

    # A GPU with 11x less bandwidth decodes much slower; more sequences and longer contexts cost more.
    assert step(l4).decode_step_ms(1, 1000) > 8 * step(h100).decode_step_ms(1, 1000)
    s = step(h100)
    assert s.decode_step_ms(64, 1000) > s.decode_step_ms(8, 1000) > s.decode_step_ms(8, 100)
    assert step(h100, "awq").decode_step_ms(1, 500) < s.decode_step_ms(1, 500)  # 4-bit weights read faster
    engine = Engine(max_num_seqs=64, max_num_batched_tokens=2048)
    lat = [predict_latency(s, engine, Mix(1024, 256), Load.closed(c, 3 * c)) for c in (1, 8, 64)]
    assert lat[0].ttft_p95_ms < lat[1].ttft_p95_ms < lat[2].ttft_p95_ms
    assert lat[0].output_tokens_per_s < lat[1].output_tokens_per_s < lat[2].output_tokens_per_s
    # Poisson arrivals at the closed loop's throughput wait less for their first token than its waves.
    closed = predict_latency(s, engine, Mix(1024, 256), Load.closed(8, 400))
    spread = predict_latency(s, engine, Mix(1024, 256), Load.poisson(closed.requests_per_s * 0.7, 400))
    assert spread.ttft_p50_ms < closed.ttft_p50_ms and spread.arrivals == "poisson"


# --- SLA, traffic, replicas ------------------------------------------------------------------------------------


def test_sla_not_met_says_where_it_holds():
    r = tune(TuneRequest(gpu="h100", max_model_len=8192, prompt_tokens=2048, output_tokens=256, concurrency=64, ttft_p95_ms=400.0, gpus=1))
    p = r.profile.prediction
    assert p.sla_met is True  # tune plans replicas so that each holds the SLA
    assert p.replicas > 1 and p.sla_max_concurrency and p.sla_max_concurrency < 64
    assert r.profile.prediction.details["concurrency_per_replica"] <= p.sla_max_concurrency
    # With an explicit max_num_seqs cap the SLA cannot be planned around: say so.
    bad = tune(TuneRequest(gpu="rtx4090", max_model_len=4096, prompt_tokens=1024, output_tokens=128, concurrency=4, tpot_ms=5.0))
    assert bad.profile.prediction.sla_met is False
    assert any("SLA does not hold" in w for w in bad.warnings)


def test_requests_per_day_sets_replicas_and_cost():
    small = tune(TuneRequest(gpu="h100", max_model_len=8192, requests_per_day=50_000))
    big = tune(TuneRequest(gpu="h100", max_model_len=8192, requests_per_day=5_000_000))
    assert big.profile.prediction.replicas > small.profile.prediction.replicas >= 1
    for r in (small, big):
        p = r.profile.prediction
        assert p.hourly_cost_usd == pytest.approx(p.replicas * r.profile.gpu.count * GPUS["h100"].hourly_usd)
        # Every replica takes its share of the peak rate, predicted as Poisson arrivals at that rate, and the
        # closed-loop capacity plan covers the peak too.
        lat = p.details["latency_per_replica"]
        assert lat["arrivals"] == "poisson" and lat["request_rate"] * p.replicas == pytest.approx(p.details["peak_requests_per_s"], rel=0.01)
        assert p.capacity.requests_per_s_per_replica * p.replicas >= p.details["peak_requests_per_s"] * 0.999
        assert any("Poisson arrivals at" in a for a in r.profile.assumptions)


# --- Model sources -----------------------------------------------------------------------------------------------


def _llama_config(**extra):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
           "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
           "max_position_embeddings": 131072, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
    cfg.update(extra)
    return cfg


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    header, offset = {}, 0
    sizes = {"BF16": 2, "I32": 4, "F16": 2}
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return offset


def test_local_folder_reads_config_quantization_and_safetensors(tmp_path):
    folder = tmp_path / "tr-llama-1b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_llama_config()))
    nbytes = _write_safetensors(folder / "model.safetensors", {"a": ("BF16", [4, 8]), "b": ("BF16", [16])})
    data = _json(run_cli("tune", "--gpu", "l4", "--model", str(folder), "--max-model-len", "4096", "--json"))
    assert data["model"]["id"] == str(folder) and data["model"]["num_hidden_layers"] == 16
    assert data["model"]["num_parameters"] == 4 * 8 + 16  # from the safetensors headers
    assert data["prediction"]["details"]["checkpoint_bytes"] == nbytes
    awq = tmp_path / "tr-llama-1b-awq"
    awq.mkdir()
    (awq / "config.json").write_text(json.dumps(_llama_config(quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"})))
    data = _json(run_cli("tune", "--gpu", "l4", "--model", str(awq), "--max-model-len", "4096", "--json"))
    assert data["quantization"] == "awq" and data["engine_args"]["model"] == str(awq)
    assert data["engine_args"]["quantization"] is None
    assert "contradicts" in _one_line_error(run_cli("tune", "--gpu", "l4", "--model", str(awq), "--quantization", "none"))
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    assert "Llama models only" in _one_line_error(run_cli("tune", "--gpu", "l4", "--model", str(bad)))


def test_hub_id_from_the_offline_cache(tmp_path):
    snap = tmp_path / "hf" / "hub" / "models--acme--turkish-llama-8b" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(_llama_config(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, head_dim=128,
                                                                tie_word_embeddings=False, max_position_embeddings=8192)))
    (snap / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 16060522496}, "weight_map": {}}))
    refs = snap.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    data = _json(run_cli("tune", "--gpu", "h100", "--model", "acme/turkish-llama-8b", "--max-model-len", "8192", "--json", env=env))
    assert data["engine_args"]["model"] == "acme/turkish-llama-8b"
    assert data["model"]["num_parameters"] == 8_030_261_248
    assert data["prediction"]["details"]["checkpoint_bytes"] == 16060522496
    assert "local Hugging Face cache" in _one_line_error(run_cli("tune", "--gpu", "h100", "--model", "acme/not-cached", env=env))


# --- Recipes ---------------------------------------------------------------------------------------------------


def test_recipes_are_in_sync_with_the_code():
    spec = importlib.util.spec_from_file_location("make_recipes", ROOT / "scripts" / "make_recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    produced = module.render()
    committed = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "recipes").glob("*.yaml")}
    assert set(produced) == set(committed)
    for name, text in produced.items():
        assert committed[name] == text, f"recipes/{name} is stale: run python scripts/make_recipes.py"
    names = set(produced)
    for q in ("bf16", "awq"):
        for g in ("h100", "a100-80gb", "l40s", "rtx4090"):
            assert f"llama-3-8b-{q}-{g}.yaml" in names
    assert {"llama-3-70b-awq-h100-x2.yaml", "llama-3-70b-bf16-h100-x4.yaml"} <= names
    for text in committed.values():
        DeploymentProfile.model_validate(yaml.safe_load(text))
