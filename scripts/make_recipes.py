"""Regenerate recipes/*.yaml: DeploymentProfiles that `trdeploy tune` produces for common pairs.

    python scripts/make_recipes.py            # rewrite recipes/
    python scripts/make_recipes.py --check    # exit 1 if recipes/ differs from what the code produces

Each recipe is exactly `trdeploy tune` with the flags shown in RECIPES (the same library call as the CLI).
The context is fixed in tokens (--max-model-len) so the recipes do not move when the embedded corpus grows.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trdeploy.sizing.tuning import TuneRequest, tune  # noqa: E402

RECIPES_DIR = ROOT / "recipes"

# An interactive Turkish chat service: 8K context, 1K-token prompts, 256-token answers, 32 users in flight,
# first token within 2 s (p95) and 50 ms per output token (median).
WORKLOAD = {"max_model_len": 8192, "prompt_tokens": 1024, "output_tokens": 256, "concurrency": 32, "ttft_p95_ms": 2000.0, "tpot_ms": 50.0}

RECIPES: list[TuneRequest] = [
    *(TuneRequest(gpu=gpu, model="llama-3-8b", quantization=q, **WORKLOAD) for q in ("none", "awq") for gpu in ("h100", "a100-80gb", "l40s", "rtx4090")),
    TuneRequest(gpu="h100", model="llama-3-70b", quantization="awq", gpus=2, **WORKLOAD),
    TuneRequest(gpu="h100", model="llama-3-70b", quantization="none", gpus=4, **WORKLOAD),
]


def render() -> dict[str, str]:
    """{file name: YAML} for every recipe, computed now."""
    out: dict[str, str] = {}
    for req in RECIPES:
        profile = tune(req).profile
        out[f"{profile.name}.yaml"] = profile.to_yaml()
    return out


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [n for n, text in files.items() if not (RECIPES_DIR / n).is_file() or (RECIPES_DIR / n).read_text(encoding="utf-8") != text]
        extra = sorted(p.name for p in RECIPES_DIR.glob("*.yaml") if p.name not in files)
        for n in stale:
            print(f"stale: recipes/{n}")
        for n in extra:
            print(f"not produced by the code: recipes/{n}")
        return 1 if stale or extra else 0
    from trdeploy.output import write_atomic

    RECIPES_DIR.mkdir(exist_ok=True)
    for n, text in files.items():
        write_atomic(RECIPES_DIR / n, text, force=True)
        print(f"wrote recipes/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
