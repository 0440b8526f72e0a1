"""Do generated models work on real data, and better than copying? Generation from a trained autoencoder, seeds,
metrics on test splits, against the baselines that separate the latent space from copying (the bench's own: the
selection-best anchor, it decoded without noise, it plus noise at the generated model's distance, the anchors' soup).

    .venv/bin/python benchmarks/generation_quality.py --autoencoder out/runs/small [--seeds 0 1 2 3 4]
    .venv/bin/python benchmarks/generation_quality.py --autoencoder out/runs/bench \
        --data eurosat_rgb?classes=0-4 --anchors dataset=eurosat_rgb?classes=0-4 --out ...

(a) The zoo's own architecture on EuroSAT RGB, anchored on the zoo's EuroSAT models: the generated model and every
    baseline before any fine-tuning (each made ready alike: BatchNorm re-estimated, chosen on the selection split)
    against a random initialization with the same re-estimation, then one epoch of fine-tuning from each against one
    epoch from scratch (same data, same schedule); and generation's settings (bandwidth 0.01 and 0.2, token and
    individual sampling, 16 candidates) at epoch 0, each paired with the default by seed.
(b) A new band count: a 13-band prompt (EuroSAT multispectral) anchored on the 3-band RGB zoo models (the input
    convolution mapped by band), and a linear probe (logistic regression on pooled features of the train split) on
    the generated backbone and every baseline against one on a random backbone, scored on the test split.
Prints the figures and saves them to benchmarks/results/generation-quality.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import geosane
from geosane.generation import reestimate_batchnorm
from geosane.tasks import FineTuning, Recipe, create_model, score_samples

from measure import save

ARCH = "test_resnet"
#: Generation settings tried beside the default (bandwidth 0.05, joint sampling, 4 candidates), epoch 0 of (a).
VARIANTS = {
    "bandwidth_0.01": {"bandwidth": 0.01},
    "bandwidth_0.2": {"bandwidth": 0.2},
    "token_sampling": {"sampling": "token"},
    "individual_sampling": {"sampling": "individual"},
    "candidates_16": {"candidates": 16},
}
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


def models(autoencoder: str, prompt: str, anchors: str, data: str, seed: int) -> dict[str, torch.nn.Module]:
    """The generated model and every baseline of the bench, for one prompt, target and seed."""
    from geosane.bench.ablations import BASELINES
    from geosane.config import make
    from geosane.generation import GenerateConfig, Generator

    config = make(GenerateConfig, prompt=prompt, anchors=anchors, data=data, candidates=4, seed=seed)
    loaded = geosane.Autoencoder.load(autoencoder)
    (generated,) = Generator(config, loaded).generate()
    out = {"generated": generated.model}
    generator = Generator(config, loaded)
    for name, build in BASELINES.items():
        weights, _ = build(generator)
        model = create_model(ARCH, "classification", generator.prompt.in_chans, generator.num_classes)
        model.load_state_dict(weights, strict=True)
        out[name] = model.eval()
    return out


def rgb_experiment(args: argparse.Namespace, seed: int, data: dict) -> dict:
    train, test, unlabeled = data["train"], data["test"], data["unlabeled"]
    classes = data["classes"]
    began = time.perf_counter()
    built = models(args.autoencoder, f"timm:{ARCH}?num_classes={classes}", args.anchors, args.data, seed)
    torch.manual_seed(seed)
    random = create_model(ARCH, "classification", 3, classes)
    reestimate_batchnorm(random, unlabeled)
    row: dict = {"seed": seed, "seconds": round(time.perf_counter() - began, 1)}
    for name, model in built.items():
        row[f"{name}_epoch0"] = score_samples(model, "classification", test.x, test.y, classes)
    row["random_bn_reestimated_epoch0"] = score_samples(random, "classification", test.x, test.y, classes)
    prompt = f"timm:{ARCH}?num_classes={classes}"
    for name, settings in VARIANTS.items():
        options = {"candidates": 4, **settings}
        (variant,) = geosane.generate(
            args.autoencoder, prompt, anchors=args.anchors, data=args.data, seed=seed, **options
        )
        row[f"{name}_epoch0"] = score_samples(variant.model, "classification", test.x, test.y, classes)
    for name, model in built.items():
        tuned = fine_tune(model, train.x, train.y, 0.001, seed)
        row[f"{name}_epoch1_lr0.001"] = score_samples(tuned, "classification", test.x, test.y, classes)
    row["scratch_epoch1_lr0.005"] = score_samples(
        fine_tune(random, train.x, train.y, 0.005, seed), "classification", test.x, test.y, classes
    )
    torch.manual_seed(seed)
    scratch = fine_tune(create_model(ARCH, "classification", 3, classes), train.x, train.y, 0.001, seed)
    row["scratch_epoch1_lr0.001"] = score_samples(scratch, "classification", test.x, test.y, classes)
    return row


def multispectral_experiment(args: argparse.Namespace, seed: int, data: dict) -> dict:
    built = models(args.autoencoder, f"timm:{ARCH}?in_chans=13&num_classes=10", args.anchors, "eurosat_ms", seed)
    torch.manual_seed(seed)
    random = create_model(ARCH, "classification", 13, 10)
    reestimate_batchnorm(random, data["ms_train"].x)
    row: dict = {"seed": seed}
    for name, model in {**built, "random": random}.items():
        row[f"{name}_linear_probe"] = linear_probe(model, data["ms_train"], data["ms_test"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", required=True)
    parser.add_argument("--data", default="eurosat_rgb", help="(a)'s dataset: the zoo's own (eurosat_rgb?classes=0-4)")
    parser.add_argument("--anchors", default="dataset=eurosat_rgb", help="the anchor query of (a) and (b)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation-quality.json"))
    args = parser.parse_args()

    torch.set_num_threads(2)
    rgb, ms = geosane.datasets.get(args.data), geosane.datasets.get("eurosat_ms")
    data = {
        "classes": rgb.num_classes,
        "train": rgb.load("train", limit=TRAIN_IMAGES),
        "test": rgb.load("test", limit=TEST_IMAGES),
        "unlabeled": rgb.load("train", limit=512).x,
        "ms_train": ms.load("train"),
        "ms_test": ms.load("test"),
    }
    rows_rgb, rows_ms = [], []
    for seed in args.seeds:  # saved after every seed: a run cut short keeps the seeds it finished
        rows_rgb.append(rgb_experiment(args, seed, data))
        print("(a) eurosat_rgb", {k: round(v, 3) if isinstance(v, float) else v for k, v in rows_rgb[-1].items()})
        rows_ms.append(multispectral_experiment(args, seed, data))
        print("(b) eurosat_ms ", {k: round(v, 3) if isinstance(v, float) else v for k, v in rows_ms[-1].items()})
        result = {
            "benchmark": "generation-quality",
            "autoencoder": args.autoencoder,
            "data": args.data,
            "anchors": args.anchors,
            "arch": ARCH,
            "train_images": TRAIN_IMAGES,
            "test_images": TEST_IMAGES,
            "seeds": [row["seed"] for row in rows_rgb],
            "summary": summarize(rows_rgb, rows_ms, data["classes"]),
            "eurosat_rgb": rows_rgb,
            "eurosat_ms": rows_ms,
        }
        save(result, args.out)
    for key, value in result["summary"].items():
        print(f"{key}: {value}")


def summarize(rows_rgb: list[dict], rows_ms: list[dict], classes: int) -> dict:
    """Mean, std (ddof=1) and 95% interval over seeds of every figure, and each baseline's and setting's paired
    difference against the generated model by seed."""
    from geosane.bench.statistics import interval as t_interval

    def interval(rows: list[dict], key: str) -> dict:
        mean, std, half = t_interval([r[key] for r in rows])
        return {"mean": round(mean, 4), "std": round(std, 4), "ci95": round(half, 4)}

    def paired(rows: list[dict], key: str, reference: str) -> dict:
        mean, _, half = t_interval([r[key] - r[reference] for r in rows])
        return {"mean": round(mean, 4), "ci95": round(half, 4), "excludes_zero": bool(abs(mean) > half)}

    names = ["generated", "anchor", "decoded", "noised", "soup"]
    return {
        **{f"a_{n}_epoch0": interval(rows_rgb, f"{n}_epoch0") for n in names},
        "a_random_bn_reestimated_epoch0": interval(rows_rgb, "random_bn_reestimated_epoch0"),
        **{f"a_{n}_epoch1": interval(rows_rgb, f"{n}_epoch1_lr0.001") for n in names},
        "a_scratch_epoch1_lr0.005": interval(rows_rgb, "scratch_epoch1_lr0.005"),
        "a_scratch_epoch1_lr0.001": interval(rows_rgb, "scratch_epoch1_lr0.001"),
        **{f"b_{n}_linear_probe": interval(rows_ms, f"{n}_linear_probe") for n in [*names, "random"]},
        **{
            f"{part}_{n}_minus_generated": paired(rows, f"{n}{suffix}", f"generated{suffix}")
            for part, rows, suffix in (
                ("a_epoch0", rows_rgb, "_epoch0"),
                ("a_epoch1", rows_rgb, "_epoch1_lr0.001"),
                ("b_probe", rows_ms, "_linear_probe"),
            )
            for n in names[1:]
        },
        **{f"a_{n}_epoch0": interval(rows_rgb, f"{n}_epoch0") for n in VARIANTS},
        **{f"a_epoch0_{n}_minus_generated": paired(rows_rgb, f"{n}_epoch0", "generated_epoch0") for n in VARIANTS},
        "chance": round(1 / classes, 4),
    }


if __name__ == "__main__":
    main()
