"""`trdeploy profile`: every input kind and every bad input, with real files and the real tokenizers.

Token counts are checked against the tokenizers' own code (llama_models' Tokenizer.encode, the
`tokenizers` / `transformers` encode), never against numbers written into the test.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _cli import assert_one_line_error, invoke
from conftest import run_cli

from trdeploy.errors import TrdeployError
from trdeploy.text.corpora import BATCH_BYTES, open_corpus, parallel_corpus
from trdeploy.text.inflation import (
    bootstrap_ratio_ci,
    count_words,
    find_words,
    fragmented_words,
    measure,
    summarize,
    tokens_per_word,
)
from trdeploy.text.tokenizers import builtin_model_path, load_tokenizer

DATA = Path(__file__).resolve().parents[1] / "data"
OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def meta3():
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer.get_instance()


def meta_count(meta, texts) -> int:
    return sum(len(meta.encode(t, bos=False, eos=False)) for t in texts)


def profile_json(*args: str, env: dict[str, str] | None = None) -> dict:
    result = run_cli("profile", *args, "--json", env={**OFFLINE, **(env or {})})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def nonblank_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def assert_user_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    message = " ".join(result.stderr.split())  # rich may wrap the one line on a narrow terminal
    for needle in needles:
        assert needle in message, message


# ---------------------------------------------------------------------------------------------
# Words and statistics


def test_word_definition():
    assert find_words("Ankara'ya yarın 14:30'da gidiyorum — e-posta: TL’ye, don't!") == [
        "Ankara'ya", "yarın", "14", "30'da", "gidiyorum", "e", "posta", "TL’ye", "don't",
    ]  # fmt: skip
    assert count_words("İstanbul'da i\u0307ki kişi, 3 çocuk 🙂 ...") == 5  # combining dot stays in its word
    assert count_words(" — ... !! ") == 0


def test_tokens_per_word_interface(meta3):
    tok = load_tokenizer("llama3")
    texts = nonblank_lines(DATA / "profile_tr.txt")
    ratios = [len(meta3.encode(t, bos=False, eos=False)) / count_words(t) for t in texts]
    assert tokens_per_word(tok, texts, 100.0) == pytest.approx(max(ratios))
    assert tokens_per_word(tok, texts, 0.0) == pytest.approx(min(ratios))
    assert tokens_per_word(tok, texts) == pytest.approx(float(np.percentile(ratios, 95.0)))
    assert tokens_per_word(tok, [*texts, "—", "..."], 100.0) == pytest.approx(max(ratios))  # no words: left out
    with pytest.raises(TrdeployError, match="percentile"):
        tokens_per_word(tok, texts, 101.0)
    with pytest.raises(TrdeployError, match=r"no word|None of the texts"):
        tokens_per_word(tok, ["!!!"])


def test_bootstrap_interval():
    rng = np.random.default_rng(1)
    en = rng.integers(10, 60, size=500)
    tr = np.round(en * rng.normal(1.4, 0.15, size=500)).astype(int)
    point = tr.sum() / en.sum()
    lo, hi = bootstrap_ratio_ci(tr, en, seed=7)
    assert lo < point < hi
    assert (lo, hi) == bootstrap_ratio_ci(tr, en, seed=7)  # seeded
    lo_small, hi_small = bootstrap_ratio_ci(tr[:50], en[:50], seed=7)
    assert hi_small - lo_small > hi - lo  # fewer documents, wider interval
    assert bootstrap_ratio_ci(2 * en, en) == (2.0, 2.0)  # the same ratio everywhere: no spread
    # Above max_units the blocks of documents are resampled; still around the point estimate.
    big_en = rng.integers(10, 60, size=50_000)
    big_tr = np.round(big_en * rng.normal(1.4, 0.15, size=50_000)).astype(int)
    lo_b, hi_b = bootstrap_ratio_ci(big_tr, big_en, max_units=5_000)
    assert lo_b < big_tr.sum() / big_en.sum() < hi_b
    assert hi_b - lo_b < hi - lo


def test_fragmented_words_are_ranked_and_pieced():
    tok = load_tokenizer("llama3")
    counts = Counter({"gerçekleştirilemeyecek": 7, "ve": 50, "bir": 40, "randevunuzu": 5, "nadiren": 1, "2024": 9})
    words = fragmented_words(tok, counts, min_count=5, top=3)
    assert words[0].word == "gerçekleştirilemeyecek"
    assert all(w.count >= 5 for w in words) and "nadiren" not in [w.word for w in words]
    assert "2024" not in [w.word for w in words]  # numbers are not words with letters
    assert [w.tokens for w in words] == sorted((w.tokens for w in words), reverse=True)
    for w in words:
        assert w.tokens == len(w.pieces)
        assert "".join(w.pieces) == " " + w.word
        assert w.tokens == len(tok.encode_batch([" " + w.word])[0])


# ---------------------------------------------------------------------------------------------
# Tokenizers: counts equal the tokenizer's own encode


def test_llama3_counts_equal_llama_models(meta3):
    tok = load_tokenizer("llama3")
    texts = [
        *nonblank_lines(DATA / "profile_tr.txt"),
        "<|begin_of_text|> özel belirteç metin olarak sayılır <|eot_id|>",
        "a" * 30_000,  # llama_models splits runs over 25,000 characters before tiktoken
        ("kelime " * 5000) + "x" * 26_000,
        "",
    ]
    assert tok.encode_batch(texts) == [meta3.encode(t, bos=False, eos=False) for t in texts]
    many = texts * 40  # enough to go through the thread pool
    assert tok.count_batch(many) == [len(meta3.encode(t, bos=False, eos=False)) for t in many]


def test_llama4_counts_equal_llama_models():
    from llama_models.llama4.tokenizer import Tokenizer as Meta4

    meta4 = Meta4.get_instance()
    tok = load_tokenizer("llama4")
    texts = nonblank_lines(DATA / "profile_pairs_tr.txt") + nonblank_lines(DATA / "profile_pairs_en.txt")
    assert tok.count_batch(texts) == [len(meta4.encode(t, bos=False, eos=False)) for t in texts]
    assert tok.name == "llama4" and tok.kind == "tiktoken"


def test_tiktoken_file(tmp_path, meta3):
    from llama_models.llama3.tokenizer import Tokenizer as Meta3

    texts = nonblank_lines(DATA / "profile_tr.txt")
    # The Llama-3 file under another name is the Llama-3 tokenizer.
    copy = tmp_path / "tokenizer.model"
    shutil.copy(builtin_model_path("llama3"), copy)
    assert load_tokenizer(str(copy)).count_batch(texts) == [len(meta3.encode(t, bos=False, eos=False)) for t in texts]
    # A smaller tiktoken vocabulary (the first 3,000 Llama-3 ranks) takes the generic path.
    lines = builtin_model_path("llama3").read_text().splitlines()[:3000]
    small = tmp_path / "small.tiktoken"
    small.write_text("\n".join(lines) + "\n")
    tok = load_tokenizer(str(small))
    expected = [len(Meta3(small).encode(t, bos=False, eos=False)) for t in texts]
    assert tok.count_batch(texts) == expected
    assert sum(expected) > sum(len(meta3.encode(t, bos=False, eos=False)) for t in texts)  # really a smaller vocabulary


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A real byte-level BPE tokenizer trained on Turkish and English text, saved as a HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = nonblank_lines(DATA / "profile_tr.txt") + nonblank_lines(DATA / "profile_pairs_tr.txt")
    texts += nonblank_lines(DATA / "profile_pairs_en.txt")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts * 3, trainer)
    # Truncation saved in tokenizer.json must not cut the counts.
    tok.enable_truncation(max_length=8)
    folder = tmp_path_factory.mktemp("hf") / "tr-bpe"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>"}))
    return folder


def test_hf_folder_counts_equal_transformers(hf_folder):
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(str(hf_folder))
    tok = load_tokenizer(str(hf_folder))
    assert tok.kind == "huggingface" and tok.name == "tr-bpe"
    texts = nonblank_lines(DATA / "profile_tr.txt")
    expected = [len(auto.encode(t, add_special_tokens=False, truncation=False)) for t in texts]
    assert tok.count_batch(texts) == expected
    assert max(expected) > 8  # the saved truncation really was ignored
    assert "".join(tok.pieces(" Ankara'ya gidiyorum")) == " Ankara'ya gidiyorum"


def _hub_cache(root: Path, repo_type: str, repo_id: str, files: dict[str, Path]) -> None:
    """Lay out a Hugging Face hub cache entry as huggingface_hub writes it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = base / "snapshots" / commit
    for name, src in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, snapshot / name)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)


