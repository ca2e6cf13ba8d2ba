#!/usr/bin/env python3
"""What a benchmark client adds to the latencies it measures: trdeploy's load generator against
`vllm bench serve`'s own client, both against a server whose timing is known exactly.

The server is tests/_timed_sse_server.py: every request's first token after exactly TTFT seconds,
then one token every ITL seconds. Both clients run the same closed loop (CONCURRENCY requests in
flight, REQUESTS in all, OUTPUT tokens each), alternating, one process each:

- trdeploy: `trdeploy.bench.scheduler.run_load` (what `trdeploy bench -c N` runs);
- vLLM: `async_request_openai_completions` from vLLM's `vllm/benchmarks/lib/endpoint_request_func.py`
  (loaded from the file, so vLLM itself need not import here) with the dispatch of
  `vllm/benchmarks/serve.py`: every request a task created up front, an asyncio semaphore of
  CONCURRENCY, an aiohttp connector limited to CONCURRENCY. Needs aiohttp, tqdm and regex.

Reported per run: p50 / mean / p99 TTFT and p50 / p99 ITL against the server's exact values, and the
refill gap of the closed loop (the k-th request sent after the first wave against the k-th request
to end: how long a freed slot stays empty).

    python scripts/client_overhead.py --vllm-erf /path/to/vllm/benchmarks/lib/endpoint_request_func.py
    python scripts/client_overhead.py                 # trdeploy only
    # the file is in the vLLM wheel: unzip vllm-*.whl 'vllm/benchmarks/lib/endpoint_request_func.py'
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _bench_servers import start_timed_server  # noqa: E402 - the tests' own launcher for the timed server


def summary(name: str, ttft_s: np.ndarray, itl_s: np.ndarray, start_s: np.ndarray, end_s: np.ndarray, concurrency: int) -> dict:
    starts, ends = np.sort(start_s), np.sort(end_s)
    gaps = (starts[concurrency:] - ends[: len(starts) - concurrency]) * 1000
    ttft, itl = ttft_s * 1000, itl_s * 1000
    return {
        "client": name,
        "completed": int(ttft.size),
        "ttft_ms": {"p50": float(np.median(ttft)), "mean": float(ttft.mean()), "p99": float(np.percentile(ttft, 99))},
        "itl_ms": {"p50": float(np.median(itl)), "p99": float(np.percentile(itl, 99))},
        "refill_gap_ms": {"p50": float(np.median(gaps)), "max": float(gaps.max())} if gaps.size else None,
    }


def run_trdeploy(port: int, args: argparse.Namespace) -> dict:
    from trdeploy.bench.metrics import ResultStore
    from trdeploy.bench.prompts import SyntheticPrompts
    from trdeploy.bench.scheduler import LoadSpec, run_load
    from trdeploy.bench.transport import Endpoint, Sampling

    store = ResultStore(expected=args.requests)
    endpoint = Endpoint(base_url=f"http://127.0.0.1:{port}", api="completions", model="m")
    spec = LoadSpec(concurrency=args.concurrency, num_requests=args.requests)
    asyncio.run(run_load(endpoint, Sampling(max_tokens=args.output, ignore_eos=True), SyntheticPrompts(100, 128000, seed=0), spec, store))
    ok = store.column("status") == 0
    start = store.column("start")[ok]
    return summary("trdeploy", store.column("ttft")[ok], store.itl.values(), start, start + store.column("latency")[ok], args.concurrency)


def run_vllm(port: int, args: argparse.Namespace) -> dict:
    import aiohttp

    spec = importlib.util.spec_from_file_location("vllm_endpoint_request_func", args.vllm_erf)
    erf = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(erf)  # type: ignore[union-attr]

    async def main() -> list:
        n = args.concurrency
        connector = aiohttp.TCPConnector(limit=n, limit_per_host=n, ttl_dns_cache=300, use_dns_cache=True, keepalive_timeout=60,
                                         enable_cleanup_closed=True, force_close=False, ssl=False)  # fmt: skip
        session = aiohttp.ClientSession(connector=connector, trust_env=True, timeout=aiohttp.ClientTimeout(total=6 * 3600))
        semaphore = asyncio.Semaphore(n)
        url = f"http://127.0.0.1:{port}/v1/completions"

        async def limited(request):
            async with semaphore:
                return await erf.async_request_openai_completions(request_func_input=request, session=session, pbar=None)

        prompt = "Merhaba dünya " * 50
        tasks = [asyncio.create_task(limited(erf.RequestFuncInput(prompt=prompt, api_url=url, prompt_len=100, output_len=args.output,
                                                                  model="m", ignore_eos=True))) for _ in range(args.requests)]  # fmt: skip
        outputs = await asyncio.gather(*tasks)
        await session.close()
        return outputs

    t0 = time.perf_counter()
    outs = [o for o in asyncio.run(main()) if o.success]
    start = np.array([o.start_time - t0 for o in outs])
    return summary("vllm bench serve client", np.array([o.ttft for o in outs]), np.concatenate([o.itl for o in outs]),
                   start, start + np.array([o.latency for o in outs]), args.concurrency)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-erf", type=Path, help="vLLM's vllm/benchmarks/lib/endpoint_request_func.py (omit: trdeploy only)")
    ap.add_argument("--ttft", type=float, default=0.2, help="the server's TTFT in seconds (default 0.2)")
    ap.add_argument("--itl", type=float, default=0.012, help="the server's gap between tokens in seconds (default 0.012)")
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--output", type=int, default=300, help="output tokens a request (default 300)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    log = Path(tempfile.mkstemp(prefix="timed_server_", suffix=".log")[1])
    server = start_timed_server(log, ttft_s=args.ttft, itl_s=args.itl)
    port = server.port
    results = []
    try:
        for _ in range(args.repeats):
            results.append(run_trdeploy(port, args))
            if args.vllm_erf:
                results.append(run_vllm(port, args))
    finally:
        server.stop()
        log.unlink(missing_ok=True)
    if args.json:
        print(json.dumps({"server": {"ttft_ms": args.ttft * 1000, "itl_ms": args.itl * 1000}, "runs": results}, indent=2))
        return
    print(f"server: TTFT exactly {args.ttft * 1000:g} ms, one token every {args.itl * 1000:g} ms; "
          f"{args.requests} requests x {args.output} tokens, {args.concurrency} in flight")  # fmt: skip
    for r in results:
        t, i, g = r["ttft_ms"], r["itl_ms"], r["refill_gap_ms"] or {"p50": float("nan"), "max": float("nan")}
        print(f"{r['client']:24} TTFT p50 {t['p50']:6.1f} mean {t['mean']:6.1f} p99 {t['p99']:6.1f} | "
              f"ITL p50 {i['p50']:5.2f} p99 {i['p99']:5.2f} | refill gap p50 {g['p50']:5.1f} max {g['max']:5.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
