"""The GPU catalog: what `tune` needs to know about each tier.

Memory comes in two numbers. `memory_mib` is what `nvidia-smi` prints as the total. vLLM does not use
it: it multiplies `gpu_memory_utilization` by the total that `cudaMemGetInfo` reports
(`torch.cuda.mem_get_info()[1]`), which is smaller because the driver keeps a reserve. On the H100 80GB
HBM3 used for calibration (driver 580.159.04) nvidia-smi says 81559 MiB and CUDA says 85,017,493,504
bytes (79.18 GiB): 480 MiB less. That CUDA total is measured for the H100; for the other tiers it is
the total PyTorch reports in public out-of-memory messages with recent drivers, or nvidia-smi's total
less the same reserve where none was found (`cuda_total_source` says which).

Throughput figures are NVIDIA's dense (no sparsity) tensor-core numbers; bandwidth is the datasheet's.
Prices are typical on-demand prices per GPU-hour from specialist GPU clouds (list prices seen in
2025-06; they change often and differ between providers). Everything here is data; nothing is
probed at run time.

Provenance: `measured` names each fact that was measured on a real card, with where the measurement is
recorded; every fact not named there is from the datasheet or public reports (`DATASHEET_NOTE`).
Three facts matter for trust in `tune`'s output: `memory` (vLLM's KV cache log reproduced by the
memory accounting), `speed` (served latency the latency model was fitted to or checked against) and
`startup` (seconds until /health answers). `compare` marks the tiers where memory or speed were not measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from trdeploy.errors import TrdeployError

MiB = 1024**2
GiB = 1024**3

# CUDA builds of vLLM's release image (vllm/vllm-openai) and the NVIDIA Linux driver each needs: the
# toolkits' own minimum (CUDA 13.0 GA: 580.65.06, CUDA 12.9 GA: 575.51.03, NVIDIA's CUDA release notes), not
# the looser minor-version-compatibility floor, because Triton and FlashInfer JIT-compile PTX, which fails on
# an older driver even where the runtime itself would load. From vLLM v0.20 the plain tag is the CUDA 13.0
# build and `-cu129` the CUDA 12.9 build. tune picks the newest build the nodes' driver runs and writes it
# (and its minimum driver) into the profile; `build` bases the image on it, `render-k8s` keeps the pods on
# nodes whose driver is at least that.
CUDA_MIN_DRIVER: dict[str, str] = {"13.0": "580.65.06", "12.9": "575.51.03"}

DATASHEET_NOTE = "not measured: NVIDIA datasheet figures with the H100's fitted efficiencies"
PRICE_NOTE = "typical on-demand USD per GPU-hour at specialist GPU clouds, list prices seen 2025-06; check your provider"


@dataclass(frozen=True)
class GpuSpec:
    tier: str
    name: str
    product_labels: tuple[str, ...]  # values of the Kubernetes node label nvidia.com/gpu.product
    memory_mib: int  # nvidia-smi memory.total
    cuda_total_bytes: int  # cudaMemGetInfo total: what vLLM multiplies by gpu_memory_utilization
    cuda_total_source: str
    bandwidth_gbs: float  # HBM/GDDR bandwidth, GB/s
    bf16_tflops: float  # dense
    fp8_tflops: float | None  # dense; None where the tensor cores have no fp8
    interconnect_gbs: float  # GPU-to-GPU, one direction (NVLink, else PCIe)
    interconnect: str
    hourly_usd: float
    architecture: str  # hopper | ada | ampere
    # vLLM 0.25 defaults `max_num_batched_tokens` to 8192 and `max_num_seqs` to 1024 for the OpenAI
    # server on GPUs with >= 70 GiB that are not A100s, else 2048 and 256 (EngineArgs.get_batch_defaults).
    vllm_large_defaults: bool = False
    # NVIDIA driver assumed on the tier's nodes when `tune --driver` is not given. An assumption, not a
    # measurement: data-centre tiers on current managed node images run the R580 branch (NVIDIA's long-term
    # branch of 2025-26); consumer and older cloud tiers often stay on R575.
    node_driver: str = "580.65.06"
    # GPUs in the largest common node of the tier (HGX/DGX boards and the cloud shapes built on them: p5/a3
    # for H100, p4d for A100, g6e for L40S, g6/g2 for L4, g5.48xlarge for A10G, 8-way 4090 servers).
    # A replica with more GPUs spans nodes; `tune --gpus-per-node` replaces it.
    gpus_per_node: int = 8
    # (fact, where it was measured) for every fact measured on this tier; see the module docstring.
    measured: tuple[tuple[str, str], ...] = ()

    @property
    def measured_facts(self) -> dict[str, str]:
        return dict(self.measured)

    @property
    def memory_measured(self) -> bool:
        return "memory" in self.measured_facts

    @property
    def speed_measured(self) -> bool:
        return "speed" in self.measured_facts

    @property
    def startup_measured(self) -> bool:
        return "startup" in self.measured_facts

    def provenance(self) -> dict[str, str]:
        """Each fact tune uses -> where it comes from ('measured: ...' or the datasheet/public note)."""
        facts = self.measured_facts
        out = {}
        for fact in ("memory", "speed", "startup", "cuda_total", "bandwidth", "tflops", "price"):
            if fact in facts:
                out[fact] = "measured: " + facts[fact]
            elif fact == "cuda_total":
                out[fact] = self.cuda_total_source
            elif fact == "price":
                out[fact] = PRICE_NOTE
            else:
                out[fact] = DATASHEET_NOTE
        return out

    @property
    def memory_gib(self) -> float:
        return self.memory_mib * MiB / GiB

    @property
    def cuda_total_gib(self) -> float:
        return self.cuda_total_bytes / GiB

    @property
    def fp8_compute(self) -> bool:
        """Tensor cores with fp8 (Ada, Hopper): fp8 weights run as W8A8. Ampere runs them weight-only (FP8 Marlin)."""
        return self.fp8_tflops is not None

    @property
    def vllm_default_max_num_batched_tokens(self) -> int:
        return 8192 if self.vllm_large_defaults else 2048

    @property
    def vllm_default_max_num_seqs(self) -> int:
        return 1024 if self.vllm_large_defaults else 256


def _gib(x: float) -> int:
    return round(x * GiB)


_CATALOG: tuple[GpuSpec, ...] = (
    GpuSpec(
        tier="h100",
        name="NVIDIA H100 80GB HBM3 (SXM5)",
        product_labels=("NVIDIA-H100-80GB-HBM3",),
        memory_mib=81559,
        cuda_total_bytes=85_017_493_504,
        cuda_total_source="measured (torch.cuda.mem_get_info, driver 580.159.04)",
        bandwidth_gbs=3350,
        bf16_tflops=989,
        fp8_tflops=1979,
        interconnect_gbs=450,
        interconnect="NVLink 4",
        hourly_usd=2.99,
        architecture="hopper",
        vllm_large_defaults=True,
        measured=(
            ("memory", "tests/data/vllm_measurements.json (12 vLLM 0.25.0 start-ups, 1 and 2 GPUs)"),
            ("speed", "tests/data/vllm-0.25.0-h100.md, tests/data/vllm_measurements.json benchmarks (Llama-3-8B bf16 and AWQ)"),
            ("startup", "tests/data/vllm-0.25.0-h100.md (Llama-3-8B bf16, local disk, first start)"),
            ("cuda_total", "torch.cuda.mem_get_info, driver 580.159.04"),
        ),
    ),
    GpuSpec(
        tier="h200",
        name="NVIDIA H200 141GB HBM3e (SXM)",
        product_labels=("NVIDIA-H200",),
        memory_mib=143771,
        cuda_total_bytes=_gib(139.81),
        cuda_total_source="nvidia-smi measured here (143771 MiB); CUDA total from public PyTorch reports",
        bandwidth_gbs=4800,
        bf16_tflops=989,
        fp8_tflops=1979,
        interconnect_gbs=450,
        interconnect="NVLink 4",
        hourly_usd=3.79,
        architecture="hopper",
        vllm_large_defaults=True,
        measured=(
            ("memory", "tests/data/vllm-0.25.0-h200.md (GPU KV cache size logged by vLLM 0.25.0, Llama-3-8B bf16 and Llama-3-70B AWQ)"),
            ("speed", "tests/data/vllm-0.25.0-h200.md (vllm bench serve, Llama-3-8B bf16 and Llama-3-70B AWQ)"),
            ("startup", "tests/data/vllm_measurements_h200.json starts (Llama-3-8B bf16 bare machine, Llama-3-70B AWQ)"),
        ),
    ),
    GpuSpec(
        tier="a100-80gb",
        name="NVIDIA A100 80GB (SXM4)",
        product_labels=("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
        memory_mib=81920,
        cuda_total_bytes=_gib(79.15),
        cuda_total_source="public PyTorch reports",
        bandwidth_gbs=2039,
        bf16_tflops=312,
        fp8_tflops=None,
        interconnect_gbs=300,
        interconnect="NVLink 3",
        hourly_usd=1.79,
        architecture="ampere",
    ),
    GpuSpec(
        tier="a100-40gb",
        name="NVIDIA A100 40GB (SXM4)",
        product_labels=("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"),
        memory_mib=40960,
        cuda_total_bytes=_gib(39.50),
        cuda_total_source="public PyTorch reports",
        bandwidth_gbs=1555,
        bf16_tflops=312,
        fp8_tflops=None,
        interconnect_gbs=300,
        interconnect="NVLink 3",
        hourly_usd=1.29,
        architecture="ampere",
    ),
    GpuSpec(
        tier="l40s",
        name="NVIDIA L40S 48GB",
        product_labels=("NVIDIA-L40S",),
        memory_mib=46068,
        cuda_total_bytes=_gib(44.52),
        cuda_total_source="public PyTorch reports",
        bandwidth_gbs=864,
        bf16_tflops=362,
        fp8_tflops=733,
        interconnect_gbs=25,
        interconnect="PCIe 4.0 x16",
        hourly_usd=1.19,
        architecture="ada",
    ),
    GpuSpec(
        tier="l4",
        name="NVIDIA L4 24GB",
        product_labels=("NVIDIA-L4",),
        memory_mib=23034,
        cuda_total_bytes=_gib(22.05),
        cuda_total_source="public PyTorch reports",
        bandwidth_gbs=300,
        bf16_tflops=121,
        fp8_tflops=242,
        interconnect_gbs=25,
        interconnect="PCIe 4.0 x16",
        hourly_usd=0.80,
        architecture="ada",
    ),
    GpuSpec(
        tier="a10g",
        name="NVIDIA A10G 24GB",
        product_labels=("NVIDIA-A10G",),
        memory_mib=23028,
        cuda_total_bytes=23028 * MiB - 480 * MiB,
        cuda_total_source="nvidia-smi total less the 480 MiB reserve measured on the H100 (estimate)",
        bandwidth_gbs=600,
        bf16_tflops=70,
        fp8_tflops=None,
        interconnect_gbs=25,
        interconnect="PCIe 4.0 x16",
        hourly_usd=1.01,
        architecture="ampere",
        node_driver="575.51.03",
    ),
    GpuSpec(
        tier="rtx4090",
        name="NVIDIA GeForce RTX 4090 24GB",
        product_labels=("NVIDIA-GeForce-RTX-4090",),
        memory_mib=24564,
        cuda_total_bytes=_gib(23.64),
        cuda_total_source="public PyTorch reports",
        bandwidth_gbs=1008,
        bf16_tflops=165,  # with fp32 accumulation, as PyTorch runs bf16 GEMMs on GeForce cards
        fp8_tflops=330,
        interconnect_gbs=25,
        interconnect="PCIe 4.0 x16 (no NVLink)",
        hourly_usd=0.69,
        architecture="ada",
        node_driver="575.51.03",
    ),
)

GPUS: dict[str, GpuSpec] = {g.tier: g for g in _CATALOG}

_ALIASES = {
    "h100-80gb": "h100",
    "h100-sxm": "h100",
    "h200-141gb": "h200",
    "a100": "a100-80gb",
    "a100-80g": "a100-80gb",
    "a100-40g": "a100-40gb",
    "4090": "rtx4090",
    "rtx-4090": "rtx4090",
}


def driver_tuple(driver: str) -> tuple[int, ...]:
    return tuple(int(p) for p in driver.split("."))


def cuda_for_driver(driver: str) -> str:
    """The newest CUDA build of vLLM's image that `driver` runs, or a one-line error."""
    fits = [c for c, need in CUDA_MIN_DRIVER.items() if driver_tuple(driver) >= driver_tuple(need)]
    if not fits:
        oldest = min(CUDA_MIN_DRIVER.values(), key=driver_tuple)
        raise TrdeployError(
            f"Driver {driver} is older than every CUDA build of vLLM's image (the oldest needs >= {oldest}).",
            hint="Upgrade the node driver, or pass --cuda with the build your nodes run (and build on your own --base-image).",
        )
    return max(fits, key=driver_tuple)


def get_gpu(tier: str) -> GpuSpec:
    key = tier.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in GPUS:
        raise TrdeployError(f"Unknown GPU tier '{tier}'.", hint=f"Use one of: {', '.join(GPUS)}.")
    return GPUS[key]