def test_hub_model_id_from_cache_offline(tmp_path, hf_folder):
    _hub_cache(tmp_path, "model", "acme/tr-bpe", {n: hf_folder / n for n in ("tokenizer.json", "tokenizer_config.json")})
    env = {"HF_HOME": str(tmp_path)}
    data = profile_json("-t", "acme/tr-bpe", "-t", str(hf_folder), "--corpus", str(DATA / "profile_tr.txt"), env=env)
    hub, local = data["results"]
    assert hub["tokenizer"] == "acme/tr-bpe" and hub["tokenizer_source"] == "hub:acme/tr-bpe"
    assert hub["turkish_tokens"] == local["turkish_tokens"] == sum(load_tokenizer(str(hf_folder)).count_batch(nonblank_lines(DATA / "profile_tr.txt")))
    # Not in the cache and offline: one clear line.
    assert_user_error(run_cli("profile", "-t", "acme/not-cached", env={**env, **OFFLINE}), "acme/not-cached", "local Hugging Face cache")


# ---------------------------------------------------------------------------------------------
# Corpora through the CLI (the real entry point), each compared with an independent count


def test_default_profile_is_llama3_on_embedded_corpus(meta3):
    from trdeploy.text.embedded import embedded_pairs

    pairs = embedded_pairs()
    data = profile_json()
    assert data["corpus"]["kind"] == "embedded" and data["corpus"]["documents"] == len(pairs)
    (r,) = data["results"]
    assert r["tokenizer"] == "llama3"
    assert r["turkish_tokens"] == meta_count(meta3, [p.tr for p in pairs])
    assert r["english_tokens"] == meta_count(meta3, [p.en for p in pairs])
    assert r["premium"] == round(r["turkish_tokens"] / r["english_tokens"], 4)
    assert r["premium_ci95"][0] <= r["premium"] <= r["premium_ci95"][1]
    assert r["turkish_words"] == sum(count_words(p.tr) for p in pairs)
    assert r["tokens_per_word"] == round(r["turkish_tokens"] / r["turkish_words"], 4)
    assert r["turkish_characters"] == sum(len(p.tr) for p in pairs)
    lengths = [len(meta3.encode(p.tr, bos=False, eos=False)) for p in pairs]
    assert r["document_tokens"]["max"] == max(lengths)
    assert r["document_tokens"]["p50"] in lengths
    human = run_cli("profile", env=OFFLINE)
    assert human.returncode == 0, human.stderr
    assert "premium TR/EN" in human.stdout and f"{r['premium']:.3f}x" in human.stdout


