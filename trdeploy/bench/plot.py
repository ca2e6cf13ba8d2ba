"""`trdeploy bench --plot`: the PNG of the report (matplotlib, imported only when asked for)."""

from __future__ import annotations

import io

import numpy as np

from trdeploy.errors import TrdeployError


def plot_png(samples: list[tuple[str, dict[str, np.ndarray]]], title: str) -> bytes:
    """Histograms of TTFT, TPOT, ITL and E2E latency (ms), one colour per load level; PNG bytes."""
    try:
        import matplotlib
    except ImportError as exc:
        raise TrdeployError("--plot needs matplotlib.", hint="pip install 'trdeploy[bench]'.") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = (("ttft", "TTFT (ms)"), ("tpot", "TPOT (ms)"), ("itl", "ITL (ms)"), ("e2el", "E2E latency (ms)"))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes.flat, names, strict=True):
        present = [(i, run_label, data[key]) for i, (run_label, data) in enumerate(samples) if data.get(key) is not None and data[key].size]
        if not present:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(label)
            continue
        # One set of bins for every load level, so the histograms compare.
        bins = np.histogram_bin_edges(np.concatenate([v for _, _, v in present]), bins=50)
        for i, run_label, values in present:
            color = colors[i % len(colors)]
            p50, p95 = np.percentile(values, [50, 95])
            ax.hist(values, bins=bins, alpha=0.55, color=color, label=f"{run_label}: p50 {p50:.1f}, p95 {p95:.1f}")
            ax.axvline(p95, color=color, linestyle="--", linewidth=1)
        ax.set_xlabel(label + "  (dashed: p95)")
        ax.set_ylabel("requests" if key != "itl" else "token gaps")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
