"""Do generated models work on real data? Generation from a trained autoencoder, 3 seeds, metrics on test splits.

    .venv/bin/python benchmarks/generation_quality.py --autoencoder out/runs/small [--seeds 0 1 2]

(a) The zoo's own architecture on EuroSAT RGB, anchored on the zoo's EuroSAT models: the generated model before any
    fine-tuning (BatchNorm re-estimated, ranked on the selection split) against a random initialization with the same
    re-estimation, then one epoch of fine-tuning from each against one epoch from scratch (same data, same schedule).
(b) A new band count: a 13-band prompt (EuroSAT multispectral) anchored on the 3-band RGB zoo models (the input
    convolution adapted), and a linear probe (logistic regression on pooled features of the train split) on the
    generated backbone against one on a random backbone, scored on the test split.
Prints the figures and saves them to benchmarks/results/generation-quality.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import geosane
from geosane.generation import reestimate_batchnorm
from geosane.tasks import FineTuning, Recipe, create_model, score_samples

from measure import save

ARCH = "test_resnet"
TRAIN_IMAGES = 4000  # one epoch of fine-tuning: the zoo's training set size
TEST_IMAGES = 2000  # the zoo's test subset


def fine_tune(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, seed: int) -> torch.nn.Module:
    """One epoch of the one fine-tuning recipe (AdamW, one-cycle, batch 64, horizontal flips), as the zoo trains."""
    FineTuning(model, (x, y), "classification", Recipe(epochs=1, lr=lr, batch_size=64), seed).epoch()
    return model.eval()


def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.forward_head(model.forward_features(b), pre_logits=True) for b in x.split(128)])


def linear_probe(model: torch.nn.Module, train, test) -> float:
    """Logistic regression on standardized pooled features: what the backbone offers without fine-tuning."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(features(model, train.x).numpy(), train.y.numpy())
    return float(probe.score(features(model, test.x).numpy(), test.y.numpy()))


def rgb_experiment(autoencoder: str, seed: int, data: dict) -> dict:
    train, test, unlabeled = data["train"], data["test"], data["unlabeled"]
    began = time.perf_counter()
    (generated,) = geosane.generate(
        autoencoder,
        f"timm:{ARCH}?num_classes=10",
        anchors="dataset=eurosat_rgb",
        data="eurosat_rgb",
        candidates=4,
        seed=seed,
    )
    seconds = time.perf_counter() - began
    torch.manual_seed(seed)
    random = create_model(ARCH, "classification", 3, 10)
    reestimate_batchnorm(random, unlabeled)
    row = {
        "seed": seed,
        "generate_seconds": round(seconds, 1),
        "anchor": generated.card["anchor"],
        "selection_score": generated.card["selection"]["score"],
        "generated_epoch0": score_samples(generated.model, "classification", test.x, test.y, 10),
        "random_bn_reestimated_epoch0": score_samples(random, "classification", test.x, test.y, 10),
    }
    for name, model, lr in [
        ("generated_epoch1_lr0.001", generated.model, 0.001),
        ("scratch_epoch1_lr0.005", random, 0.005),
    ]:
        tuned = fine_tune(model, train.x, train.y, lr, seed)
        row[name] = score_samples(tuned, "classification", test.x, test.y, 10)
    torch.manual_seed(seed)
    scratch = fine_tune(create_model(ARCH, "classification", 3, 10), train.x, train.y, 0.001, seed)
    row["scratch_epoch1_lr0.001"] = score_samples(scratch, "classification", test.x, test.y, 10)
    return row


def multispectral_experiment(autoencoder: str, seed: int, data: dict) -> dict:
    (generated,) = geosane.generate(
        autoencoder,
        f"timm:{ARCH}?in_chans=13&num_classes=10",
        anchors="dataset=eurosat_rgb",
        data="eurosat_ms",
        candidates=4,
        seed=seed,
    )
    torch.manual_seed(seed)
    random = create_model(ARCH, "classification", 13, 10)
    reestimate_batchnorm(random, data["ms_train"].x)
    return {
        "seed": seed,
        "anchor": generated.card["anchor"],
        "anchors_fitted": sorted({a["fitted"] for a in generated.card["anchors"]}),
        "generated_linear_probe": linear_probe(generated.model, data["ms_train"], data["ms_test"]),
        "random_linear_probe": linear_probe(random, data["ms_train"], data["ms_test"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation-quality.json"))
    args = parser.parse_args()

    torch.set_num_threads(2)
    rgb, ms = geosane.datasets.get("eurosat_rgb"), geosane.datasets.get("eurosat_ms")
    data = {
        "train": rgb.load("train", limit=TRAIN_IMAGES),
        "test": rgb.load("test", limit=TEST_IMAGES),
        "unlabeled": rgb.load("train", limit=512).x,
        "ms_train": ms.load("train"),
        "ms_test": ms.load("test"),
    }
    rows_rgb, rows_ms = [], []
    for seed in args.seeds:
        rows_rgb.append(rgb_experiment(args.autoencoder, seed, data))
        print("(a) eurosat_rgb", {k: round(v, 3) if isinstance(v, float) else v for k, v in rows_rgb[-1].items()})
        rows_ms.append(multispectral_experiment(args.autoencoder, seed, data))
        print("(b) eurosat_ms ", {k: round(v, 3) if isinstance(v, float) else v for k, v in rows_ms[-1].items()})

    def mean(rows: list[dict], key: str) -> float:
        return round(statistics.fmean(r[key] for r in rows), 4)

    summary = {
        "a_generated_epoch0": mean(rows_rgb, "generated_epoch0"),
        "a_random_bn_reestimated_epoch0": mean(rows_rgb, "random_bn_reestimated_epoch0"),
        "a_generated_epoch1": mean(rows_rgb, "generated_epoch1_lr0.001"),
        "a_scratch_epoch1_lr0.005": mean(rows_rgb, "scratch_epoch1_lr0.005"),
        "a_scratch_epoch1_lr0.001": mean(rows_rgb, "scratch_epoch1_lr0.001"),
        "b_generated_linear_probe": mean(rows_ms, "generated_linear_probe"),
        "b_random_linear_probe": mean(rows_ms, "random_linear_probe"),
        "chance": 0.1,
    }
    for key, value in summary.items():
        print(f"{key}: {value}")
    save(
        {
            "benchmark": "generation-quality",
            "autoencoder": args.autoencoder,
            "arch": ARCH,
            "train_images": TRAIN_IMAGES,
            "test_images": TEST_IMAGES,
            "summary": summary,
            "eurosat_rgb": rows_rgb,
            "eurosat_ms": rows_ms,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