def test_flores_parallel_equals_llama_models(shared_data, tmp_path, meta3):
    flores = shared_data / "flores200"
    tr_lines, en_lines = [], []
    for split in ("dev", "devtest"):
        tr_lines += (flores / f"flores_tur_Latn_{split}.txt").read_text(encoding="utf-8").splitlines()
        en_lines += (flores / f"flores_eng_Latn_{split}.txt").read_text(encoding="utf-8").splitlines()
    tr_file, en_file = tmp_path / "tr.txt", tmp_path / "en.txt"
    tr_file.write_text("\n".join(tr_lines) + "\n", encoding="utf-8")
    en_file.write_text("\n".join(en_lines) + "\n", encoding="utf-8")
    data = profile_json("--parallel", str(tr_file), str(en_file))
    (r,) = data["results"]
    assert r["documents"] == len(tr_lines) == 2009
    assert r["turkish_tokens"] == meta_count(meta3, tr_lines)
    assert r["english_tokens"] == meta_count(meta3, en_lines)
    assert r["premium"] == round(meta_count(meta3, tr_lines) / meta_count(meta3, en_lines), 4)
    assert 1.3 < r["premium"] < 1.5 and 1.9 < r["tokens_per_word"] < 2.4  # the known Llama-3 range
    assert r["premium_ci95"][0] < r["premium"] < r["premium_ci95"][1]


def test_tatoeba_tsv(shared_data, meta3):
    path = shared_data / "tatoeba" / "eng-tur.tsv"
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    data = profile_json("--parallel-tsv", str(path))
    (r,) = data["results"]
    assert r["documents"] == len(rows)
    assert r["turkish_tokens"] == meta_count(meta3, [row[3] for row in rows])  # Turkish is column 4
    assert r["english_tokens"] == meta_count(meta3, [row[2] for row in rows])


