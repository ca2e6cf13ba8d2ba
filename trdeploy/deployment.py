"""The DeploymentProfile: the one document every command after `tune` reads.

`tune` decides; `build`, `render-k8s` and `bench` read. `engine_args` maps 1:1 onto `vllm serve`
flags (vLLM's own names, underscores), so nothing downstream re-derives an engine setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from trdeploy import __version__, hub
from trdeploy.errors import TrdeployError
from trdeploy.fields import (
    DriverVersion,
    GiBAmount,
    LabelValue,
    Millis,
    ModelRef,
    Name,
    Seconds,
    ShortText,
    Text,
    Tier,
    Version,
    json_safe,
    model_folder_name_ok,
)
from trdeploy.inputs import MAX_PROFILE_BYTES, load_yaml, read_limited, validate_document
from trdeploy.output import write_atomic

# 2: the profile is complete for every command after tune: engine_args.served_model_name always set, the
# tier's node facts (GPUs per node, driver, CUDA build) in `gpu`, the start-up budget, the capacity plan.
# 3: engine_args.pipeline_parallel_size (a replica larger than a node: TP per node x PP across nodes) and
# engine_args.shutdown_timeout (vLLM drains in-flight requests on SIGTERM instead of aborting them).
SCHEMA_VERSION = 3

# The allowed values, in one place: tune's options, the memory accounting and the profile read these.
Quantization = Literal["none", "awq", "fp8"]  # weights: bf16, AWQ int4, fp8
KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]  # vLLM's --kv-cache-dtype values we size
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
KV_CACHE_DTYPES: tuple[str, ...] = get_args(KvCacheDtype)


class _Strict(BaseModel):
    # A profile is untrusted input: no unknown keys, no type coercion ("1" is not 1, true is not 1), no
    # NaN or infinity; every string field has a kind (trdeploy.fields) with a character set and a length.
    model_config = ConfigDict(extra="forbid", frozen=False, strict=True, allow_inf_nan=False)


def _engine_model(value: str) -> str:
    """A hub id, or a checkpoint folder whose last component is a usable folder name (it becomes /models/NAME)."""
    if hub.is_hub_id(value, revision=False):
        return value
    name = value.rstrip("/").rsplit("/", 1)[-1]
    if not model_folder_name_ok(name):
        raise ValueError("must be a hub id (ORG/NAME) or a folder whose name is 1-128 of A-Z a-z 0-9 . _ - (not . or ..)")
    return value


EngineModel = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_engine_model)]


class EngineArgs(_Strict):
    """vLLM engine arguments, named as `vllm serve` names them (`--max-model-len` is `max_model_len`)."""

    model: EngineModel
    # Always set (tune writes the model id unless told otherwise): the name clients send, the metrics'
    # model_name label, the same whether the weights are mounted, baked or downloaded. Any printable text:
    # every output quotes it for its language (trdeploy.deploy.container).
    served_model_name: ShortText = Field(..., min_length=1)
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    # Pipeline stages; above 1 only when a replica needs more GPUs than a node has (TP within a node, PP across).
    pipeline_parallel_size: int = Field(1, ge=1, le=64)
    dtype: Literal["auto", "bfloat16", "float16", "half", "float", "float32"] = "auto"
    max_model_len: int = Field(..., ge=16, le=10_000_000)
    max_num_seqs: int = Field(..., ge=1, le=1_000_000)
    max_num_batched_tokens: int = Field(..., ge=1, le=100_000_000)
    gpu_memory_utilization: float = Field(..., gt=0.0, le=1.0)
    kv_cache_dtype: KvCacheDtype = "auto"
    # Only for what vLLM cannot detect from the checkpoint (online fp8). AWQ and compressed-tensors
    # checkpoints are detected by vLLM itself, so this stays None for them.
    quantization: Literal["fp8"] | None = None
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    # Seconds vLLM 0.25 waits for in-flight requests after SIGTERM (its default 0 aborts them): the drain window.
    # tune always writes it and a profile without it is refused (DeploymentProfile); a calibration run records the
    # engine arguments a measured server ran, which may not have set it.
    shutdown_timeout: int | None = Field(None, ge=0, le=86_400)

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


_ArchInt = Annotated[int, Field(ge=1, le=10_000_000)]


class ModelInfo(_Strict):
    """What the profile was tuned for: the checkpoint and the architecture facts that matter for sizing."""

    id: ModelRef
    architecture: Name = "LlamaForCausalLM"
    num_hidden_layers: _ArchInt
    hidden_size: _ArchInt
    intermediate_size: _ArchInt
    num_attention_heads: _ArchInt
    num_key_value_heads: _ArchInt
    head_dim: _ArchInt
    vocab_size: _ArchInt
    max_position_embeddings: Annotated[int, Field(ge=1, le=100_000_000)]
    num_parameters: Annotated[int, Field(ge=0, le=10**15)]
    tokenizer: ShortText | None = None
    tie_word_embeddings: bool = False


class GpuInfo(_Strict):
    """The GPU tier and the facts about its nodes that `build` and `render-k8s` need (tune writes them from
    the GPU catalog, trdeploy.sizing.gpus, or from `tune --driver/--cuda/--gpus-per-node`)."""

    tier: Tier
    count: int = Field(1, ge=1, le=64)
    name: ShortText | None = None
    memory_gib: GiBAmount | None = None
    node_labels: list[LabelValue] = Field(default_factory=list, max_length=32)
    hourly_usd: Annotated[float, Field(ge=0, le=1_000_000)] | None = None
    gpus_per_node: int = Field(..., ge=1, le=64)  # GPUs in one node of the tier
    driver: DriverVersion  # NVIDIA driver on the nodes (given, or the tier's assumed driver)
    driver_source: ShortText = ""  # "given" or "assumed for the tier"
    cuda: Literal["13.0", "12.9"]  # CUDA build of vLLM's image: the newest the driver runs
    min_driver: DriverVersion  # the driver that CUDA build needs (render-k8s keeps pods off older nodes)


class Workload(_Strict):
    prompt_tokens: int = Field(..., ge=1, le=10_000_000)
    output_tokens: int = Field(..., ge=1, le=10_000_000)
    concurrency: int | None = Field(None, ge=1, le=1_000_000)
    requests_per_day: float | None = Field(None, ge=0, le=1e12)
    peak_factor: float = Field(3.0, ge=1.0, le=1000)
    context_words: int | None = Field(None, ge=1, le=10_000_000)
    tokens_per_word: float | None = Field(None, gt=0, le=1000)


class SLA(_Strict):
    """Latency targets. Any unset target is not checked."""

    ttft_p95_ms: float | None = Field(None, gt=0, le=1e9)
    e2e_p95_ms: float | None = Field(None, gt=0, le=1e9)
    tpot_ms: float | None = Field(None, gt=0, le=1e9)


class Startup(_Strict):
    """Predicted seconds from container start until GET /health answers 200 (tune decides; build and
    render-k8s read it for the HEALTHCHECK start period and the startupProbe budget)."""

    weights_load_s: Seconds  # checkpoint bytes over `read_gb_per_s`
    read_gb_per_s: float = Field(..., gt=0, le=10_000)  # the storage bandwidth assumed for the weights
    engine_init_s: Seconds  # process start, profile run, KV allocation, CUDA graphs, warm compile cache
    compile_s: Seconds  # cold_s - warm_s: full torch.compile, first-start kernel JIT, cold Python caches
    cold_s: Seconds  # first start, empty compile cache
    warm_s: Seconds  # restart with the compile cache volume kept
    budget_s: int = Field(..., ge=10, le=86_400)  # seconds a fresh container gets before failed health checks count
    budget_basis: Text = ""  # the margin over cold_s (trdeploy.sizing.startup.startup_budget_s)
    basis: Text = ""  # where the numbers come from (measured point or assumption)


class CapacityPlan(_Strict):
    """How many replicas the traffic needs, each loaded up to the SLA capacity (tune decides; render-k8s
    reads it for the autoscaler's min/max replicas and its per-replica target).

    `per_replica_concurrency` equals `Prediction.sla_capacity_per_replica` when an SLA holds (else the
    KV cache's capacity at the typical request); `replicas_max` serves the peak (`Prediction.replicas`),
    `replicas_min` the average load (peak / peak_factor); `basis` says how both were derived."""

    per_replica_concurrency: int = Field(..., ge=1, le=1_000_000)  # requests in flight per replica the autoscaler targets
    requests_per_s_per_replica: float = Field(..., ge=0, le=1e9)  # predicted throughput of one replica at that concurrency
    replicas_min: int = Field(..., ge=1, le=10_000)
    replicas_max: int = Field(..., ge=1, le=10_000)
    peak_concurrency: float | None = Field(None, ge=0, le=1e9)  # requests in flight at peak over all replicas (--concurrency, or Little's law)
    peak_requests_per_s: float | None = Field(None, ge=0, le=1e9)  # with --requests-per-day
    basis: Text = ""

    @model_validator(mode="after")
    def _ordered(self) -> CapacityPlan:
        if self.replicas_min > self.replicas_max:
            raise ValueError(f"replicas_min {self.replicas_min} is above replicas_max {self.replicas_max}")
        return self


class CalibrationRef(_Strict):
    """Which calibration the predictions come from (trdeploy.sizing.calibration): a file given to
    `tune --calibration`, the one shipped for the tier, or (measured false) another tier's parameters on
    this tier's datasheet figures."""

    name: ShortText
    source: Text  # the file, or shipped:trdeploy/data/calibrations/TIER.yaml
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    tier: Tier | None = None  # the tier it was measured on
    measured: bool  # measured on this profile's tier
    points: int = Field(0, ge=0, le=1_000_000)
    basis: Text = ""


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

    weights_gib: GiBAmount
    kv_cache_gib: GiBAmount
    kv_cache_tokens: int = Field(..., ge=0, le=10**12)
    kv_bytes_per_token: int = Field(..., ge=0, le=10**9)
    max_concurrency: dict[Annotated[str, Field(max_length=64)], Annotated[float, Field(ge=0, le=1e12)]] = Field(..., max_length=16)
    tpot_ms: Millis
    ttft_ms: Millis
    e2e_ms: Millis
    output_tokens_per_s: float = Field(..., ge=0, le=1e12)
    replicas: int = Field(1, ge=1, le=10_000)
    hourly_cost_usd: float | None = Field(None, ge=0, le=1e9)
    sla_met: bool | None = None
    sla_max_concurrency: int | None = Field(None, ge=0, le=1_000_000)
    sla_capacity_per_replica: int | None = Field(None, ge=0, le=1_000_000)
    capacity: CapacityPlan
    startup: Startup
    calibration: CalibrationRef | None = None  # which calibration the latency and memory predictions come from
    # Free-form numbers for people (the memory breakdown, the latency of one replica): JSON-like, finite, shallow.
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("details")
    @classmethod
    def _details(cls, value: dict[str, Any]) -> dict[str, Any]:
        return json_safe(value, "prediction.details")


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
    name: Name
    created_by: ShortText = f"trdeploy {__version__}"
    vllm_version: Version = "0.25.0"
    model: ModelInfo
    quantization: Quantization = "none"
    gpu: GpuInfo
    engine_args: EngineArgs
    workload: Workload
    sla: SLA = Field(default_factory=SLA)
    prediction: Prediction
    assumptions: list[Text] = Field(default_factory=list, max_length=256)

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentProfile:
        ea = self.engine_args
        if ea.shutdown_timeout is None:
            raise ValueError("engine_args.shutdown_timeout is missing (the drain window render-k8s and the image use); tune writes it")
        if ea.tensor_parallel_size * ea.pipeline_parallel_size != self.gpu.count:
            raise ValueError(
                f"engine_args.tensor_parallel_size x pipeline_parallel_size ({ea.tensor_parallel_size} x "
                f"{ea.pipeline_parallel_size}) must equal gpu.count ({self.gpu.count})"
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
        """Read a profile as untrusted input: the size is checked before reading, nesting and aliases while
        parsing (trdeploy.inputs), every field by its kind when validating; any problem is one line."""
        path = Path(path)
        hint = "Regenerate it with `trdeploy tune`."
        if not path.is_file():
            raise TrdeployError(f"No DeploymentProfile at {path}.", hint="Run `trdeploy tune --gpu TIER -o trdeploy.yaml` first.")
        text = read_limited(path, limit=MAX_PROFILE_BYTES, what="DeploymentProfile", hint=hint)
        data = load_yaml(text, where=str(path), hint=hint)
        if not isinstance(data, dict):
            raise TrdeployError(f"{path} does not hold a DeploymentProfile mapping.", hint=hint)
        check_schema_version(data.get("schema_version"), path)
        return validate_document(cls, data, where=str(path), what="DeploymentProfile", hint=hint)
