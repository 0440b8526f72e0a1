"""Do rebuilt models work? The standard quality measure of a weight-space model, on held-out lineages and families.

    .venv/bin/python benchmarks/reconstruct.py --run out/runs/small [--collection URL] [--results DIR]
        [--per-family N]

For every model the run held out (whole lineages of seen families, and whole families its ``holdout`` rules kept out:
split.json) that has a registered dataset (with ``--per-family N``: the last checkpoints of N lineages per family and
part, seeded): encode -> decode ->
detokenize, load into its task model and evaluate on the dataset's test samples the zoo scored it on, next to the
original (as trained, and with its BatchNorm re-estimated the same way: like for like); with BatchNorm statistics
copied from the original and re-estimated on 512 train images (train mode, no
gradients), and a random initialization with the same re-estimation for chance. Prints the table and saves it with
a plot of original vs reconstructed metric (benchmarks/results/reconstruct.{json,md,png}).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import torch

import geosane
from geosane.autoencoder import normalized_error
from geosane.generation import reestimate_batchnorm
from geosane.tasks import create_model, score_samples

from measure import save

BATCHNORM_IMAGES = 512


def load_data(name: str, test_limit: int | None, cache: dict) -> dict:
    if name not in cache:
        dataset = geosane.datasets.get(name)
        test = dataset.load("test", limit=test_limit)
        cache[name] = {
            "dataset": dataset,
            "unlabeled": dataset.load("train", limit=BATCHNORM_IMAGES).x,
            "test": (test.x, test.y),
        }
    return cache[name]


def score(model: torch.nn.Module, data: dict, reestimate: bool) -> float:
    if reestimate:
        reestimate_batchnorm(model, data["unlabeled"])
    dataset = data["dataset"]
    return score_samples(model, dataset.task, *data["test"], dataset.num_classes)


def rebuild(record: geosane.ModelRecord, collection: geosane.Collection, autoencoder, data: dict) -> dict:
    tokens = collection.tokens(record)
    decoded = autoencoder.decode(autoencoder.encode(tokens))
    rebuilt = geosane.detokenize(decoded, tokens.layout, tokens.kept)
    original = geosane.detokenize(tokens.tokens, tokens.layout, tokens.kept)
    dataset = data["dataset"]
    arch = record.tags["arch"]

    def model(state: dict | None, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        built = create_model(arch, dataset.task, record.in_chans, record.num_classes, data["test"][0].shape[-1])
        if state is not None:
            built.load_state_dict(state, strict=True)
        return built

    return {
        "id": record.id,
        "name": record.name,
        "family": record.family,
        "lineage": record.tags.get("lineage") or f"{record.tags['dataset']}/{arch}/seed{record.tags['seed']}",
        "epoch": int(record.tags["epoch"]),
        "dataset": record.tags["dataset"],
        "normalized_error": normalized_error(decoded, tokens.tokens, tokens.valid),
        "recorded": next(iter(v for k, v in record.metrics.items() if k.startswith("test_"))),
        "original": score(model(original), data, reestimate=False),
        "original_bn_reestimated": score(model(original), data, reestimate=True),
        "rebuilt_bn_copied": score(model(rebuilt), data, reestimate=False),
        "rebuilt_bn_reestimated": score(model(rebuilt), data, reestimate=True),
        "random_bn_reestimated": score(model(None, seed=1), data, reestimate=True),
    }


def sample_lineages(records: list, part_of: dict[str, str], per_family: int) -> list:
    """The last checkpoint of up to ``per_family`` lineages (seeded) of each family in each part."""
    last: dict[str, geosane.ModelRecord] = {}
    for r in records:
        lineage = r.tags.get("lineage", r.id)
        if lineage not in last or int(r.tags["epoch"]) > int(last[lineage].tags["epoch"]):
            last[lineage] = r
    groups: dict[tuple[str, str], list] = {}
    for lineage in sorted(last, key=lambda x: hashlib.sha256(x.encode()).hexdigest()):
        r = last[lineage]
        groups.setdefault((part_of[r.id], r.family), []).append(r)
    return [r for group in groups.values() for r in group[:per_family]]


def summarize(rows: list[dict]) -> dict:
    """Means of one part and family: error, metric kept (like for like), random."""
    return {
        "lineages": len(rows),
        "normalized_error": round(statistics.fmean(r["normalized_error"] for r in rows), 4),
        "original_bn_reestimated": round(statistics.fmean(r["original_bn_reestimated"] for r in rows), 4),
        "rebuilt_bn_reestimated": round(statistics.fmean(r["rebuilt_bn_reestimated"] for r in rows), 4),
        "random_bn_reestimated": round(statistics.fmean(r["random_bn_reestimated"] for r in rows), 4),
        "kept_fraction": round(
            statistics.fmean(r["rebuilt_bn_reestimated"] / r["original_bn_reestimated"] for r in rows), 4
        ),
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5))
    x = [r["original_bn_reestimated"] for r in rows]  # like for like: both sides' BatchNorm re-estimated
    for part, colour in (("held-out lineage", "C0"), ("held-out family", "C3")):
        mine = [r for r in rows if r.get("part", "held-out lineage") == part]
        for key, marker, label in [
            ("rebuilt_bn_reestimated", "o", "rebuilt, BatchNorm re-estimated"),
            ("rebuilt_bn_copied", "x", "rebuilt, BatchNorm copied"),
            ("random_bn_reestimated", ".", "random init, BatchNorm re-estimated"),
        ]:
            if mine:
                axis.scatter(
                    [r["original_bn_reestimated"] for r in mine],
                    [r[key] for r in mine],
                    marker=marker,
                    color=colour,
                    alpha=0.8,
                    label=f"{part}: {label}",
                )
    low = min(min(x), *(r["random_bn_reestimated"] for r in rows)) - 0.05
    axis.plot([low, 1], [low, 1], color="grey", linewidth=0.8, label="rebuilt = original")
    axis.set_xlabel("original test metric, BatchNorm re-estimated")
    axis.set_ylabel("test metric")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown(rows: list[dict], summary: dict) -> str:
    header = (
        "| model | epoch | error | original | original (BN re-est.) | rebuilt (BN re-est.) | rebuilt (BN copied) "
        "| random (BN re-est.) |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['epoch']} | {r['normalized_error']:.4f} | {r['original']:.3f} | "
            f"{r['original_bn_reestimated']:.3f} | "
            f"{r['rebuilt_bn_reestimated']:.3f} | {r['rebuilt_bn_copied']:.3f} | {r['random_bn_reestimated']:.3f} |"
        )
    lines += ["", *(f"- {k}: {v}" for k, v in summary.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a training run (its final/ and split.json)")
    parser.add_argument("--collection", default=None, help="default: the run's collection")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "reconstruct"))
    parser.add_argument("--per-family", type=int, default=0, help="lineages per family and part (0: every model)")
    args = parser.parse_args()

    torch.set_num_threads(2)
    split = json.loads(Path(args.run, "split.json").read_text())
    collection = geosane.Collection(args.collection or split["collection"])
    autoencoder = geosane.Autoencoder.load(args.run)
    registered = set(geosane.datasets.list_datasets())
    parts = {"held-out lineage": split["val"], "held-out family": split.get("held_out", [])}
    held_out = {i: part for part, ids in parts.items() for i in ids}
    measurable = [
        r
        for r in (collection.record(i) for i in held_out)
        if geosane.datasets.parse_dataset(r.tags.get("dataset", ""))[0] in registered and "arch" in r.tags
    ]
    if args.per_family:
        measurable = sample_lineages(measurable, held_out, args.per_family)
    print(
        f"{len(split['val'])} models of {len(split['val_lineages'])} held-out lineages, "
        f"{len(parts['held-out family'])} of held-out families; {len(measurable)} measured"
    )
    if not measurable:  # e.g. a run that held out only real pretrained models: nothing to score on a dataset
        raise SystemExit(f"{args.run}: none of its held-out models records a registered dataset; nothing to measure")

    began, cache, rows = time.perf_counter(), {}, []
    for record in measurable:
        data = load_data(record.tags["dataset"], int(record.metrics.get("test_samples", 0)) or None, cache)
        row = {"part": held_out[record.id], **rebuild(record, collection, autoencoder, data)}
        rows.append(row)
        print(
            f"{row['name']:42s} error {row['normalized_error']:.4f}  original {row['original']:.3f}  rebuilt "
            f"{row['rebuilt_bn_reestimated']:.3f} (BN copied {row['rebuilt_bn_copied']:.3f})  random "
            f"{row['random_bn_reestimated']:.3f}",
            flush=True,
        )
    final = {}
    for row in rows:  # each lineage's last checkpoint
        if row["lineage"] not in final or row["epoch"] > final[row["lineage"]]["epoch"]:
            final[row["lineage"]] = row
    finals = list(final.values())
    summary = {
        **{
            f"{part} {family}": summarize([r for r in finals if (r["part"], r["family"]) == (part, family)])
            for part, family in sorted({(r["part"], r["family"]) for r in finals})
        },
        "held_out_models": len(rows),
        "held_out_lineages": len(finals),
        "mean_normalized_error": statistics.fmean(r["normalized_error"] for r in rows),
        "max_normalized_error": max(r["normalized_error"] for r in rows),
        "final_checkpoints_mean_original": statistics.fmean(r["original"] for r in finals),
        "final_checkpoints_mean_original_bn_reestimated": statistics.fmean(
            r["original_bn_reestimated"] for r in finals
        ),
        "final_checkpoints_mean_rebuilt_bn_reestimated": statistics.fmean(r["rebuilt_bn_reestimated"] for r in finals),
        "final_checkpoints_mean_rebuilt_bn_copied": statistics.fmean(r["rebuilt_bn_copied"] for r in finals),
        "final_checkpoints_mean_random_bn_reestimated": statistics.fmean(r["random_bn_reestimated"] for r in finals),
        # like for like: rebuilt and original both with BatchNorm re-estimated (re-estimation alone can add points)
        "final_checkpoints_kept_fraction": statistics.fmean(
            r["rebuilt_bn_reestimated"] / r["original_bn_reestimated"] for r in finals
        ),
        "final_checkpoints_kept_fraction_of_original_as_trained": statistics.fmean(
            r["rebuilt_bn_reestimated"] / r["original"] for r in finals
        ),
        "seconds": round(time.perf_counter() - began, 1),
    }
    for key, value in summary.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    info = autoencoder.info
    title = (
        f"{len(finals)} held-out lineages rebuilt by a {info.get('train', {}).get('model')} autoencoder "
        f"(step {info.get('step')})"
    )
    plot(rows, results.with_suffix(".png"), title)
    results.with_suffix(".md").write_text(markdown(rows, summary))
    save(
        {
            "run": args.run,
            "autoencoder": {
                "settings": autoencoder.config.__dict__,
                "train": info.get("train"),
                "step": info.get("step"),
            },
            "summary": summary,
            "models": rows,
        },
        results.with_suffix(".json"),
    )


if __name__ == "__main__":
    main()