def test_small_parallel_and_tsv_layouts(meta3):
    tr = nonblank_lines(DATA / "profile_pairs_tr.txt")
    en = nonblank_lines(DATA / "profile_pairs_en.txt")
    data = profile_json("--parallel", str(DATA / "profile_pairs_tr.txt"), str(DATA / "profile_pairs_en.txt"), "-t", "llama3", "-t", "llama4")
    assert [r["tokenizer"] for r in data["results"]] == ["llama3", "llama4"]
    assert data["results"][0]["turkish_tokens"] == meta_count(meta3, tr)
    assert data["results"][0]["english_tokens"] == meta_count(meta3, en)
    tatoeba = profile_json("--parallel-tsv", str(DATA / "profile_tatoeba.tsv"))["results"][0]
    rows = [line.split("\t") for line in (DATA / "profile_tatoeba.tsv").read_text(encoding="utf-8").splitlines()]
    assert tatoeba["turkish_tokens"] == meta_count(meta3, [row[3] for row in rows])
    header = profile_json("--parallel-tsv", str(DATA / "profile_header.tsv"))
    assert header["corpus"]["documents"] == 3  # the header row is not a pair
    assert header["results"][0]["turkish_tokens"] == meta_count(meta3, ["Günaydın!", "Bu ne kadar?", "Çok teşekkür ederim."])
    swapped = profile_json("--parallel-tsv", str(DATA / "profile_header.tsv"), "--tr-column", "2", "--en-column", "3")
    assert swapped["corpus"]["documents"] == 3
    assert swapped["results"][0]["turkish_tokens"] == header["results"][0]["english_tokens"]
    assert swapped["results"][0]["english_tokens"] == header["results"][0]["turkish_tokens"]


def test_text_corpus(meta3):
    docs = nonblank_lines(DATA / "profile_tr.txt")
    data = profile_json("--corpus", str(DATA / "profile_tr.txt"))
    (r,) = data["results"]
    assert data["corpus"]["documents"] == len(docs) and data["corpus"]["skipped_blank"] == 2
    assert r["turkish_tokens"] == meta_count(meta3, docs)
    assert r["english_tokens"] is None and r["premium"] is None
    assert r["turkish_words"] == sum(count_words(d) for d in docs)


def test_jsonl_field_and_chat_messages(meta3):
    rows = [json.loads(line) for line in (DATA / "profile_docs.jsonl").read_text(encoding="utf-8").splitlines()]
    data = profile_json("--corpus", str(DATA / "profile_docs.jsonl"), "--field", "body")
    assert data["corpus"]["documents"] == 3 and data["corpus"]["skipped_blank"] == 1
    assert data["results"][0]["turkish_tokens"] == meta_count(meta3, [r["body"] for r in rows])

    chats = [json.loads(line) for line in (DATA / "profile_chat.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]

    def text(message):
        content = message["content"]
        return content if isinstance(content, str) else "".join(part["text"] for part in content)

    expected = ["\n".join(text(m) for m in chat["messages"]) for chat in chats]
    data = profile_json("--corpus", str(DATA / "profile_chat.jsonl"))  # `messages` found without --field
    assert data["corpus"]["field"] == "messages" and data["corpus"]["documents"] == 3
    assert data["results"][0]["turkish_tokens"] == meta_count(meta3, expected)


def test_csv_with_quoted_newlines(meta3):
    import csv

    with open(DATA / "profile_tickets.csv", newline="", encoding="utf-8") as handle:
        bodies = [row["body"] for row in csv.DictReader(handle) if row["body"].strip()]
    assert any("\n" in b for b in bodies)
    data = profile_json("--corpus", str(DATA / "profile_tickets.csv"), "--field", "body")
    assert data["corpus"]["documents"] == len(bodies) == 3
    assert data["results"][0]["turkish_tokens"] == meta_count(meta3, bodies)


def test_parquet_corpus(tmp_path, meta3):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = nonblank_lines(DATA / "profile_tr.txt")
    path = tmp_path / "tr.parquet"
    pq.write_table(pa.table({"id": list(range(len(docs) + 1)), "content": [*docs, None]}), path, row_group_size=4)
    data = profile_json("--corpus", str(path), "--field", "content")
    assert data["corpus"]["documents"] == len(docs) and data["corpus"]["skipped_blank"] == 1
    assert data["results"][0]["turkish_tokens"] == meta_count(meta3, docs)
    assert_user_error(run_cli("profile", "--corpus", str(path), "--field", "body"), "no field 'body'", "content")


def test_hub_dataset_from_cache_offline(tmp_path, meta3):
    pa = pytest.importorskip("pyarrow")
    pytest.importorskip("datasets")
    import pyarrow.parquet as pq

    docs = nonblank_lines(DATA / "profile_tr.txt")
    local = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"text": docs}), local)
    _hub_cache(tmp_path / "hf", "dataset", "acme/tr-support", {"data/train-00000-of-00001.parquet": local})
    env = {"HF_HOME": str(tmp_path / "hf")}
    data = profile_json("--corpus", "acme/tr-support", "--limit", "5", env=env)
    assert data["corpus"]["kind"] == "hub_dataset" and data["corpus"]["documents"] == 5
    assert data["results"][0]["turkish_tokens"] == meta_count(meta3, docs[:5])
    assert_user_error(run_cli("profile", "--corpus", "acme/tr-support", "--split", "test", env={**env, **OFFLINE}), "acme/tr-support", "split")


