"""Render k8s/<recipe>/ for every recipes/*.yaml with `render-k8s`'s defaults (a test keeps them in sync).

    python scripts/make_k8s.py           # write
    python scripts/make_k8s.py --check   # exit 1 when k8s/ differs from what the code renders
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trdeploy.deploy.k8s import file_texts  # noqa: E402
from trdeploy.deploy.k8s import render as render_profile  # noqa: E402
from trdeploy.deployment import DeploymentProfile  # noqa: E402

RECIPES_DIR = ROOT / "recipes"
K8S_DIR = ROOT / "k8s"


def render() -> dict[str, str]:
    """{path under k8s/: YAML} for every recipe, rendered now."""
    out: dict[str, str] = {}
    for recipe in sorted(RECIPES_DIR.glob("*.yaml")):
        profile = DeploymentProfile.load(recipe)
        for name, text in file_texts(render_profile(profile)).items():
            out[f"{recipe.stem}/{name}"] = text
    return out


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [n for n, text in files.items() if not (K8S_DIR / n).is_file() or (K8S_DIR / n).read_text(encoding="utf-8") != text]
        extra = sorted(str(p.relative_to(K8S_DIR)) for p in K8S_DIR.glob("*/*.yaml") if str(p.relative_to(K8S_DIR)) not in files)
        for n in stale:
            print(f"stale: k8s/{n}")
        for n in extra:
            print(f"not produced by the code: k8s/{n}")
        return 1 if stale or extra else 0
    from trdeploy.output import write_atomic

    for n, text in files.items():
        (K8S_DIR / n).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(K8S_DIR / n, text, force=True)
    print(f"wrote {len(files)} files under k8s/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
