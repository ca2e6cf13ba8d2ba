#!/usr/bin/env python3
"""Write N Turkish text prompts of exactly L Llama-3 tokens each (JSONL, {"prompt": ...}) for
comparing `trdeploy bench --prompts` with `vllm bench serve --dataset-name custom`: both tools then
send the same text to /v1/completions and the server tokenizes it the same way for both.

Each prompt is a run of the embedded Turkish corpus starting at a different document, cut to L
tokens with the Llama-3 tokenizer (llama-models, offline) and decoded back to text; no two prompts
share a first 16-token block, so prefix caching cannot reuse one prompt for another.

    python scripts/device/make_bench_prompts.py OUT.jsonl [--num 300] [--tokens 512]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trdeploy.embedded import embedded_pairs  # noqa: E402
from trdeploy.tokenizers import load_tokenizer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--num", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    encoding = load_tokenizer("llama3").encoding  # tiktoken, as llama-models ships it
    texts = [p.tr for p in embedded_pairs()]
    ids = [encoding.encode_ordinary(t) for t in texts]
    space = encoding.encode_ordinary(" ")
    seen, rows = set(), []
    for i in range(args.num):
        run: list[int] = []
        k = (i * 7) % len(texts)  # a different starting document for each prompt
        while len(run) < args.tokens:
            run += ids[k] + space
            k = (k + 1) % len(texts)
        text = encoding.decode(run[: args.tokens]).rstrip("\ufffd")
        again = encoding.encode_ordinary(text)
        n = len(again)
        head = tuple(again[:16])
        if head in seen:
            raise SystemExit(f"prompt {i} shares its first 16 tokens with another; use fewer prompts")
        seen.add(head)
        rows.append({"prompt": text, "tokens": n})
    args.out.write_text("".join(json.dumps({"prompt": r["prompt"]}, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    lens = sorted(r["tokens"] for r in rows)
    print(f"wrote {len(rows)} prompts to {args.out}: tokens min {lens[0]}, median {lens[len(lens) // 2]}, max {lens[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
