#!/usr/bin/env python3
"""Write a Hugging Face tokenizer folder for Llama-3 Instruct, from llama-models' tiktoken file.

    python scripts/make_llama3_hf_tokenizer.py OUT_DIR [--check-only]

Reads llama_models/llama3/tokenizer.model (the tiktoken BPE ranks Meta ships in the
`llama-models` package), converts it with transformers' TikTokenConverter into a `tokenizers`
BPE, and writes tokenizer.json, tokenizer_config.json (with the Llama-3 Instruct chat template,
BOS <|begin_of_text|>, EOS <|eot_id|>), special_tokens_map.json and chat_template.jinja. Drop the
files into a checkpoint folder that lacks them (vLLM and `trdeploy quantize` need tokenizer.json
and a chat template).

Before writing, it checks token-for-token equality with llama_models' own Tokenizer on Turkish
text (the embedded corpus and calibration chats when trdeploy is importable, plus a fixed sample),
and that a chat rendered through the template tokenizes exactly as llama_models' ChatFormat
encodes the same dialog. Any difference aborts with exit code 1 and nothing written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# The Llama-3 Instruct chat template (as in meta-llama/Meta-Llama-3-8B-Instruct's tokenizer_config.json).
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

SAMPLE_TR = [
    "Merhaba, yarın saat 10:30'daki randevumu iptal etmek istiyorum.",
    "Çekoslovakyalılaştıramadıklarımızdan mısınız? Şişli'de ığdır, öğle, güneş, çiçek: ÇĞİÖŞÜ çğıöşü.",
    "Kredi kartımın hesap kesim tarihi ile son ödeme tarihi arasındaki fark nedir?\n\n1. Asgari ödeme: %20\n2. Tutar: 10.000,00 TL",
    "  baştaki ve sondaki boşluklar  ,\ttab\tve emoji 🙂 ile URL https://örnek.com.tr/sayfa?id=42 ",
]


def llama3_tokenizer():
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer.get_instance()


def build_fast_tokenizer():
    """A PreTrainedTokenizerFast equal to llama_models' tiktoken tokenizer."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    meta = llama3_tokenizer()
    model_file = Path(sys.modules[type(meta).__module__].__file__).parent / "tokenizer.model"
    specials = sorted(meta.special_tokens, key=meta.special_tokens.get)
    converter = TikTokenConverter(vocab_file=str(model_file), pattern=meta.pat_str, extra_special_tokens=specials)
    backend = converter.converted()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
    )
    # Llama-3's tokenizer.json prepends BOS through a post-processor; do the same.
    from tokenizers import processors

    bos = "<|begin_of_text|>"
    tokenizer.backend_tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, meta.special_tokens[bos])]
            ),
        ]
    )
    return tokenizer, meta


def turkish_texts() -> list[str]:
    texts = list(SAMPLE_TR)
    try:
        from trdeploy.text.embedded import calibration_conversations, embedded_pairs

        texts += [p.tr for p in embedded_pairs()]
        texts += [m["content"] for c in calibration_conversations() for m in c["messages"]]
    except Exception:  # trdeploy not importable: the fixed sample still checks the conversion
        pass
    return texts


def check(tokenizer, meta) -> list[str]:
    """Differences between the converted tokenizer and llama_models' (empty when equal)."""
    problems = []
    texts = turkish_texts()
    for i, text in enumerate(texts):
        want = meta.encode(text, bos=False, eos=False)
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if got != want:
            problems.append(f"text {i}: {len(got)} vs {len(want)} tokens, first difference at {next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))}")
        if tokenizer.decode(got) != text:
            problems.append(f"text {i}: decode does not round-trip")
    with_bos = tokenizer(SAMPLE_TR[0])["input_ids"]
    if with_bos != meta.encode(SAMPLE_TR[0], bos=True, eos=False):
        problems.append("BOS handling differs")

    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat

    dialog = [
        {"role": "system", "content": "Sen yardımsever bir Türkçe asistansın."},
        {"role": "user", "content": SAMPLE_TR[2]},
        {"role": "assistant", "content": "Hesap kesim tarihi, ekstrenin oluşturulduğu gündür."},
        {"role": "user", "content": "Peki gecikme faizi ne zaman işler?"},
    ]
    want = ChatFormat(meta).encode_dialog_prompt([RawMessage(role=m["role"], content=m["content"]) for m in dialog]).tokens
    rendered = tokenizer.apply_chat_template(dialog, tokenize=False, add_generation_prompt=True)
    got = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    if got != want:
        problems.append(f"chat template: {len(got)} vs {len(want)} tokens from llama_models' ChatFormat")
    print(f"checked {len(texts)} Turkish texts ({sum(len(meta.encode(t, bos=False, eos=False)) for t in texts)} tokens) and a 4-turn chat against llama_models", file=sys.stderr)
    return problems


def write(tokenizer, out: Path, *, force: bool) -> None:
    if out.exists() and any(out.glob("tokenizer*.json")) and not force:
        raise SystemExit(f"error: {out} already has tokenizer files; pass --force to overwrite them.")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=out))
    try:
        tokenizer.save_pretrained(tmp)
        # transformers 5 keeps the template in chat_template.jinja; older readers (transformers 4,
        # other engines) look in tokenizer_config.json and know the class as PreTrainedTokenizerFast.
        config_path = tmp / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config.update({"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE})
        config.pop("backend", None)
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (tmp / "special_tokens_map.json").write_text(
            json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>"}, indent=2) + "\n"
        )
        for item in tmp.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, nargs="?", help="folder to write the tokenizer files into (a checkpoint folder is fine)")
    parser.add_argument("--check-only", action="store_true", help="only compare with llama_models, write nothing")
    parser.add_argument("--force", action="store_true", help="overwrite existing tokenizer files in OUT")
    args = parser.parse_args(argv)
    if args.out is None and not args.check_only:
        parser.error("pass OUT or --check-only")
    tokenizer, meta = build_fast_tokenizer()
    problems = check(tokenizer, meta)
    if problems:
        for p in problems[:20]:
            print(f"mismatch: {p}", file=sys.stderr)
        print("error: the converted tokenizer differs from llama_models'; nothing written.", file=sys.stderr)
        return 1
    print("token-for-token equal to llama_models' Llama-3 tokenizer", file=sys.stderr)
    if args.out is not None and not args.check_only:
        write(tokenizer, args.out, force=args.force)
        from transformers import AutoTokenizer

        reloaded = AutoTokenizer.from_pretrained(args.out)
        if reloaded(SAMPLE_TR[2])["input_ids"] != meta.encode(SAMPLE_TR[2], bos=True, eos=False) or reloaded.chat_template != CHAT_TEMPLATE:
            print(f"error: the folder written to {args.out} does not reload to the same tokenizer.", file=sys.stderr)
            return 1
        print(f"wrote {', '.join(sorted(p.name for p in args.out.iterdir() if p.name.startswith(('tokenizer', 'special', 'chat'))))} to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
