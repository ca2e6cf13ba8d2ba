"""Render k8s/<recipe>/ (kustomize) and charts/<recipe>/ (Helm) for every recipes/*.yaml with `render-k8s`'s
defaults (a test keeps them in sync).

    python scripts/make_k8s.py           # write
    python scripts/make_k8s.py --check   # exit 1 when k8s/ or charts/ differs from what the code renders
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trdeploy.deploy.k8s import chart_texts, file_texts  # noqa: E402
from trdeploy.deploy.k8s import render as render_profile  # noqa: E402
from trdeploy.deployment import DeploymentProfile  # noqa: E402

RECIPES_DIR = ROOT / "recipes"
K8S_DIR = ROOT / "k8s"
CHARTS_DIR = ROOT / "charts"
OUTPUTS = {"k8s": K8S_DIR, "charts": CHARTS_DIR}


def render() -> dict[str, str]:
    """{path under the repository root (k8s/... or charts/...): text} for every recipe, rendered now."""
    out: dict[str, str] = {}
    for recipe in sorted(RECIPES_DIR.glob("*.yaml")):
        rendered = render_profile(DeploymentProfile.load(recipe))
        for name, text in file_texts(rendered).items():
            out[f"k8s/{recipe.stem}/{name}"] = text
        for name, text in chart_texts(rendered).items():
            out[f"charts/{recipe.stem}/{name}"] = text
    return out


def committed() -> set[str]:
    return {str(p.relative_to(ROOT)) for d in OUTPUTS.values() for p in d.glob("*/**/*") if p.is_file()}


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [n for n, text in files.items() if not (ROOT / n).is_file() or (ROOT / n).read_text(encoding="utf-8") != text]
        extra = sorted(committed() - set(files))
        for n in stale:
            print(f"stale: {n}")
        for n in extra:
            print(f"not produced by the code: {n}")
        return 1 if stale or extra else 0
    from trdeploy.output import write_atomic

    for n, text in files.items():
        (ROOT / n).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(ROOT / n, text, force=True)
    for n in sorted(committed() - set(files)):
        (ROOT / n).unlink()
    print(f"wrote {len(files)} files under k8s/ and charts/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
