"""`trdeploy bench` core: metric formulas, word counting, bounded stores, SSE/HTTP parsing, arrivals, validation.

No server here; tests/bench/test_bench_e2e.py runs the command against real servers.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from conftest import ROOT, run_cli

from trdeploy.bench.metrics import (
    STATUS_CANCELLED,
    STATUS_FAILED,
    ItlBuffer,
    RequestResult,
    ResultStore,
    SlaTargets,
    WordCounter,
    count_words,
    evaluate_sla,
    peak_concurrency,
    summarize,
)
from trdeploy.bench.plan import parse_sweep, plan_bench
from trdeploy.bench.prometheus import parse_prometheus, server_metrics_delta
from trdeploy.bench.scheduler import LoadSpec, arrival_offsets
from trdeploy.bench.transport import SSEParser, _chunk_text, _Dechunker
from trdeploy.errors import TrdeployError
from trdeploy.text.embedded import embedded_pairs

# ---------------------------------------------------------------------------------------- words


def test_word_counter_counts_words_split_across_chunks_once() -> None:
    w = WordCounter()
    for chunk in ("İstan", "bul'", "da 3 gün", " kaldık", "."):
        w.feed(chunk)
    assert w.finish() == 4  # İstanbul'da, 3, gün, kaldık


def test_word_counter_matches_whole_text_count_for_random_splits() -> None:
    rng = random.Random(0)
    texts = [p.tr for p in embedded_pairs()][:40]
    assert texts, "the embedded corpus is empty"
    for text in texts:
        cuts = sorted(rng.sample(range(1, len(text)), k=min(8, len(text) - 1)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        w = WordCounter()
        for piece in pieces:
            w.feed(piece)
        assert w.finish() == count_words(text), pieces


# ---------------------------------------------------------------------------------------- stores


def test_itl_buffer_is_exact_below_capacity_and_a_uniform_reservoir_above() -> None:
    buf = ItlBuffer(capacity=1000, seed=1)
    buf.extend([0.5] * 400)
    assert not buf.sampled and buf.values().size == 400 and float(buf.values().sum()) == pytest.approx(200.0)
    values = np.arange(100_000, dtype=np.float64)
    for start in range(0, values.size, 300):
        buf.extend(values[start : start + 300].tolist())
    assert buf.sampled and buf.seen == 100_400 and buf.values().size == 1000
    # A uniform sample of 0..99999 (plus 400 halves): its mean is near 50,000, and early and late values both appear.
    kept = buf.values()
    assert abs(float(kept.mean()) - 49_800) < 4_000
    assert (kept > 90_000).sum() > 50 and (kept < 10_000).sum() > 50


def test_result_store_memory_stays_bounded_over_10000_requests() -> None:
    tracemalloc.start()
    try:
        store = ResultStore(expected=None, itl_capacity=200_000)
        base = tracemalloc.get_traced_memory()[0]
        for i in range(10_000):
            r = RequestResult(start=i * 0.01, ttft=0.2, latency=3.8, output_tokens=300, prompt_tokens=512, chunks=300, words=150)
            r.itl.extend([0.012] * 299)
            if i % 100 == 0:
                r.status, r.error_kind, r.error = STATUS_FAILED, "http_500", "HTTP 500: " + "x" * 5000
            store.add(r)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert store.size == 10_000
    assert store.itl.seen == 9_900 * 299 and store.itl.values().size == 200_000
    # Records are ~50 bytes each, the ITL reservoir 800 KB, error texts are kept only as 3 short samples.
    assert grown < 3_000_000, grown
    assert store.errors == {"http_500": 100} and all(len(s) <= 300 for s in store.error_samples["http_500"])


# ---------------------------------------------------------------------------------------- metrics


def _store(rows: list[dict]) -> ResultStore:
    store = ResultStore()
    for row in rows:
        store.add(RequestResult(**row))
    return store


def _vllm_reference(rows: list[dict], duration: float, slo_ms: dict[str, float]) -> dict:
    """vLLM's calculate_metrics, transcribed loop by loop (vllm/benchmarks/serve.py)."""
    ttfts, tpots, all_tpots, itls, e2els, outs, total_input, good = [], [], [], [], [], [], 0, 0
    for r in rows:
        if r.get("status", 0) != 0:
            continue
        out = r["output_tokens"]
        outs.append(out)
        total_input += r["prompt_tokens"]
        tpot = 0.0
        if out > 1:
            tpot = (r["latency"] - r["ttft"]) / (out - 1)
            tpots.append(tpot)
        all_tpots.append(tpot)
        itls += r["itl"]
        ttfts.append(r["ttft"])
        e2els.append(r["latency"])
    for t, p, e in zip(ttfts, all_tpots, e2els, strict=True):
        if t * 1000 <= slo_ms["ttft"] and p * 1000 <= slo_ms["tpot"] and e * 1000 <= slo_ms["e2el"]:
            good += 1
    ref = {
        "completed": len(ttfts),
        "total_input_tokens": total_input,
        "total_output_tokens": sum(outs),
        "request_throughput": len(ttfts) / duration,
        "request_goodput": good / duration,
        "output_throughput": sum(outs) / duration,
        "total_token_throughput": (total_input + sum(outs)) / duration,
    }
    for name, vals in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        ref[f"mean_{name}_ms"] = np.mean(vals) * 1000
        ref[f"median_{name}_ms"] = np.median(vals) * 1000
        ref[f"std_{name}_ms"] = np.std(vals) * 1000
        for p in (50, 95, 99):
            ref[f"p{p}_{name}_ms"] = np.percentile(vals, p) * 1000
    return ref


