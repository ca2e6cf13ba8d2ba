#!/usr/bin/env python3
"""Write N Turkish text prompts of exactly L Llama-3 tokens each (JSONL, {"prompt": ...}) for
comparing `trdeploy bench --prompts` with `vllm bench serve --dataset-name custom`: both tools then
send the same text to /v1/completions and the server tokenizes it the same way for both.

Each prompt is a run of the embedded Turkish corpus starting at a different document, cut to L
tokens and decoded back to text; no two prompts share a first 16-token block, so prefix caching
cannot reuse one prompt for another. Tokens are counted with the served model's tokenizer.json
(--tokenizer MODEL_DIR, the `tokenizers` library) or, by default, the Llama-3 tokenizer from
llama-models.

    python scripts/device/make_bench_prompts.py OUT.jsonl [--num 300] [--tokens 512] [--tokenizer MODEL_DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trdeploy.text.embedded import embedded_pairs


class _Codec:
    """encode (no special tokens) / decode with a tokenizer.json, or Llama-3's tiktoken file."""

    def __init__(self, folder: Path | None) -> None:
        if folder is not None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            self.encode = lambda text: tok.encode(text, add_special_tokens=False).ids
            self.decode = tok.decode
        else:
            from trdeploy.text.tokenizers import load_tokenizer

            encoding = load_tokenizer("llama3").encoding  # tiktoken, as llama-models ships it
            self.encode, self.decode = encoding.encode_ordinary, encoding.decode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--num", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--tokenizer", type=Path, default=None, help="a folder with tokenizer.json (default: Llama-3 from llama-models)")
    args = ap.parse_args()
    codec = _Codec(args.tokenizer)
    texts = [p.tr for p in embedded_pairs()]
    ids = [codec.encode(t) for t in texts]
    space = codec.encode(" ")
    seen, rows = set(), []
    for i in range(args.num):
        run: list[int] = []
        k = (i * 7) % len(texts)  # a different starting document for each prompt
        while len(run) < args.tokens:
            run += ids[k] + space
            k = (k + 1) % len(texts)
        text = codec.decode(run[: args.tokens]).rstrip("\ufffd")
        again = codec.encode(text)
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
