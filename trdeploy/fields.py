"""The kinds of value that reach generated files, each with its character set and length, in one place.

A profile is untrusted input (people share, copy and hand-edit them), and so is every option that ends up
in a Dockerfile, a shell line, a label, container arguments or PromQL. Each such field is declared with one
of these types, so pydantic refuses a bad value when the profile or option is read, before anything is
written. Patterns use `\\Z` (never `$`, which also matches before a trailing newline) and are full matches.
The quoting for each output language is in trdeploy.deploy.container; these sets are the first line, not
the only one.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints


def _no_control(value: str) -> str:
    if any(not ch.isprintable() for ch in value):
        raise ValueError("must not contain control characters or line breaks")
    return value


def _pattern(regex: str, what: str):
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"must be {what}")
        return value

    return AfterValidator(check)


# Free text that is printed or quoted, never parsed (a GPU's marketing name, a basis note): one line.
Text = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_no_control)]
ShortText = Annotated[str, StringConstraints(max_length=256), AfterValidator(_no_control)]

# A GPU tier of the catalog (h100, a100-80gb, rtx4090).
Tier = Annotated[str, _pattern(r"[a-z0-9][a-z0-9-]{0,31}", "a GPU tier name (a-z 0-9 -)")]

# A profile's (and an image's, a Kubernetes object's) name: letters, digits, '.', '_' and '-'.
NAME_RE = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"
Name = Annotated[str, _pattern(NAME_RE, "a name (1-63 of A-Z a-z 0-9 . _ -, starting and ending with a letter or digit)")]

# RFC 1123 label: namespaces and object names.
DNS_LABEL_RE = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
DnsLabel = Annotated[str, _pattern(DNS_LABEL_RE, "a DNS label (1-63 of a-z 0-9 -, starting and ending with a letter or digit)")]
# RFC 1123 subdomain: Secrets, StorageClasses, RuntimeClasses.
DNS_SUBDOMAIN_RE = rf"(?=.{{1,253}}\Z){DNS_LABEL_RE}(?:\.{DNS_LABEL_RE})*"
DnsSubdomain = Annotated[str, _pattern(DNS_SUBDOMAIN_RE, "a DNS subdomain (a-z 0-9 - and dots, at most 253)")]

# A Kubernetes label value.
LABEL_VALUE_RE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?"
LabelValue = Annotated[str, _pattern(LABEL_VALUE_RE, "a Kubernetes label value (at most 63 of A-Z a-z 0-9 - _ ., alphanumeric at both ends)")]

# A hub repository id, org/name, optionally @revision.
HUB_REPO_RE = r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}"
REVISION_RE = r"(?!.*\.\.)[\w][\w./-]{0,127}"
HubRepo = Annotated[str, _pattern(HUB_REPO_RE, "a hub repository id (ORG/NAME)")]
Revision = Annotated[str, _pattern(REVISION_RE, "a git revision (a branch, tag or commit: letters, digits, _ . / -, no '..')")]

# A model as vLLM takes it: a hub id, or a checkpoint folder whose last component names it in the image.
MODEL_FOLDER_RE = r"(?!\.{1,2}\Z)[A-Za-z0-9._-]{1,128}"
ModelRef = Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_no_control)]

# vLLM's version (`0.25.0`, `0.25.0.post1`, `0.25.0rc1`) and NVIDIA's driver and CUDA versions.
VERSION_RE = r"v?\d{1,3}\.\d{1,3}\.\d{1,3}(?:(?:\.post|rc|\.dev)\d{1,4})?"
Version = Annotated[str, _pattern(VERSION_RE, "a version like 0.25.0")]
DRIVER_RE = r"\d{1,4}(?:\.\d{1,4}){0,2}"
DriverVersion = Annotated[str, _pattern(DRIVER_RE, "an NVIDIA driver version like 580.65.06")]

# A container image reference, as the distribution grammar has it: [registry[:port]/]path[:tag][@sha256:digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REF_RE = (
    rf"(?=.{{1,255}}\Z)(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    rf"(?::[0-9]{{1,5}})?)/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?"
)
ImageRef = Annotated[str, _pattern(IMAGE_REF_RE, "an image reference ([REGISTRY/]NAME[:TAG][@sha256:DIGEST], lowercase name)")]

# Bounded numbers: what a profile may say without overflowing what it reaches (int32 in Kubernetes).
INT32_MAX = 2**31 - 1
Count = Annotated[int, Field(ge=1, le=1_000_000)]
GiBAmount = Annotated[float, Field(ge=0, le=1_000_000)]
Seconds = Annotated[float, Field(ge=0, le=7 * 86400)]
Millis = Annotated[float, Field(ge=0, le=1e9)]


def model_folder_name_ok(name: str) -> bool:
    return re.fullmatch(MODEL_FOLDER_RE, name) is not None


def is_image_ref(value: str) -> bool:
    return re.fullmatch(IMAGE_REF_RE, value) is not None


def json_safe(value: Any, where: str, *, max_depth: int = 8, max_items: int = 10_000) -> Any:
    """`value` if it is plain JSON-like data (str, finite number, bool, None, lists, str-keyed dicts), at
    most `max_depth` deep and `max_items` values in all, with no control characters in text; else ValueError.
    Iterative, so a deep value cannot exhaust the recursion."""
    seen = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > max_items:
            raise ValueError(f"{where} holds more than {max_items} values")
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise ValueError(f"{where} nests more than {max_depth} levels deep")
            if isinstance(item, dict):
                for key in item:
                    if not isinstance(key, str):
                        raise ValueError(f"{where} has a key that is not text")
                    _no_control(key)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{where} holds a number that is not finite")
        elif isinstance(item, str):
            if len(item) > 4096:
                raise ValueError(f"{where} holds text longer than 4096 characters")
            _no_control(item)
        elif not (item is None or isinstance(item, bool | int)):
            raise ValueError(f"{where} holds a {type(item).__name__}, not JSON-like data")
        elif isinstance(item, int) and abs(item) > 10**18:
            raise ValueError(f"{where} holds an integer beyond 10^18")
    return value
