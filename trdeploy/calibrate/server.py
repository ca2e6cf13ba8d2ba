"""What the server says about itself before a sweep: the models it serves, its vLLM version, its KV cache.

vLLM answers GET /v1/models (the served names, each with its `max_model_len`; behind the API key), GET
/version and GET /metrics (open with --api-key). The KV cache it allocated is in `vllm:cache_config_info`
(num_gpu_blocks x block_size; trdeploy.bench.prometheus). These facts are checked against the profile the
server is meant to run, so a calibration never describes another configuration than it says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from trdeploy.bench.prometheus import cache_config
from trdeploy.deployment import DeploymentProfile
from trdeploy.errors import TrdeployError
from trdeploy.sizing.calibration import ServerFacts


@dataclass(frozen=True)
class ServerInfo:
    models: tuple[str, ...]
    max_model_len: int | None
    vllm_version: str | None
    cache: dict[str, Any] | None  # trdeploy.bench.prometheus.cache_config

    def facts(self) -> ServerFacts:
        c = self.cache or {}
        return ServerFacts(
            vllm_version=self.vllm_version,
            num_gpu_blocks=c.get("num_gpu_blocks"),
            block_size=c.get("block_size"),
            kv_cache_size_tokens=c.get("kv_cache_size_tokens"),
            gpu_memory_utilization=c.get("gpu_memory_utilization"),
            cache_dtype=c.get("cache_dtype"),
            enable_prefix_caching=c.get("enable_prefix_caching"),
            max_model_len=self.max_model_len,
        )


def _get(client: httpx.Client, url: str) -> httpx.Response | None:
    try:
        return client.get(url)
    except httpx.HTTPError:
        return None


def discover(base_url: str, v1: str, api_key: str | None, model: str) -> ServerInfo:
    """Ask the server what it serves; one-line errors for no server, a missing key and another model."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    where = base_url + v1 + "/models"
    with httpx.Client(headers=headers, timeout=15.0, trust_env=True) as client:
        try:
            resp = client.get(where)
        except httpx.HTTPError as exc:
            raise TrdeployError(f"Cannot reach {where} ({type(exc).__name__}).", hint="Is the server running at --url?") from exc
        if resp.status_code == 401:
            raise TrdeployError(f"{where} answered 401: the server wants an API key.", hint="Pass --api-key (or set OPENAI_API_KEY).")
        if resp.status_code != 200:
            raise TrdeployError(f"{where} answered HTTP {resp.status_code}.", hint="Check --url: the server root of a vLLM OpenAI server.")
        try:
            data = resp.json()["data"]
            cards = {str(d["id"]): d for d in data}
        except (ValueError, KeyError, TypeError) as exc:
            raise TrdeployError(f"{where} does not list models the OpenAI way.", hint="Point --url at a vLLM server.") from exc
        if model not in cards:
            raise TrdeployError(
                f"The server does not serve {model!r} (it serves {', '.join(sorted(cards)) or 'nothing'}).",
                hint="Start it with the profile's arguments (--served-model-name), or pass --model NAME.",
            )
        mml = cards[model].get("max_model_len")
        version = None
        r = _get(client, base_url + "/version")
        if r is not None and r.status_code == 200:
            try:
                version = str(r.json().get("version")) or None
            except (ValueError, AttributeError):
                version = None
        cache = None
        r = _get(client, base_url + "/metrics")
        if r is not None and r.status_code == 200:
            cache = cache_config(r.text)
    return ServerInfo(models=tuple(sorted(cards)), max_model_len=int(mml) if isinstance(mml, int) else None, vllm_version=version, cache=cache)


def check_against_profile(info: ServerInfo, profile: DeploymentProfile) -> list[str]:
    """Differences that would make the calibration describe another configuration: an error for the context
    length and the KV cache dtype (they change what is measured), warnings for the rest."""
    ea = profile.engine_args
    warnings: list[str] = []
    if info.max_model_len is not None and info.max_model_len != ea.max_model_len:
        raise TrdeployError(
            f"The server runs max_model_len {info.max_model_len}, the profile {ea.max_model_len}.",
            hint="Start the server with the profile's arguments: " + " ".join(ea.serve_command()),
        )
    c = info.cache or {}
    dtype = c.get("cache_dtype")
    if dtype is not None and dtype != ea.kv_cache_dtype and not (dtype.startswith("fp8") and ea.kv_cache_dtype.startswith("fp8")):
        raise TrdeployError(
            f"The server's KV cache is {dtype}, the profile's {ea.kv_cache_dtype}.",
            hint="Start the server with the profile's arguments: " + " ".join(ea.serve_command()),
        )
    util = c.get("gpu_memory_utilization")
    if util is not None and abs(util - ea.gpu_memory_utilization) > 1e-6:
        warnings.append(f"The server runs gpu_memory_utilization {util:g}, the profile {ea.gpu_memory_utilization:g}: the memory fit uses the server's.")
    if info.cache is None:
        warnings.append("The server exports no vllm:cache_config_info: its KV cache size is predicted, not read, and memory is not calibrated.")
    if info.vllm_version is not None and info.vllm_version != profile.vllm_version:
        warnings.append(f"The server runs vLLM {info.vllm_version}, the profile was tuned for {profile.vllm_version}.")
    return warnings
