"""Start-up time: seconds from container start until vLLM's GET /health answers 200.

Phases, as vLLM 0.25's log shows them (one H200, tests/data/vllm_measurements_h200.json `starts`):

    before the weights   imports, API server, engine process (longer on a machine whose Python and
                         disk caches are cold)
    weights              checkpoint bytes / storage read bandwidth, + model initialisation
    torch.compile        Dynamo's bytecode transform (every start) + Inductor's graph compile (cold cache only)
    KV sizing, CUDA graphs, kernel JIT of the warm-up (long on the first start on a machine: FlashInfer/Triton
                         caches empty; a few seconds once they are kept), server listening

    cold = first start with every cache empty (a new pod on a new node): what build's HEALTHCHECK and
           render-k8s's startupProbe must allow
    warm = restart with the compile and kernel caches kept (render-k8s's cache volume)

Measured (first starts, random weights of the real shapes, local disk):
- H200, Llama-3-8B bf16, a bare machine: /health 228.6 s; 60 s from the first log line to the weights
  loaded (2.32 s reading 16.06 GB), torch.compile 26.0 s (Dynamo 9.1 s), CUDA graphs 7 s, then 104 s of
  first-start kernel JIT (8 s on the next start);
- H200, Llama-3-70B AWQ, the same machine's second start (JIT and Python caches warm, compile cache not):
  /health 146.4 s; 40 s to the weights loaded (6.14 s reading 39.77 GB), torch.compile 48.5 s (Dynamo 21.4 s),
  CUDA graphs 16 s, 9 s of JIT;
- H100, Llama-3-8B bf16 (tests/data/vllm-0.25.0-h100.md): /health 229 s, engine init 162 s of
  which compilation 29 s: the same as the H200's bare start within 1%.
torch.compile and CUDA-graph times are linear in the layer count through the two models (32 and 80 layers).

Assumed: the deployment's storage reads at `DEFAULT_READ_GB_PER_S` (`tune --weights-read-gbps`); a warm
restart runs Dynamo again but loads Inductor's output, and finds the kernel caches; CPU-bound phases
(imports, compile, JIT) take the same time on every GPU tier; tensor-parallel ranks run them in parallel
(not measured: no multi-GPU start-up was timed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trdeploy.deployment import Startup

# Before the weights load: process start to the first log line (~23 s) + first log line to loading start.
BEFORE_WEIGHTS_BARE_S = 77.3  # 8B on a bare machine: 22.6 + (60 - 5.28)
BEFORE_WEIGHTS_WARM_S = 52.8  # 70B, Python/disk caches warm: 24.4 + (40 - 11.6)
MODEL_INIT_S = (1.3, 0.052)  # + per layer: model_loading less the read (8B 2.96 s, 70B 5.46 s)
COMPILE_COLD_S = (11.0, 0.468)  # + per layer: 26.04 s (32 layers), 48.49 s (80)
DYNAMO_S = (0.9, 0.256)  # + per layer: 9.09 s, 21.4 s (runs on every start)
KV_SIZING_S = (1.7, 0.042)  # compile done to KV sized: 3 s, 5 s
GRAPHS_S = (1.0, 0.1875)  # + per layer: 7 s, 16 s
JIT_BARE_S = 104.0  # first start on a bare machine
JIT_WARM_S = 9.0  # kernel caches kept
LISTEN_S = 4.0  # init engine done to server listening: 5 s, 3 s

# Assumed for the deployment: a model-cache volume or network disk. Local NVMe reads 2-7 GB/s (the
# measured starts read 6.5-6.9 GB/s from local disk and the page cache); a hub download is often 0.1-0.5 GB/s.
DEFAULT_READ_GB_PER_S = 1.0

# The start-up budget: how long a new container may take before failed health checks count (build's
# HEALTHCHECK start period and render-k8s's startupProbe both read `Startup.budget_s`). Storage slower than
# assumed or a busy node stretch the predicted cold start, so the budget is 1.5x it plus a minute, rounded
# up to 10 s. A long budget costs nothing when the server is healthy: the first passing probe ends it.
BUDGET_MARGIN = 1.5
BUDGET_MARGIN_S = 60.0


def startup_budget_s(cold_s: float) -> int:
    """The one margin function: seconds a fresh container gets before failed health checks count."""
    return int(math.ceil((cold_s * BUDGET_MARGIN + BUDGET_MARGIN_S) / 10.0) * 10)


# The drain window, vLLM's `--shutdown-timeout`: after SIGTERM (a rollout, a scale-down, a node drain) vLLM 0.25
# refuses new requests and waits this long for the ones in flight (its default 0 aborts them). The longest
# typical request is the predicted p95 end-to-end; twice that covers a request that started just before, and a
# floor covers a prediction that is low. render-k8s makes the termination grace period cover it.
DRAIN_FLOOR_S = 30


def shutdown_timeout_s(e2e_p95_ms: float) -> int:
    """Seconds vLLM waits for in-flight requests on SIGTERM: 2 x the predicted p95 end-to-end, at least 30 s."""
    return int(max(DRAIN_FLOOR_S, math.ceil(2 * e2e_p95_ms / 1000.0)))


MEASURED_BASIS = (
    "measured: vLLM 0.25.0 first starts on an H200 (Llama-3-8B bf16 bare machine 228.6 s, Llama-3-70B AWQ 146.4 s with warm "
    "kernel caches; tests/data/vllm_measurements_h200.json) and an H100 (Llama-3-8B bf16 229 s; tests/data/vllm-0.25.0-h100.md)"
)


def _lin(ab: tuple[float, float], layers: int) -> float:
    return ab[0] + ab[1] * layers


@dataclass(frozen=True)
class StartupInputs:
    weights_bytes: float  # all ranks together: what is read from storage
    num_layers: int
    gpu_tier: str
    tp: int
    read_gb_per_s: float | None = None  # None: DEFAULT_READ_GB_PER_S


def phases(inputs: StartupInputs, *, bare_machine: bool, compile_cache_warm: bool, read_gb_per_s: float | None = None) -> dict[str, float]:
    """Seconds per phase of one start (the measured starts are reproduced with their own read bandwidth)."""
    read = read_gb_per_s or inputs.read_gb_per_s or DEFAULT_READ_GB_PER_S
    layers = inputs.num_layers
    return {
        "before_weights": BEFORE_WEIGHTS_BARE_S if bare_machine else BEFORE_WEIGHTS_WARM_S,
        "weights_read": inputs.weights_bytes / 1e9 / read,
        "model_init": _lin(MODEL_INIT_S, layers),
        "torch_compile": _lin(DYNAMO_S, layers) if compile_cache_warm else _lin(COMPILE_COLD_S, layers),
        "kv_sizing": _lin(KV_SIZING_S, layers),
        "cuda_graphs": _lin(GRAPHS_S, layers),
        "kernel_jit": JIT_BARE_S if bare_machine else JIT_WARM_S,
        "listen": LISTEN_S,
    }


def predict_startup(inputs: StartupInputs) -> Startup:
    read = inputs.read_gb_per_s if inputs.read_gb_per_s is not None else DEFAULT_READ_GB_PER_S
    cold = phases(inputs, bare_machine=True, compile_cache_warm=False)
    warm = phases(inputs, bare_machine=False, compile_cache_warm=True)
    load = warm["weights_read"]
    warm_s = sum(warm.values())
    cold_s = sum(cold.values())
    measured_here = inputs.gpu_tier in ("h100", "h200") and inputs.tp == 1
    basis = (
        f"{MEASURED_BASIS}; assumed: weights {inputs.weights_bytes / 1e9:.1f} GB at {read:g} GB/s "
        + ("(--weights-read-gbps)" if inputs.read_gb_per_s is not None else "(default, --weights-read-gbps)")
        + f"; cold = a new machine: {cold['kernel_jit']:.0f} s kernel JIT, full torch.compile {cold['torch_compile']:.0f} s; "
        f"warm = compile and kernel caches kept ({warm['torch_compile']:.0f} s Dynamo, {warm['kernel_jit']:.0f} s JIT)"
        + ("" if measured_here else f"; CPU-bound phases as measured on one H100/H200 (not yet measured on {inputs.tp}x {inputs.gpu_tier})")
    )
    return Startup(
        weights_load_s=round(load, 1),
        read_gb_per_s=read,
        engine_init_s=round(warm_s - load, 1),
        compile_s=round(cold_s - warm_s, 1),
        cold_s=round(cold_s, 1),
        warm_s=round(warm_s, 1),
        budget_s=startup_budget_s(round(cold_s, 1)),
        budget_basis=f"{BUDGET_MARGIN:g} x cold start + {BUDGET_MARGIN_S:.0f} s, rounded up to 10 s",
        basis=basis,
    )
