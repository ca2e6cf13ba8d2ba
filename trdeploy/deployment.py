"""The DeploymentProfile: the one document every command after `tune` reads.

`tune` decides; `build`, `render-k8s` and `bench` read. `engine_args` maps 1:1 onto `vllm serve`
flags (vLLM's own names, underscores), so nothing downstream re-derives an engine setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trdeploy import __version__
from trdeploy.errors import TrdeployError
from trdeploy.output import write_atomic

# 2: the profile is complete for every command after tune: engine_args.served_model_name always set, the
# tier's node facts (GPUs per node, driver, CUDA build) in `gpu`, the start-up budget, the capacity plan.
SCHEMA_VERSION = 2

# The allowed values, in one place: tune's options, the memory accounting and the profile read these.
Quantization = Literal["none", "awq", "fp8"]  # weights: bf16, AWQ int4, fp8
KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]  # vLLM's --kv-cache-dtype values we size
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
KV_CACHE_DTYPES: tuple[str, ...] = get_args(KvCacheDtype)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class EngineArgs(_Strict):
    """vLLM engine arguments, named as `vllm serve` names them (`--max-model-len` is `max_model_len`)."""

    model: str
    # Always set (tune writes the model id unless told otherwise): the name clients send, the metrics'
    # model_name label, the same whether the weights are mounted, baked or downloaded.
    served_model_name: str
    tensor_parallel_size: int = Field(1, ge=1)
    dtype: str = "auto"
    max_model_len: int = Field(..., ge=16)
    max_num_seqs: int = Field(..., ge=1)
    max_num_batched_tokens: int = Field(..., ge=1)
    gpu_memory_utilization: float = Field(..., gt=0.0, le=1.0)
    kv_cache_dtype: KvCacheDtype = "auto"
    # Only for what vLLM cannot detect from the checkpoint (online fp8). AWQ and compressed-tensors
    # checkpoints are detected by vLLM itself, so this stays None for them.
    quantization: str | None = None
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None

    def to_cli_args(self) -> list[str]:
        """The flags for `vllm serve MODEL ...` (the model is positional, so it is not included)."""
        args: list[str] = []
        for name, value in self.model_dump(exclude={"model"}).items():
            if value is None:
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + name.replace("_", "-"))
            else:
                args.extend([flag, str(value)])
        return args

    def serve_command(self) -> list[str]:
        return ["vllm", "serve", self.model, *self.to_cli_args()]


class ModelInfo(_Strict):
    """What the profile was tuned for: the checkpoint and the architecture facts that matter for sizing."""

    id: str
    architecture: str = "LlamaForCausalLM"
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    num_parameters: int
    tokenizer: str | None = None


class GpuInfo(_Strict):
    """The GPU tier and the facts about its nodes that `build` and `render-k8s` need (tune writes them from
    the GPU catalog, trdeploy.sizing.gpus, or from `tune --driver/--cuda/--gpus-per-node`)."""

    tier: str
    count: int = Field(1, ge=1)
    name: str | None = None
    memory_gib: float | None = None
    node_labels: list[str] = Field(default_factory=list)
    hourly_usd: float | None = None
    gpus_per_node: int = Field(..., ge=1)  # GPUs in one node of the tier
    driver: str  # NVIDIA driver on the nodes (given, or the tier's assumed driver)
    driver_source: str = ""  # "given" or "assumed for the tier"
    cuda: str  # CUDA build of vLLM's image: the newest the driver runs
    min_driver: str  # the driver that CUDA build needs (render-k8s keeps pods off older nodes)


class Workload(_Strict):
    prompt_tokens: int = Field(..., ge=1)
    output_tokens: int = Field(..., ge=1)
    concurrency: int | None = Field(None, ge=1)
    requests_per_day: float | None = Field(None, ge=0)
    peak_factor: float = Field(3.0, ge=1.0)
    context_words: int | None = None
    tokens_per_word: float | None = None


class SLA(_Strict):
    """Latency targets. Any unset target is not checked."""

    ttft_p95_ms: float | None = Field(None, gt=0)
    e2e_p95_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)


class Startup(_Strict):
    """Predicted seconds from container start until GET /health answers 200 (tune decides; build and
    render-k8s read it for the HEALTHCHECK start period and the startupProbe budget)."""

    weights_load_s: float = Field(..., ge=0)  # checkpoint bytes over `read_gb_per_s`
    read_gb_per_s: float = Field(..., gt=0)  # the storage bandwidth assumed for the weights
    engine_init_s: float = Field(..., ge=0)  # process start, profile run, KV allocation, CUDA graphs, warm compile cache
    compile_s: float = Field(..., ge=0)  # cold_s - warm_s: full torch.compile, first-start kernel JIT, cold Python caches
    cold_s: float = Field(..., ge=0)  # first start, empty compile cache
    warm_s: float = Field(..., ge=0)  # restart with the compile cache volume kept
    budget_s: int = Field(..., ge=1)  # seconds a fresh container gets before failed health checks count
    budget_basis: str = ""  # the margin over cold_s (trdeploy.sizing.startup.startup_budget_s)
    basis: str = ""  # where the numbers come from (measured point or assumption)


class CapacityPlan(_Strict):
    """How many replicas the traffic needs, each loaded up to the SLA capacity (tune decides; render-k8s
    reads it for the autoscaler's min/max replicas and its per-replica target).

    `per_replica_concurrency` equals `Prediction.sla_capacity_per_replica` when an SLA holds (else the
    KV cache's capacity at the typical request); `replicas_max` serves the peak (`Prediction.replicas`),
    `replicas_min` the average load (peak / peak_factor); `basis` says how both were derived."""

    per_replica_concurrency: int = Field(..., ge=1)  # requests in flight per replica the autoscaler targets
    requests_per_s_per_replica: float = Field(..., ge=0)  # predicted throughput of one replica at that concurrency
    replicas_min: int = Field(..., ge=1)
    replicas_max: int = Field(..., ge=1)
    peak_concurrency: float | None = None  # requests in flight at peak over all replicas (--concurrency, or Little's law)
    peak_requests_per_s: float | None = None  # with --requests-per-day
    basis: str = ""


class Prediction(_Strict):
    """What tune predicts.

    - `sla_max_concurrency`: the highest per-replica concurrency at which the SLA holds *that this
      configuration admits* (capped by engine_args.max_num_seqs and the KV cache).
    - `sla_capacity_per_replica`: the same, independent of max_num_seqs (capped only by the KV cache at the
      typical request): what one replica can carry under the SLA. When tune chooses max_num_seqs itself it
      is at least this, so the two agree; with --max-num-seqs given they can differ. None: no SLA.
    - `capacity`: the replicas for the traffic (min/max) at that per-replica load.
    - `startup`: predicted start-up seconds and the start-up budget (trdeploy.sizing.startup).
    """

    weights_gib: float
    kv_cache_gib: float
    kv_cache_tokens: int
    kv_bytes_per_token: int
    max_concurrency: dict[str, float]
    tpot_ms: float
    ttft_ms: float
    e2e_ms: float
    output_tokens_per_s: float
    replicas: int = 1
    hourly_cost_usd: float | None = None
    sla_met: bool | None = None
    sla_max_concurrency: int | None = None
    sla_capacity_per_replica: int | None = None
    capacity: CapacityPlan
    startup: Startup
    details: dict[str, Any] = Field(default_factory=dict)


def check_schema_version(version: Any, where: Any) -> None:
    """Profiles of another schema are refused in one line (no field-by-field guessing at what they meant)."""
    if version == SCHEMA_VERSION:
        return
    if isinstance(version, int) and not isinstance(version, bool) and 1 <= version < SCHEMA_VERSION:
        raise TrdeployError(
            f"{where} is a schema {version} DeploymentProfile from an older trdeploy; this one reads schema {SCHEMA_VERSION}.",
            hint="Re-run `trdeploy tune` (with the same options) to write it again.",
        )
    raise TrdeployError(
        f"{where} has schema_version {str(version)[:20]!r}; this trdeploy reads schema {SCHEMA_VERSION}.",
        hint="Write it with this trdeploy's `trdeploy tune`, or upgrade trdeploy.",
    )


class DeploymentProfile(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str
    created_by: str = f"trdeploy {__version__}"
    vllm_version: str = "0.25.0"
    model: ModelInfo
    quantization: Quantization = "none"
    gpu: GpuInfo
    engine_args: EngineArgs
    workload: Workload
    sla: SLA = Field(default_factory=SLA)
    prediction: Prediction
    assumptions: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentProfile:
        if self.engine_args.tensor_parallel_size != self.gpu.count:
            raise ValueError(
                f"engine_args.tensor_parallel_size ({self.engine_args.tensor_parallel_size}) "
                f"must equal gpu.count ({self.gpu.count})"
            )
        if self.engine_args.max_num_batched_tokens < self.engine_args.max_num_seqs:
            raise ValueError("engine_args.max_num_batched_tokens must be at least max_num_seqs")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100)

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        return write_atomic(path, self.to_yaml(), force=force)

    @classmethod
    def load(cls, path: str | Path) -> DeploymentProfile:
        path = Path(path)
        if not path.is_file():
            raise TrdeployError(f"No DeploymentProfile at {path}.", hint="Run `trdeploy tune --gpu TIER -o trdeploy.yaml` first.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise TrdeployError(f"{path} is not valid YAML ({exc.__class__.__name__}).", hint="Regenerate it with `trdeploy tune`.") from exc
        if not isinstance(data, dict):
            raise TrdeployError(f"{path} does not hold a DeploymentProfile mapping.", hint="Regenerate it with `trdeploy tune`.")
        check_schema_version(data.get("schema_version"), path)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise TrdeployError(
                f"{path} is not a valid DeploymentProfile: {where}: {first['msg']}.",
                hint="Regenerate it with `trdeploy tune`.",
            ) from exc