def test_summary_matches_vllm_calculate_metrics() -> None:
    rng = np.random.default_rng(3)
    rows = []
    for i in range(60):
        out = int(rng.integers(1, 40))
        ttft = float(rng.uniform(0.05, 0.9))
        itl = rng.uniform(0.005, 0.03, size=max(out - 1, 0)).tolist()
        if i % 7 == 3:  # some chunks carry several tokens: fewer ITL gaps than tokens
            itl = itl[: len(itl) // 2]
        rows.append({"ttft": ttft, "latency": ttft + float(sum(itl)) + 0.001, "output_tokens": out,
                     "prompt_tokens": int(rng.integers(10, 500)), "itl": itl, "start": i * 0.1, "chunks": len(itl) + 1})  # fmt: skip
    rows.append({"status": STATUS_FAILED, "error_kind": "timeout", "ttft": 9.0, "latency": 99.0, "output_tokens": 5, "itl": [9.0]})
    rows.append({"status": STATUS_CANCELLED, "ttft": 9.0, "latency": 99.0, "output_tokens": 5})
    sla = SlaTargets(ttft_p95_ms=500, e2e_p95_ms=800, tpot_ms=20)
    got = summarize(_store(rows), 12.5, percentiles=(50, 95, 99), sla=sla)
    ref = _vllm_reference(rows, 12.5, {"ttft": 500, "tpot": 20, "e2el": 800})
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert got["failed"] == 1 and got["cancelled"] == 1 and got["errors"] == {"timeout": 1}
    assert got["error_rate"] == pytest.approx(1 / 61)
    assert 0 < got["request_goodput"] < got["request_throughput"]


def test_peak_concurrency_uses_half_open_intervals() -> None:
    # Three in flight during [1, 2); at 2.0 two leave as one arrives.
    assert peak_concurrency(np.array([0.0, 1.0, 1.0, 2.0]), np.array([2.0, 2.0, 3.0, 2.6])) == 3
    # Back to back is one at a time: a request ending at 1.0 and one starting at 1.0 never overlap.
    assert peak_concurrency(np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == 1


def test_sla_verdict_both_ways_and_no_completed_request_fails() -> None:
    summary = {"p95_ttft_ms": 700.0, "p95_e2el_ms": 4000.0, "median_tpot_ms": 12.0, "error_rate": 0.0, "completed": 10}
    assert evaluate_sla(summary, SlaTargets(ttft_p95_ms=800, e2e_p95_ms=5000, tpot_ms=15))["passed"]
    failing = evaluate_sla(summary, SlaTargets(ttft_p95_ms=600, e2e_p95_ms=5000, tpot_ms=15))
    assert not failing["passed"] and [c["name"] for c in failing["checks"] if not c["passed"]] == ["ttft_p95_ms"]
    assert not evaluate_sla({**summary, "error_rate": 0.02}, SlaTargets(max_error_rate=0.01))["passed"]
    assert not evaluate_sla({**summary, "completed": 0, "error_rate": 1.0}, SlaTargets(max_error_rate=None))["passed"]


# ---------------------------------------------------------------------------------------- streams


def test_sse_parser_reassembles_events_split_anywhere() -> None:
    events = [{"choices": [{"text": f"k{i}"}]} for i in range(30)]
    wire = "".join(f"data: {json.dumps(e)}\n\n" for e in events).replace("data: ", ": ping\n\ndata:", 3)
    wire = wire.replace("\n\n", "\r\n\r\n", 5) + "data: [DONE]\n\n"
    data = wire.encode()
    rng = random.Random(5)
    for _ in range(20):
        parser = SSEParser()
        out: list[bytes] = []
        i = 0
        while i < len(data):
            step = rng.randint(1, 40)
            out += parser.feed(data[i : i + step])
            i += step
        assert out[-1] == b"[DONE]"
        assert [json.loads(p) for p in out[:-1]] == events


def test_dechunker_decodes_a_chunked_body_split_anywhere() -> None:
    parts = [b"data: a\n\n", b"data: " + "ğüşıöç".encode() * 50 + b"\n\n", b"x" * 70_000]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\ntrailer: 1\r\n\r\n"
    rng = random.Random(2)
    for _ in range(10):
        d = _Dechunker()
        got = b""
        i = 0
        while i < len(body):
            step = rng.randint(1, 5000)
            got += d.feed(body[i : i + step])
            i += step
        assert d.done and got == b"".join(parts)


def test_role_and_empty_finish_chunks_carry_no_token() -> None:
    assert _chunk_text({"delta": {"role": "assistant", "content": ""}}, chat=True) == ("", False)
    assert _chunk_text({"delta": {"role": "assistant"}}, chat=True) == ("", False)
    assert _chunk_text({"delta": {}, "finish_reason": "length"}, chat=True) == ("", False)
    assert _chunk_text({"delta": {"content": "Merhaba"}}, chat=True) == ("Merhaba", True)
    # vLLM streams an empty text for a token that decodes to nothing yet: still a token chunk, as in vLLM.
    assert _chunk_text({"text": "", "finish_reason": None}, chat=False) == ("", True)
    assert _chunk_text({"text": "", "finish_reason": "length"}, chat=False) == ("", False)


# ---------------------------------------------------------------------------------------- arrivals


def test_poisson_arrivals_are_rescaled_like_vllm_and_have_exponential_gaps() -> None:
    spec = LoadSpec(concurrency=None, request_rate=5.0, num_requests=4000, seed=1)
    times = np.array(list(arrival_offsets(spec, np.random.default_rng(1))))
    assert times[-1] == pytest.approx(4000 / 5.0)  # vLLM rescales so N requests end at N / rate
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(0.2, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.08)  # exponential: CV 1
    regular = np.diff(list(arrival_offsets(LoadSpec(request_rate=5.0, burstiness=4.0, num_requests=4000), np.random.default_rng(1))))
    assert regular.std() / regular.mean() == pytest.approx(0.5, abs=0.05)  # gamma shape 4: CV 1/sqrt(4)


def test_open_ended_poisson_arrivals_keep_the_rate() -> None:
    gen = arrival_offsets(LoadSpec(request_rate=20.0, num_requests=None), np.random.default_rng(0))
    times = [next(gen) for _ in range(5000)]
    assert times[-1] / 5000 == pytest.approx(1 / 20.0, rel=0.05)


# ---------------------------------------------------------------------------------------- prometheus


def test_prometheus_parse_filters_by_model_and_deltas() -> None:
    text = "\n".join([
        "# HELP vllm:generation_tokens_total x",
        'vllm:generation_tokens_total{engine="0",model_name="m"} 1500.0',
        'vllm:generation_tokens_total{engine="0",model_name="other"} 99.0',
        'vllm:request_success_total{finished_reason="length",model_name="m"} 5.0',
        'vllm:request_success_total{finished_reason="stop",model_name="m"} 2.0',
        'vllm:time_to_first_token_seconds_sum{model_name="m"} 3.0',
        'vllm:time_to_first_token_seconds_count{model_name="m"} 7.0',
        'vllm:kv_cache_usage_perc{model_name="m"} NaN',
        "process_cpu_seconds_total 12.0",
    ])  # fmt: skip
    before = parse_prometheus(text, "m")
    assert before["vllm:generation_tokens_total"] == 1500.0 and before["vllm:request_success_total"] == 7.0
    assert "vllm:kv_cache_usage_perc" not in before and "process_cpu_seconds_total" not in before
    after = dict(before, **{"vllm:generation_tokens_total": 1800.0, "vllm:request_success_total": 9.0,
                            "vllm:time_to_first_token_seconds_sum": 3.5, "vllm:time_to_first_token_seconds_count": 9.0})  # fmt: skip
    delta = server_metrics_delta(before, after, {"running": 4.0})
    assert delta["counters"]["generation_tokens"] == 300.0 and delta["counters"]["request_success"] == 2.0
    assert delta["mean_ms"]["ttft"] == pytest.approx(250.0) and delta["counters"]["num_preemptions"] is None


# ---------------------------------------------------------------------------------------- options


def test_plan_resolves_sweeps_and_defaults() -> None:
    plan = plan_bench(url="http://h:8000/v1", model="m", sweep="concurrency=1,4,16", num_prompts=10)
    assert [s.concurrency for s in plan.loads] == [1, 4, 16] and all(math.isinf(s.request_rate) for s in plan.loads)
    assert plan.endpoint.url == "http://h:8000/v1/chat/completions"
    rates = plan_bench(model="m", api="completions", sweep="request-rate=0.5,2", concurrency=8)
    assert [(s.request_rate, s.concurrency) for s in rates.loads] == [(0.5, 8), (2.0, 8)]
    assert parse_sweep("rate=1,2") == ("request_rate", [1.0, 2.0])
    assert plan_bench(model="m").loads[0].concurrency == 1 and plan_bench(model="m").loads[0].num_requests == 100


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"synthetic": 16}, "only /v1/completions"),
        ({"sweep": "threads=1,2"}, "--sweep"),
        ({"sweep": "concurrency=0,2"}, "at least 1"),
        ({"ignore_eos": True}, "--output-tokens"),
        ({"extra_body": "[1]"}, "JSON object"),
        ({"url": "localhost:8000"}, "not an http"),
        ({"duration_s": 10.0, "concurrency": None, "sweep": "request-rate=1", "num_prompts": None}, None),
    ],
)
def test_plan_rejects_bad_options_with_one_line(kwargs: dict, needle: str | None) -> None:
    if needle is None:  # a valid combination, for contrast
        plan_bench(model="m", **kwargs)
        return
    with pytest.raises(TrdeployError) as err:
        plan_bench(model="m", **kwargs)
    assert needle in err.value.one_line() and "\n" not in err.value.one_line()


