"""Prompts no collection model shares: what does the heterogeneous autoencoder generate for a real architecture?

    .venv/bin/python benchmarks/unseen_prompts.py --autoencoder out/runs/hetero [--epochs 1] [--train-limit 1000]

For each prompt (``resnet18``, ``efficientnet_b0``, ``convnext_atto``, ``vit_tiny_patch16_224``,
``swin_tiny_patch4_window7_224``, built for 64-pixel inputs) and band count (3 and 13): ``geosane.generate`` with
the prompt's own random initialization as the anchor (no collection model has these shapes), on the held-out
class-transfer data (EuroSAT RGB classes 5-9; EuroSAT-MS classes 5-9 for 13 bands), BatchNorm re-estimated and the
best of 4 candidates chosen on the selection split. The generated model must load strictly into the architecture;
then it and the same architecture from scratch (timm's initialization, same seed, BatchNorm re-estimated alike)
are fine-tuned with the same recipe for ``--epochs`` and scored on the test split (epoch 0 and after). Printed and
saved to benchmarks/results/unseen-prompts.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch

import geosane
from geosane.generation import reestimate_batchnorm
from geosane.tasks import FineTuning, Recipe, load_task, score, sized_for_input

from measure import save

PROMPTS = [
    "resnet18",
    "efficientnet_b0",
    "convnext_atto",
    "vit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
]
DATA = {3: "eurosat_rgb?classes=5-9", 13: "eurosat_ms?classes=5-9"}


def fine_tuned(model: torch.nn.Module, data, epochs: int, lr: float, seed: int) -> list[float]:
    """Test scores at epoch 0 and after each epoch of the shared recipe."""
    scores = [score(model, data, "test")]
    tuning = FineTuning(model, data.train, data.task, Recipe(epochs, lr, 32, 0.01), seed)
    for _ in range(epochs):
        tuning.epoch()
        scores.append(score(model, data, "test"))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", required=True)
    parser.add_argument("--prompts", nargs="+", default=PROMPTS)
    parser.add_argument("--bands", nargs="+", type=int, default=[3, 13])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--train-limit", type=int, default=1000)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "unseen-prompts"))
    args = parser.parse_args()

    torch.set_num_threads(2)
    rows = []
    for bands in args.bands:
        data = load_task(DATA[bands], None, args.train_limit, 500, args.test_limit)
        for name in args.prompts:
            sizes = {"img_size": 64} if sized_for_input(name, "classification") or "swin" in name else {}
            options = "".join(f"&{k}={v}" for k, v in sizes.items())
            prompt = f"timm:{name}?in_chans={bands}&num_classes={data.num_classes}&seed={args.seed}{options}"
            began = time.perf_counter()
            (generated,) = geosane.generate(
                args.autoencoder,
                prompt,
                anchors="prompt",
                data=DATA[bands],
                candidates=4,
                seed=args.seed,
                use_ray=False,
            )
            seconds = time.perf_counter() - began
            reference = timm.create_model(name, in_chans=bands, num_classes=data.num_classes, **sizes)
            reference.load_state_dict(generated.state_dict, strict=True)  # every tensor, right shape, no extra
            torch.manual_seed(args.seed)
            scratch = timm.create_model(name, in_chans=bands, num_classes=data.num_classes, **sizes)
            reestimate_batchnorm(scratch, data.train[0][:512])
            row = {
                "prompt": name,
                "bands": bands,
                "data": DATA[bands],
                "parameters": sum(p.numel() for p in reference.parameters()),
                "generate_seconds": round(seconds, 1),
                "distance_to_anchor": generated.card.distance_to_anchor,
                "generated": fine_tuned(generated.model, data, args.epochs, args.lr, args.seed),
                "scratch": fine_tuned(scratch, data, args.epochs, args.lr, args.seed),
            }
            rows.append(row)
            print(
                f"{name:30s} {bands:2d} bands  {row['parameters'] / 1e6:5.1f}M  generated in {seconds:5.0f} s  "
                f"test generated {row['generated']}  scratch {row['scratch']}",
                flush=True,
            )
    lines = [
        f"| prompt | bands | parameters | generated: epoch 0 | epoch {args.epochs} | scratch: epoch 0 | "
        f"epoch {args.epochs} |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['prompt']} | {r['bands']} | {r['parameters'] / 1e6:.1f}M | {r['generated'][0]:.3f} | "
            f"{r['generated'][-1]:.3f} | {r['scratch'][0]:.3f} | {r['scratch'][-1]:.3f} |"
        )
    Path(args.out).with_suffix(".md").write_text(
        f"Unseen prompts from `{args.autoencoder}`, one seed ({args.seed}), lr {args.lr}, {args.epochs} epoch(s), "
        f"{args.train_limit} training images; test accuracy.\n\n" + "\n".join(lines) + "\n"
    )
    save(
        {"benchmark": "unseen-prompts", "autoencoder": args.autoencoder, "args": vars(args), "rows": rows},
        Path(args.out).with_suffix(".json"),
    )


if __name__ == "__main__":
    main()
