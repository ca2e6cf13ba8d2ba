"""trdeploy.hub: the one hub-id rule, path-or-id rule and mapping of huggingface_hub errors."""

from __future__ import annotations

import httpx
import pytest
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from trdeploy.hub import hub_error, is_hub_id, looks_like_path, split_revision


def _response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/acme/x"))


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("meta-llama/Meta-Llama-3-8B", True),
        ("acme/tr-bpe@main", True),
        ("acme/tr-bpe@refs/pr/1", True),
        ("llama3", False),
        ("./acme/x", False),
        ("a/b/c", False),
        ("-acme/x", False),
    ],
)
def test_hub_id(spec, expected):
    assert is_hub_id(spec) is expected


def test_hub_id_options():
    assert not is_hub_id("acme/x@main", revision=False)
    assert is_hub_id("acme/x", revision=False)
    assert not is_hub_id("acme/corpus.jsonl", file_suffixes=(".jsonl",))
    assert split_revision("acme/x@v1") == ("acme/x", "v1") and split_revision("acme/x") == ("acme/x", None)


@pytest.mark.parametrize("spec", ["./x", "/abs/x", "~/x", "a/b/c", "C:\\data\\x", "train.JSONL"])
def test_looks_like_path(spec):
    assert looks_like_path(spec, (".jsonl",))


def test_an_id_is_not_a_path():
    assert not looks_like_path("acme/x") and not looks_like_path("llama3")


def test_hub_error_messages():
    gated = hub_error("meta-llama/x", GatedRepoError("gated", response=_response(401)))
    assert "gated" in gated.message and "HF_TOKEN" in gated.one_line()
    missing = hub_error("acme/x", RepositoryNotFoundError("missing", response=_response(401)), kind="tokenizer", instead="pass a folder")
    assert "acme/x" in missing.message and "private" in missing.message and "tokenizer" in missing.message
    assert "pass a folder" in missing.one_line()
    assert "revision" in hub_error("acme/x", RevisionNotFoundError("no rev", response=_response(404))).message
    for offline in (LocalEntryNotFoundError("not cached"), OfflineModeIsEnabled("offline")):
        assert "not in the local Hugging Face cache" in hub_error("acme/x", offline).message
    refused = hub_error("acme/x", HfHubHTTPError("forbidden", response=_response(403)))
    assert "HTTP 403" in refused.message
    other = hub_error("acme/x", RuntimeError("boom\nsecond line"))
    assert "RuntimeError: boom" in other.message and "second line" not in other.one_line()
