"""The Hugging Face hub, in one place: what a hub id is, when a value is meant as a path, and what each
huggingface_hub failure tells the user (one line, with what to do).

Models, tokenizers and datasets are named the same way on the hub (`org/name`, models and tokenizers
optionally `@revision`), so every command reads those names with these rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from trdeploy.errors import TrdeployError

# org/name, optionally @branch, tag or commit. Matched whole with fullmatch: `$` would also accept a
# trailing newline, which then lands in generated files.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?", re.ASCII)


def is_hub_id(spec: str, *, revision: bool = True, file_suffixes: Iterable[str] = ()) -> bool:
    """`org/name` (`org/name@rev` when `revision`); a name ending in one of `file_suffixes` is a file, not an id."""
    if not HUB_ID.fullmatch(spec) or (not revision and "@" in spec):
        return False
    return Path(spec.partition("@")[0]).suffix.lower() not in {s.lower() for s in file_suffixes}


def split_revision(spec: str) -> tuple[str, str | None]:
    """`org/name@rev` -> (`org/name`, `rev`); no revision -> None."""
    repo_id, _, revision = spec.partition("@")
    return repo_id, revision or None


def looks_like_path(spec: str, file_suffixes: Iterable[str] = ()) -> bool:
    """Whether the user meant `spec` as a local path (so a missing one is "does not exist", not an unknown id)."""
    return (
        spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or "\\" in spec
        or Path(spec).suffix.lower() in {s.lower() for s in file_suffixes}
    )


def _names(exc: BaseException) -> set[str]:
    # By class name along the MRO, so callers need not import huggingface_hub to map its errors.
    return {cls.__name__ for cls in type(exc).__mro__}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def not_cached_error(repo_id: str, *, instead: str) -> TrdeployError:
    return TrdeployError(
        f"{repo_id} is not in the local Hugging Face cache and the hub cannot be reached (HF_HUB_OFFLINE or no network).",
        hint=f"Download it once online (`hf download`, or unset HF_HUB_OFFLINE), or {instead}.",
    )


def hub_error(repo_id: str, exc: BaseException, *, kind: str = "model", instead: str = "pass a local folder") -> TrdeployError:
    """The one-line error for a failed hub lookup of `repo_id` (a `kind`: model, tokenizer, dataset);
    `instead` is what the user can do without the hub."""
    names = _names(exc)
    if "GatedRepoError" in names:  # a RepositoryNotFoundError subclass: first
        return TrdeployError(
            f"{repo_id} is a gated repository and this machine has no access to it.",
            hint=f"Accept its license on https://huggingface.co/{repo_id} and set HF_TOKEN (or run `hf auth login`).",
        )
    if "RepositoryNotFoundError" in names or "DatasetNotFoundError" in names:
        return TrdeployError(
            f"No {kind} '{repo_id}' on the Hugging Face hub (or it is private).",
            hint=f"Check the id; for a private repository set HF_TOKEN; or {instead}.",
        )
    if "RevisionNotFoundError" in names:
        return TrdeployError(f"{repo_id}: that revision does not exist.", hint="Check the branch, tag or commit after '@'.")
    if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}:
        return not_cached_error(repo_id, instead=instead)
    if "HfHubHTTPError" in names:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return TrdeployError(
                f"The hub refused access to {repo_id} (HTTP {status}).",
                hint="Set HF_TOKEN to a token that can read it (and accept its license on the hub).",
            )
        return TrdeployError(f"The hub returned an error for {repo_id}: {_first_line(exc)}", hint=f"Try again later, or {instead}.")
    return TrdeployError(
        f"Could not read {repo_id} from the Hugging Face hub: {type(exc).__name__}: {_first_line(exc)}",
        hint=f"Check the network and the id (HF_HUB_OFFLINE=1 uses the local cache), or {instead}.",
    )