def test_help_has_examples() -> None:
    r = run_cli("bench", "--help")
    assert r.returncode == 0
    for text in ("Examples", "--synthetic", "--sweep concurrency=1,4,16", "--profile", "Exit code"):
        assert text in r.stdout, text


def test_cli_bad_input_exits_2_without_traceback_or_output(tmp_path) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "Merhaba"}\n{"prompt": \n', encoding="utf-8")
    out = tmp_path / "report.json"
    r = run_cli("bench", "--model", "m", "--url", "http://127.0.0.1:9", "--prompts", str(bad), "-o", str(out))
    assert r.returncode == 2, r.stderr
    assert "prompts.jsonl:2 is not JSON" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
    r = run_cli("bench", "--model", "m", "--api", "chat", "--synthetic", "64")
    assert r.returncode == 2 and "--api completions" in r.stderr and "Traceback" not in r.stderr


def test_the_bench_path_imports_only_what_a_bare_gpu_machine_has() -> None:
    """`python3 -m trdeploy bench` must run where only typer, rich, httpx, numpy, pyyaml and pydantic
    are installed: no heavy or optional package may be imported by the CLI or the bench modules."""
    code = (
        "import sys\n"
        "import trdeploy.cli, trdeploy.cli.bench, trdeploy.bench.plan, trdeploy.bench.run, trdeploy.bench.prompts\n"
        "import trdeploy.bench.prometheus, trdeploy.bench.scheduler, trdeploy.bench.transport, trdeploy.bench.metrics\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    forbidden = {"torch", "transformers", "tiktoken", "tokenizers", "llama_models", "datasets", "pyarrow",
                 "matplotlib", "llmcompressor", "huggingface_hub", "aiohttp", "fastapi", "uvicorn", "openai"}  # fmt: skip
    assert not loaded & forbidden, sorted(loaded & forbidden)
