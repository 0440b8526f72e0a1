"""Is the zoo real? Build it from a shipped config and report what it holds and how good its models are.

    .venv/bin/python benchmarks/zoo_quality.py [--config sweeps/zoo-small.yaml] [--out-collection out/zoo-small]

Prints and saves (benchmarks/results/zoo-quality.json and .png; ``--results`` names another): wall time, checkpoint
and lineage counts, architectures, families, tasks, modalities; the distribution of test metrics per dataset,
architecture and epoch; per dataset the median metric at the last epoch against what learning nothing scores
(one over the classes; for segmentation, predicting the majority class everywhere).

    .venv/bin/python benchmarks/zoo_quality.py --config sweeps/zoo-hetero.yaml --out-collection out/hetero \
        --results benchmarks/results/zoo-hetero
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import geosane
from geosane.tasks import score_samples


def majority_miou(dataset_name: str, test_limit: int | None) -> float:
    """mIoU of always predicting the train split's most frequent class."""
    dataset = geosane.datasets.get(dataset_name)
    train, test = dataset.load("train"), dataset.load("test", limit=test_limit)
    majority = int(torch.bincount(train.y[train.y != 255].reshape(-1)).argmax())
    model = Majority(majority, dataset.num_classes)
    return score_samples(model, dataset.task, test.x, test.y, dataset.num_classes)


class Majority(torch.nn.Module):
    """A segmentation "model" that predicts one class at every pixel."""

    def __init__(self, label: int, num_classes: int) -> None:
        super().__init__()
        self.label, self.num_classes = label, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), self.num_classes, *x.shape[-2:])
        logits[:, self.label] = 1
        return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sweeps/zoo-small.yaml")
    parser.add_argument("--out-collection", default=None, help="collection URL (default: a temporary folder)")
    parser.add_argument("--storage", default=None, help="Tune's storage, to resume (default: a temporary folder)")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "zoo-quality"))
    args = parser.parse_args()

    config = geosane.ZooConfig.from_yaml(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out_collection or f"{tmp}/collection"
        start = time.perf_counter()
        geosane.run_zoo(config, out, args.storage or f"{tmp}/runs", progress=False)
        seconds = time.perf_counter() - start
        records = geosane.Collection(out).records()

    last_epoch = {g.dataset: g.epochs for g in config.groups}
    table: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        metric = r.metrics.get("test_accuracy", r.metrics.get("test_miou"))
        table[r.tags["dataset"]][r.tags["arch"]][int(r.tags["epoch"])].append(metric)

    distribution = {
        dataset: {
            arch: {
                epoch: {"n": len(v), "median": statistics.median(v), "min": min(v), "max": max(v)}
                for epoch, v in sorted(epochs.items())
            }
            for arch, epochs in archs.items()
        }
        for dataset, archs in table.items()
    }
    print(f"{config.name}: {len(records)} checkpoints in {seconds / 60:.1f} min")
    for dataset, archs in distribution.items():
        print(
            f"\n{dataset} (test {'accuracy' if dataset.startswith('eurosat') else 'mIoU'}: "
            "median [min, max] over trials)"
        )
        for arch, epochs in archs.items():
            cells = "  ".join(f"e{e}: {s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]" for e, s in epochs.items())
            print(f"  {arch:<18} {cells}")

    def final(dataset: str) -> list[float]:
        return [m for arch in table.get(dataset, {}).values() for m in arch.get(last_epoch[dataset], [])]

    def chance(dataset: str) -> float:
        """What a model that learned nothing scores: the majority class's mIoU, or one over the classes."""
        group = next(g for g in config.groups if g.dataset == dataset)
        data = geosane.datasets.get(dataset)
        return majority_miou(dataset, group.test_limit) if data.task == "segmentation" else 1 / data.num_classes

    summary = {
        "checkpoints": len(records),
        "lineages": len({r.tags["lineage"] for r in records}),
        "minutes": round(seconds / 60, 2),
        "architectures": sorted({r.tags["arch"] for r in records}),
        "families": sorted({r.family for r in records}),
        "tasks": sorted({r.task for r in records}),
        "modalities": sorted({r.modality for r in records}),
        "median_last_epoch": {d: round(statistics.median(final(d)), 4) for d in table if final(d)},
        "chance": (chances := {d: round(chance(d), 4) for d in table}),  # once each: segmentation scores a model
        "models_above_chance": {d: f"{sum(m > chances[d] for m in final(d))}/{len(final(d))}" for d in table},
    }
    print()
    for key, value in summary.items():
        print(f"{key}: {value}")

    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(
        json.dumps(
            {
                "benchmark": "zoo-quality",
                "config": args.config,
                "summary": summary,
                "distribution": distribution,
                "versions": geosane.software_versions(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=1,
        )
        + "\n"
    )
    plot(table, summary["chance"], results.with_suffix(".png"))
    print(f"saved {results.with_suffix('.json')} and {results.with_suffix('.png')}")


def plot(table, chance: dict[str, float], path: Path) -> None:
    """Metric per epoch for every trial, one panel per dataset, coloured by architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(6 * len(table), 4.5), squeeze=False)
    for ax, (dataset, archs) in zip(axes[0], table.items(), strict=True):
        for colour, (arch, epochs) in enumerate(archs.items()):
            for epoch, values in epochs.items():
                ax.scatter(
                    [epoch] * len(values),
                    values,
                    color=f"C{colour}",
                    s=14,
                    alpha=0.7,
                    label=arch if epoch == min(epochs) else None,
                )
            ax.plot(sorted(epochs), [statistics.median(epochs[e]) for e in sorted(epochs)], color=f"C{colour}")
        ax.set_title(dataset)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy" if dataset.startswith("eurosat") else "test mIoU")
        ax.axhline(chance[dataset], color="grey", linestyle=":", label="chance")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
