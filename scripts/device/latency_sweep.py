#!/usr/bin/env python3
"""Run `vllm bench serve` at several concurrencies against a running server, in one process.

    python3 scripts/device/latency_sweep.py NAME TOKENIZER C:N [C:N ...]   (env: BIN, BOUT, DEADLINE_EPOCH)

Each C:N is one bench run (--max-concurrency C --num-prompts N, random BIN in / BOUT out, --ignore-eos,
a different --seed per run so no prompt repeats). One line per run, the summary metrics without the
per-request lists, is appended to $OUT/NAME.sweep.jsonl as soon as it finishes. Runs that would start
after the epoch second DEADLINE_EPOCH are skipped, so the command ends inside the device call's limit.
"""

import json
import os
import sys
import time

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

name, tok, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
out = os.environ.get("OUT", "/tmp/out")
t0 = time.time()
deadline = float(os.environ.get("DEADLINE_EPOCH", "1e12"))
for k, cn in enumerate(runs):
    c, n = (int(x) for x in cn.split(":"))
    if time.time() > deadline:
        print(f"[sweep] skip c={c}: past deadline", flush=True)
        continue
    p = FlexibleArgumentParser()
    add_cli_args(p)
    argv = [
        "--backend",
        "openai",
        "--base-url",
        "http://localhost:8000",
        "--model",
        "m",
        "--tokenizer",
        tok,
        "--dataset-name",
        "random",
        "--random-input-len",
        os.environ.get("BIN", "512"),
        "--random-output-len",
        os.environ.get("BOUT", "300"),
        "--num-prompts",
        str(n),
        "--max-concurrency",
        str(c),
        "--ignore-eos",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,95,99",
        "--seed",
        str(1000 + k),
        "--disable-tqdm",
    ]
    ts = time.time()
    try:
        res = main(p.parse_args(argv))
    except Exception as e:  # one failed run must not lose the others
        print(f"[sweep] c={c} failed: {e!r}", flush=True)
        continue
    row = {k2: v for k2, v in res.items() if not isinstance(v, (list, dict))}
    row.update(concurrency=c, num_prompts=n, wall_s=round(time.time() - ts, 1), argv=" ".join(argv))
    with open(f"{out}/{name}.sweep.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(
        f"[sweep] c={c} n={n} out_tok/s={row.get('output_throughput'):.0f} ttft p50/p95={row.get('p50_ttft_ms', row.get('median_ttft_ms')):.0f}/"
        f"{row.get('p95_ttft_ms'):.0f} tpot p50={row.get('median_tpot_ms'):.2f} failed={row.get('failed')} wall={row['wall_s']}s",
        flush=True,
    )