def test_output_file_is_written_once(tmp_path):
    out = tmp_path / "profile.json"
    result = run_cli("profile", "--corpus", str(DATA / "profile_tr.txt"), "-o", str(out), env=OFFLINE)
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert saved["results"][0]["tokenizer"] == "llama3"
    again = run_cli("profile", "--corpus", str(DATA / "profile_tr.txt"), "-o", str(out), env=OFFLINE)
    assert_user_error(again, "already exists", "--force")
    assert json.loads(out.read_text()) == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profile.json"]


def test_failed_run_writes_no_output(tmp_path):
    out = tmp_path / "profile.json"
    result = run_cli("profile", "--corpus", str(DATA / "profile_cp1254.txt"), "-o", str(out), env=OFFLINE)
    assert_user_error(result, "not UTF-8")
    assert list(tmp_path.iterdir()) == []


def test_large_corpus_is_streamed_in_batches(tmp_path, meta3):
    docs = nonblank_lines(DATA / "profile_tr.txt")
    path = tmp_path / "big.txt"
    repeats = 3 * BATCH_BYTES // sum(len(d) + 1 for d in docs) + 1
    path.write_text("\r\n".join(docs * repeats) + "\r\n", encoding="utf-8")  # CRLF: \r is not text
    corpus = open_corpus(str(path))
    sizes = [len(batch.turkish) for batch in corpus.batches()]
    assert len(sizes) >= 3 and sum(sizes) == len(docs) * repeats
    tok = load_tokenizer("llama3")
    measurements = measure(open_corpus(str(path)).batches(), [tok], parallel=False)
    (profile,) = summarize(measurements, [tok])
    assert profile.turkish_tokens == meta_count(meta3, docs) * repeats
    assert profile.documents == len(docs) * repeats
    assert measurements.turkish_tokens[0][0].dtype == np.int64  # compact per-document arrays


def test_not_utf8_line_number_past_the_first_block(tmp_path):
    good = "Bu satır UTF-8 ile yazıldı ve sorunsuz okunuyor.\n"
    lines_before = 2 * BATCH_BYTES // len(good.encode("utf-8")) + 7
    path = tmp_path / "mixed.txt"
    path.write_bytes((good * lines_before).encode("utf-8") + "Kötü satır: ğüşıöç\n".encode("cp1254") + good.encode("utf-8"))
    with pytest.raises(TrdeployError, match=rf"line {lines_before + 1} has the byte 0xf6"):
        list(open_corpus(str(path)).batches())


