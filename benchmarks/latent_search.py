"""Does the latent search improve a generated model beyond the split it searched on, and more than the same steps
taken in weight space?

    .venv/bin/python benchmarks/latent_search.py [--autoencoder out/runs/bench] [--seeds 0 1 2 3 4] [--steps 3]

The search (``search_steps``) moves each candidate's latents along the gradient of the selection split's
nearest-class-mean loss. Here, for the bench's class-transfer task (``sweeps/bench-search.yaml``: EuroSAT RGB classes
5-9, anchors trained on classes 0-4), the top candidate of each seed is generated without and with the search, and
its features are scored by a nearest-class-mean classifier on the test split, with class means from 500 train images
(the card's selection score is recorded beside). The strongest simple alternative takes the same steps in weight
space: the unsearched top candidate, the same loss on the same selection images, Adam on every weight tensor moving
each about ``--lr`` of the tensor's own spread per step (as the search moves each latent by that much of its
dimension's spread), then BatchNorm re-estimated as generation does. Paired differences over seeds with 95%
t-intervals; results are printed and saved to benchmarks/results/latent-search.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

import geosane
from geosane.bench.statistics import interval as t_interval
from geosane.config import make
from geosane.generation import GenerateConfig, Generator, reestimate_batchnorm
from geosane.generation.search import Features, nearest_mean_loss
from geosane.tasks import load_task

from measure import save


def test_accuracy(model: torch.nn.Module, train: tuple, test: tuple, classes: int) -> float:
    """Nearest-class-mean accuracy on the test split of the model's pooled features, means from the train images."""
    model.eval()
    with torch.no_grad():

        def features(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([model.forward_head(model.forward_features(b), pre_logits=True) for b in x.split(256)])

        fitted, scored = features(train[0]), features(test[0])
    means = torch.stack([fitted[train[1] == c].mean(0) for c in range(classes)])
    return float((torch.cdist(scored, means).argmin(1) == test[1]).float().mean())


def weight_steps(model: torch.nn.Module, plan: object, steps: int, lr: float) -> torch.nn.Module:
    """``steps`` Adam steps on the selection split's nearest-class-mean loss directly on a copy of the weights, each
    tensor's step ``lr`` times its spread; then BatchNorm re-estimated on the target's unlabeled images."""
    model = copy.deepcopy(model).train()
    target = plan.target  # type: ignore[attr-defined]
    groups = [
        {"params": [p], "lr": lr * max(float(p.detach().std()), 1e-8)} for p in model.parameters() if p.numel() > 1
    ]
    optimizer = torch.optim.Adam(groups)
    features = Features(model)
    for _ in range(steps):
        loss = nearest_mean_loss(features(target.selection_x), target.selection_y, target.num_classes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    reestimate_batchnorm(model, target.unlabeled)
    return model.eval()


def interval(values: list[float]) -> list[float]:
    """The 95% t-interval of the mean (the bench's, :func:`geosane.bench.results.interval`), as [low, high]."""
    mean, _, half = t_interval(values)
    return [round(mean - half, 4), round(mean + half, 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", default="out/runs/bench")
    parser.add_argument("--collection", default="out/bench-collection")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--lr", type=float, default=0.05, help="step size, in units of each latent's or weight's spread"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latent-search.json"))
    args = parser.parse_args()

    data = load_task("eurosat_rgb?classes=5-9", train_limit=500)
    autoencoder = geosane.Autoencoder.load(args.autoencoder)
    settings = {"anchors": "dataset=eurosat_rgb?classes=0-4", "data": data.spec, "candidates": 4}
    prompt = "timm:test_resnet?num_classes=5"
    runs = []
    for seed in args.seeds:
        plan = Generator(make(GenerateConfig, prompt=prompt, seed=seed, **settings), autoencoder, args.collection)
        plain = None
        for arm in ("generated", "latent search", "weight steps"):
            start = time.perf_counter()
            if arm == "weight steps":
                model, card = weight_steps(plain.model, plan, args.steps, args.lr), {}  # type: ignore[union-attr]
            else:
                steps = args.steps if arm == "latent search" else 0
                config = make(
                    GenerateConfig, prompt=prompt, seed=seed, search_steps=steps, search_lr=args.lr, **settings
                )
                (best,) = Generator(config, autoencoder, args.collection).generate(use_ray=False)
                model, card = best.model, best.card
                plain = plain or best
            run = {
                "seed": seed,
                "arm": arm,
                "selection": card.selection.score if card else None,
                "test": test_accuracy(model, data.train, data.test, data.num_classes),
                "search": card.search.model_dump() if card and card.search else None,
                "seconds": round(time.perf_counter() - start, 1),
            }
            runs.append(run)
            print(f"seed {seed} {arm}: test {run['test']:.3f} (selection {run['selection']}), {run['seconds']} s")
    summary = {}
    base = [r["test"] for r in runs if r["arm"] == "generated"]
    for arm in ("latent search", "weight steps"):
        scores = [r["test"] for r in runs if r["arm"] == arm]
        differences = [b - a for a, b in zip(base, scores, strict=True)]
        summary[arm] = {
            "test": round(statistics.mean(scores), 4),
            "minus_generated": round(statistics.mean(differences), 4),
            "interval": interval(differences),
        }
        print(f"{arm}: test {summary[arm]['test']:.3f} vs generated {statistics.mean(base):.3f}, {summary[arm]}")
    searched, stepped = ([r["test"] for r in runs if r["arm"] == a] for a in ("latent search", "weight steps"))
    latent_minus_weight = [a - b for a, b in zip(searched, stepped, strict=True)]
    summary["latent search minus weight steps"] = {
        "mean": round(statistics.mean(latent_minus_weight), 4),
        "interval": interval(latent_minus_weight),
    }
    print("latent search minus weight steps:", summary["latent search minus weight steps"])
    save(
        {
            "benchmark": "latent-search",
            "task": data.spec,
            "test_samples": len(data.test[1]),
            "steps": args.steps,
            "lr": args.lr,
            "generated_test": round(statistics.mean(base), 4),
            "runs": runs,
            "summary": summary,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
