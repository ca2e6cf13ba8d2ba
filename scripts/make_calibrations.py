#!/usr/bin/env python3
"""Write the calibrations that ship for the H100 and H200 (trdeploy/data/calibrations/TIER.yaml) from the points
measured on them in tests/data, with the same fit `trdeploy calibrate --from-bench` runs.

    python scripts/make_calibrations.py            # both tiers (a few minutes: the leave-one-out refits)
    python scripts/make_calibrations.py --check    # exit 1 if a shipped file differs from what the code makes now

tests/data/vllm_measurements.json (H100) and tests/data/vllm_measurements_h200.json (H200) hold every start-up
(the KV cache vLLM allocated) and every `vllm bench serve` run with its card; each start-up is a run here,
each bench run a point of the start it was measured on. Runs whose prompts were served from the prefix cache
(the H100's TPOT-only points) say so (`cached_prompt_tokens`). tests/sizing/test_calibration.py keeps the
files in sync with this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trdeploy.deployment import EngineArgs  # noqa: E402
from trdeploy.sizing.architectures import PRESETS  # noqa: E402
from trdeploy.sizing.calibration import Calibration, Measured, ModelShape, Point, PointLoad, Run, ServerFacts, fit_calibration  # noqa: E402
from trdeploy.sizing.memory import KV_BLOCK_SIZE  # noqa: E402

DATA = ROOT / "tests" / "data"
OUT = ROOT / "trdeploy" / "data" / "calibrations"
CREATED = "2026-12-08T00:00:00+00:00"  # fixed, so the files depend only on the data and the code
# vLLM reuses prompt blocks from the prefix cache up to the last full block before the final token:
# a 512-token prompt seen before computes 16 tokens.
CACHED_512 = 512 - KV_BLOCK_SIZE


def _engine(model: str, settings: dict, tp: int = 1) -> EngineArgs:
    return EngineArgs(
        model=model,
        served_model_name="m",  # what the measurement scripts serve it as
        tensor_parallel_size=tp,
        max_model_len=settings["max_model_len"],
        max_num_seqs=settings["max_num_seqs"],
        max_num_batched_tokens=settings["max_num_batched_tokens"],
        gpu_memory_utilization=settings["gpu_memory_utilization"],
        kv_cache_dtype=settings.get("kv_cache_dtype", "auto"),
    )


def _server(settings: dict, kv_tokens: int) -> ServerFacts:
    # With max_model_len a multiple of 16, vLLM's "GPU KV cache size" is exactly num_gpu_blocks x 16.
    return ServerFacts(
        vllm_version="0.25.0",
        num_gpu_blocks=kv_tokens // KV_BLOCK_SIZE,
        block_size=KV_BLOCK_SIZE,
        kv_cache_size_tokens=kv_tokens,
        gpu_memory_utilization=settings["gpu_memory_utilization"],
        cache_dtype=settings.get("kv_cache_dtype", "auto"),
        max_model_len=settings["max_model_len"],
    )


def _measured(m: dict) -> Measured:
    ttft = m.get("ttft_ms") or {}
    tpot = m.get("tpot_ms") or {}
    e2e = m.get("e2el_ms") or m.get("e2e_ms") or {}
    return Measured(
        ttft_p50_ms=ttft.get("p50"),
        ttft_p95_ms=ttft.get("p95"),
        tpot_p50_ms=tpot.get("p50"),
        e2e_p95_ms=e2e.get("p95"),
        output_throughput=m.get("output_throughput", m.get("output_tok_s")),
    )


def h100_runs() -> list[Run]:
    data = json.loads((DATA / "vllm_measurements.json").read_text())
    runs: dict[str, Run] = {}
    for s in data["points"]:
        model = PRESETS[s["model"]]
        runs[s["id"]] = Run(
            id=s["id"],
            model=ModelShape.from_arch(model),
            quantization=s["quantization"],
            engine_args=_engine(model.hf_id or model.name, s["settings"], s.get("gpu_count", 1)),
            compile_cache=s["compile_cache"],
            server=_server(s["settings"], s["measured"]["kv_cache_tokens"]),
            source="tests/data/vllm_measurements.json: " + s["id"],
        )
    for b in data["benchmarks"]:
        cached = "prefix-cached" in b["command"] or "prefix caching served" in b["command"]
        runs[b["point"]].points.append(
            Point(
                id=b["id"],
                prompt_tokens=b["prompt_tokens"],
                output_tokens=b["output_tokens"],
                cached_prompt_tokens=CACHED_512 if cached else 0,
                load=PointLoad(arrivals="closed", concurrency=b["concurrency"], num_requests=_num_prompts(b["command"])),
                measured=_measured(b["measured"]),
                source="tests/data/vllm_measurements.json: " + b["command"],
            )
        )
    return list(runs.values())


def _num_prompts(command: str) -> int:
    words = command.replace("=", " ").replace(",", " ").split()
    return int(words[words.index("--num-prompts") + 1]) if "--num-prompts" in words else 300


def h200_runs() -> list[Run]:
    data = json.loads((DATA / "vllm_measurements_h200.json").read_text())
    runs: list[Run] = []
    for s in data["starts"]:
        model = PRESETS[s["model"]]
        run = Run(
            id=s["id"],
            model=ModelShape.from_arch(model),
            quantization=s["quantization"],
            engine_args=_engine(model.hf_id or model.name, s["settings"]),
            compile_cache=s["compile_cache"],
            server=_server(s["settings"], s["memory"]["kv_cache_tokens"]),
            source="tests/data/vllm_measurements_h200.json: " + s["id"],
        )
        for b in s["benchmarks"]:
            run.points.append(_h200_point(f"c{b['concurrency']}-n{b['num_prompts']}", b, "tests/data/vllm_measurements_h200.json: " + s["id"]))
        for p in data["calibration_points"]:
            if p["model"] == s["model"] and p["quantization"] == s["quantization"]:
                run.points.append(_h200_point(p["id"], p, "tests/data/vllm_measurements_h200.json: " + p["source"]))
        runs.append(run)
    return runs


def _h200_point(pid: str, b: dict, source: str) -> Point:
    m = b["measured"]
    return Point(
        id=pid,
        prompt_tokens=512,
        output_tokens=300,
        load=PointLoad(arrivals="closed", concurrency=b["concurrency"], num_requests=b["num_prompts"]),
        measured=_measured(m),
        completed=m.get("completed"),
        failed=m.get("failed", 0),
        duration_s=m.get("duration"),
        source=source,
    )


def make(tier: str) -> Calibration:
    runs = h100_runs() if tier == "h100" else h200_runs()
    return fit_calibration(
        name=f"{tier}-vllm-0.25.0-shipped",
        tier=tier,
        runs=runs,
        created_at=CREATED,
        notes=[
            "Made by scripts/make_calibrations.py from tests/data: the measured vLLM 0.25.0 start-ups and bench runs on this tier.",
            "Random-weight checkpoints of the real shapes: speed and memory are real, text is noise.",
        ],
        progress=lambda msg: print(f"[{tier}] {msg}", file=sys.stderr, flush=True),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing them")
    ap.add_argument("--tier", choices=("h100", "h200"), action="append")
    args = ap.parse_args()
    status = 0
    OUT.mkdir(parents=True, exist_ok=True)
    for tier in args.tier or ("h100", "h200"):
        text = make(tier).to_yaml()
        path = OUT / f"{tier}.yaml"
        if args.check:
            if not path.is_file() or path.read_text() != text:
                print(f"{path} is out of date: run python scripts/make_calibrations.py", file=sys.stderr)
                status = 1
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