def test_parallel_corpus_api_counts_blank_pairs(tmp_path):
    (tmp_path / "tr.txt").write_text("Merhaba\n\nGüle güle\n\n", encoding="utf-8")
    (tmp_path / "en.txt").write_text("Hello\n\n\nBye\n", encoding="utf-8")
    corpus = parallel_corpus(tmp_path / "tr.txt", tmp_path / "en.txt")
    batches = list(corpus.batches())
    assert sum(len(b.turkish) for b in batches) == 3 and corpus.skipped_blank == 1
    assert corpus.warnings and "one blank side" in corpus.warnings[0]


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, nothing on stdout


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--corpus", "tests/data/profile_nope.txt"], ["profile_nope.txt", "does not exist"]),
        (["--corpus", str(DATA / "profile_empty.txt")], ["profile_empty.txt", "is empty"]),
        (["--corpus", str(DATA / "profile_blank.txt")], ["no documents"]),
        (["--corpus", str(DATA / "profile_cp1254.txt")], ["not UTF-8", "line 1", "iconv"]),
        (["--corpus", str(DATA / "profile_missing_field.jsonl"), "--field", "body"], ["line 2", "no field 'body'", "--field"]),
        (["--corpus", str(DATA / "profile_docs.jsonl")], ["no 'text' or 'messages' field", "body"]),
        (["--corpus", str(DATA / "profile_bad_json.jsonl")], ["line 2", "not valid JSON"]),
        (["--corpus", str(DATA / "profile_tickets.csv"), "--field", "nope"], ["no field 'nope'", "body"]),
        (
            ["--parallel", str(DATA / "profile_pairs_tr.txt"), str(DATA / "profile_pairs_en_short.txt")],
            ["different lengths", "10 lines", "has 9"],
        ),
        (["--parallel", str(DATA / "profile_pairs_tr.txt"), str(DATA / "profile_cp1254.txt")], ["not UTF-8"]),
        (["--parallel-tsv", str(DATA / "profile_tr.txt")], ["Turkish and English columns", "--tr-column"]),
        (["-t", "llama5"], ["Unknown tokenizer 'llama5'"]),
        (["-t", "./no/such/tokenizer"], ["does not exist"]),
        (["-t", str(DATA / "profile_tr.txt")], ["neither a tiktoken BPE file nor a tokenizer.json"]),
        (["-t", str(DATA)], ["holds no tokenizer"]),
        (["--corpus", str(DATA / "profile_tr.txt"), "--parallel-tsv", str(DATA / "profile_tatoeba.tsv")], ["cannot be used together"]),
        (["--corpus", str(DATA / "profile_tr.txt"), "--limit", "0"], ["--limit"]),
        (["--corpus", "acme/no-such-dataset"], ["acme/no-such-dataset", "cache"]),
    ],
    ids=[
        "missing-file", "empty-file", "blank-file", "not-utf8", "jsonl-missing-field", "jsonl-no-text-field",
        "jsonl-invalid", "csv-missing-column", "parallel-lengths", "parallel-not-utf8", "tsv-columns-unknown",
        "unknown-tokenizer", "missing-tokenizer-path", "not-a-tokenizer-file", "folder-without-tokenizer",
        "two-corpora", "limit-zero", "hub-dataset-not-cached",
    ],
)
def test_bad_input_is_one_line_exit_2(args, needles):
    assert_user_error(run_cli("profile", *args, env=OFFLINE, cwd=DATA.parent.parent), *needles)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--limit", "0"), ("--min-count", "0"), ("--top-words", "-1"), ("--resamples", "99"), ("--seed", "-1"), ("--tr-column", "0")],
)
def test_out_of_range_option_is_one_line_naming_the_flag(flag, value):
    # ProfileRequest checks the range; main turns its ValidationError into one line naming the flag.
    result = invoke("profile", flag, value)
    assert_one_line_error(result, contains=f"{flag}: ")
    assert "See `trdeploy profile --help`" in result.stderr


def test_bad_tiktoken_file(tmp_path):
    path = tmp_path / "broken.model"
    path.write_text("IQ== 0\nIg== 1\nthis is not base64 or a rank\n")
    assert_user_error(run_cli("profile", "-t", str(path), env=OFFLINE), "line 3", "not a tiktoken BPE file")


def test_single_thread_gives_the_same_counts(meta3):
    docs = nonblank_lines(DATA / "profile_tr.txt")
    single = profile_json("--corpus", str(DATA / "profile_tr.txt"), env={"TRDEPLOY_THREADS": "1"})
    assert single["results"][0]["turkish_tokens"] == meta_count(meta3, docs)
    assert_user_error(run_cli("profile", env={**OFFLINE, "TRDEPLOY_THREADS": "many"}), "TRDEPLOY_THREADS")
