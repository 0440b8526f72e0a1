"""Pictures people would rather look at than read: the make-up of a collection."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from geosane.collection import ModelRecord

__all__ = ["collection_stats", "plot_make_up"]


def collection_stats(records: Sequence[ModelRecord]) -> dict[str, dict[str, int]]:
    """Model counts by architecture family, task and modality, and parameters by family."""
    params: Counter[str] = Counter()
    for record in records:
        params[record.family] += record.num_params
    return {
        "family": dict(Counter(r.family for r in records).most_common()),
        "task": dict(Counter(r.task for r in records).most_common()),
        "modality": dict(Counter(r.modality for r in records).most_common()),
        "parameters by family": dict(params.most_common()),
    }


def plot_make_up(stats: dict[str, dict[str, int]], title: str, path: str) -> None:
    """One pie per breakdown, saved as PNG (small slices are folded into 'other' to stay readable).

    Args:
        stats: :func:`collection_stats`.
        title: the figure's title.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stats), figsize=(5 * len(stats), 6))
    for ax, (name, counts) in zip(axes, stats.items(), strict=True):
        total = sum(counts.values()) or 1
        shown = {k: v for k, v in counts.items() if v / total >= 0.02}
        other = total - sum(shown.values())
        if other:
            shown["other"] = other
        ax.pie(
            list(shown.values()),
            autopct=lambda p: f"{p:.0f}%" if p >= 5 else "",
            startangle=90,
            counterclock=False,
            wedgeprops={"linewidth": 1, "edgecolor": "white"},
            textprops={"fontsize": 9},
        )
        ax.legend(
            [f"{k} ({v:,})" for k, v in shown.items()],
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            fontsize=8,
            ncol=2,
            frameon=False,
        )
        ax.set_title(f"{name}\n(total {total:,})", fontsize=11)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
