#!/usr/bin/env python3
"""Speed of `trdeploy profile` against the tokenizer's own raw batch encode, on a ~50 MB corpus.

What is timed, on the same text:
- raw: the tokenizer's own batch encode over every line, already in memory (tiktoken's
  `Encoding.encode_ordinary_batch`, default 8 threads; for a Hugging Face tokenizer,
  `tokenizers.Tokenizer.encode_batch(add_special_tokens=False)`);
- loop: a plain single-thread loop over the tokenizer's own single encode (a second reference);
- profile: the whole measurement `trdeploy profile --corpus FILE` runs (streamed from disk in ~1 MB
  batches, token counts, words, characters, word frequencies, percentiles, fragmented words).
Tokenizer loading is outside every timing. Runs alternate; the median of --repeats is reported,
and the script checks that all three count the same number of tokens.

    python scripts/bench_tokenize.py                      # builds a 50 MB Turkish corpus, Llama-3
    python scripts/bench_tokenize.py --llama3-hf          # also Llama-3 as a Hugging Face tokenizer.json
    python scripts/bench_tokenize.py --corpus my.txt -t ./my-model --json

The built corpus is the embedded Turkish text (parallel corpus and calibration conversations),
lines shuffled with a fixed seed and repeated to the size asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trdeploy.text.corpora import open_corpus
from trdeploy.text.inflation import measure, summarize
from trdeploy.text.tokenizers import HFTokenizer, TiktokenTokenizer, load_tokenizer, worker_threads


def build_corpus(path: Path, size_mb: float, seed: int = 0) -> None:
    from trdeploy.text.embedded import calibration_conversations, embedded_pairs

    lines = [p.tr for p in embedded_pairs()]
    for conv in calibration_conversations():
        lines += [m["content"].replace("\n", " ") for m in conv.get("messages", []) if isinstance(m.get("content"), str)]
    lines = [line for line in lines if line.strip()]
    rng = random.Random(seed)
    target = int(size_mb * 1_000_000)
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < target:
            rng.shuffle(lines)
            for line in lines:
                data = line + "\n"
                handle.write(data)
                written += len(data.encode("utf-8"))
                if written >= target:
                    break


def llama3_tokenizer_json(folder: Path) -> Path:
    """Llama-3's tiktoken BPE converted to tokenizer.json by transformers (the HF fast path)."""
    from llama_models.llama3.tokenizer import Tokenizer as Meta3
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from trdeploy.text.tokenizers import builtin_model_path

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "tokenizer.json"
    if not out.exists():
        TikTokenConverter(vocab_file=str(builtin_model_path("llama3")), pattern=Meta3.pat_str).converted().save(str(out))
    return folder


def raw_batch(tok, lines: list[str]) -> int:
    if isinstance(tok, TiktokenTokenizer):
        return sum(map(len, tok.encoding.encode_ordinary_batch(lines)))
    if isinstance(tok, HFTokenizer):
        return sum(len(e.ids) for e in tok.backend.encode_batch(lines, add_special_tokens=False))
    raise TypeError(type(tok))


def single_loop(tok, lines: list[str]) -> int:
    if isinstance(tok, TiktokenTokenizer):
        encode = tok.encoding.encode_ordinary
        return sum(len(encode(t)) for t in lines)
    encode = tok.backend.encode
    return sum(len(encode(t, add_special_tokens=False).ids) for t in lines)


def profile_run(tok, path: Path) -> int:
    measurements = measure(open_corpus(str(path)).batches(), [tok], parallel=False)
    (result,) = summarize(measurements, [tok])
    return result.turkish_tokens


def timed(fn, *args) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds of this process (all threads), and fn's result."""
    cpu_start, start = time.process_time(), time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu_start, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="a text file, one document a line (default: build one)")
    parser.add_argument("--size-mb", type=float, default=50.0, help="size of the built corpus (default 50)")
    parser.add_argument("-t", "--tokenizer", action="append", help="tokenizer spec as for `trdeploy profile` (default llama3)")
    parser.add_argument("--llama3-hf", action="store_true", help="also time Llama-3 converted to tokenizer.json (needs transformers)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-loop", action="store_true", help="skip the single-thread loop reference")
    parser.add_argument("--workdir", type=Path, help="where to build the corpus (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="trdeploy-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = args.corpus
    if path is None:
        path = workdir / f"turkish-{args.size_mb:g}mb.txt"
        if not path.exists() or path.stat().st_size < args.size_mb * 1_000_000:
            build_corpus(path, args.size_mb)
    lines = [line.rstrip("\r") for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]

    specs = args.tokenizer or ["llama3"]
    tokenizers = [load_tokenizer(spec) for spec in specs]
    if args.llama3_hf:
        tok = load_tokenizer(str(llama3_tokenizer_json(workdir / "llama3-hf")))
        tok.name = "llama3 (tokenizer.json)"
        tokenizers.append(tok)

    report = {
        "corpus": str(path),
        "megabytes": round(path.stat().st_size / 1_000_000, 2),
        "documents": len(lines),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "profile_threads": worker_threads(),
        "loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "results": [],
    }
    for tok in tokenizers:
        times: dict[str, list[float]] = {"raw": [], "loop": [], "profile": []}
        cpu: dict[str, list[float]] = {"raw": [], "loop": [], "profile": []}
        counts: dict[str, int] = {}
        methods = [("raw", raw_batch, lines), ("profile", profile_run, path)]
        if not args.no_loop:
            methods.insert(1, ("loop", single_loop, lines))
        for _ in range(args.repeats):
            for name, fn, arg in methods:
                seconds, cpu_seconds, count = timed(fn, tok, arg)
                times[name].append(seconds)
                cpu[name].append(cpu_seconds)
                counts[name] = count
        if len(set(counts.values())) != 1:
            raise SystemExit(f"token counts differ for {tok.name}: {counts}")
        median = {k: statistics.median(v) for k, v in times.items() if v}
        row = {
            "tokenizer": tok.name,
            "tokens": counts["raw"],
            "seconds_median": {k: round(v, 3) for k, v in median.items()},
            "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items() if v},
            "cpu_seconds_median": {k: round(statistics.median(v), 3) for k, v in cpu.items() if v},
            "profile_over_raw": round(median["profile"] / median["raw"], 3),
            "profile_over_raw_cpu": round(statistics.median(cpu["profile"]) / statistics.median(cpu["raw"]), 3),
        }
        if "loop" in median:
            row["profile_over_loop"] = round(median["profile"] / median["loop"], 3)
        report["results"].append(row)
        if not args.json:
            print(
                f"{tok.name}: {counts['raw']:,} tokens in {report['megabytes']} MB; median raw batch {median['raw']:.2f} s"
                + (f", single loop {median['loop']:.2f} s" if "loop" in median else "")
                + f", profile {median['profile']:.2f} s -> profile/raw = {row['profile_over_raw']:.3f}"
                + f" (CPU time: {row['profile_over_raw_cpu']:.3f})"
                + (f", profile/loop = {row['profile_over_loop']:.3f}" if "loop" in median else ""),
                flush=True,
            )
    report["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"machine: {report['cpus_usable']} usable CPUs, load {report['loadavg_start']:.2f} -> {report['loadavg_end']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
