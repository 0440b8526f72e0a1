"""Which autoencoder shape generalizes to lineages it never saw, for a fixed wall-clock budget on one core?

    .venv/bin/python benchmarks/autoencoder_sizes.py --collection out/zoo-small [--minutes 4]
                     [--shapes 230:256:128 64:128:64 32:128:32 32:64:32] [--models 20]

A plain PyTorch loop (no Ray, no DeepSpeed: the shape is what is compared) over a seeded subset of the collection's
EuroSAT zoo checkpoints, re-tokenized at each shape's token size and split by lineage (every checkpoint of a trial on
one side). Each shape ``TOKEN:D_MODEL:LATENT`` trains for the same minutes with GeoSANE's loss on shifted views, then
the normalized reconstruction error of training and held-out models is reported. Results are printed and saved to
benchmarks/results/autoencoder-sizes.json.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

import geosane
from geosane.autoencoder.losses import LossConfig, training_losses
from geosane.train import split_models
from geosane.views import ViewConfig, cut_windows, make_views, shifted_starts, window_starts

from measure import save

WINDOW = 64
BATCH = 16


def train_shape(train, val, token_size: int, d_model: int, latent: int, minutes: float, seed: int) -> dict:
    tokenizer = geosane.TokenizerConfig(token_size)
    train_tokens = [geosane.tokenize(state, tokenizer) for state in train]
    val_tokens = [geosane.tokenize(state, tokenizer) for state in val]
    config = geosane.AutoencoderConfig(token_size=token_size, d_model=d_model, latent_dim=latent, window=WINDOW)
    torch.manual_seed(seed)
    autoencoder = geosane.Autoencoder(config)
    optimizer = torch.optim.AdamW(autoencoder.parameters(), lr=1e-3, weight_decay=0.05)
    scales = [geosane.Scale.of(t.tokens, t.valid) for t in train_tokens]
    views = ViewConfig(window=WINDOW, noise=0.05, shift=0.25)
    rng = np.random.default_rng(seed)
    began, steps, budget = time.perf_counter(), 0, minutes * 60
    while (elapsed := time.perf_counter() - began) < budget:
        i = int(rng.integers(len(train_tokens)))
        tokens = train_tokens[i]
        arrays = tokens.tokens.numpy(), tokens.positions.numpy(), tokens.valid.numpy()
        starts = window_starts(len(arrays[0]), views, rng)[:BATCH]
        shifted = cut_windows(*arrays, shifted_starts(starts, len(arrays[0]), views, rng), WINDOW)
        batch = {
            k: torch.from_numpy(v)
            for k, v in make_views(cut_windows(*arrays, starts, WINDOW), views, rng, shifted).items()
        }
        batch["mean"] = scales[i].mean.expand(len(starts))
        batch["std"] = scales[i].std.expand(len(starts))
        progress = elapsed / budget  # the same one-cycle shape as training, on the clock
        factor = (
            0.04 + 0.96 * progress / 0.1 if progress < 0.1 else 0.5 * (1 + math.cos(math.pi * (progress - 0.1) / 0.9))
        )
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * factor
        losses = training_losses(autoencoder, batch, LossConfig(), bf16=False)
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(autoencoder.parameters(), 1.0)
        optimizer.step()
        steps += 1
    autoencoder.eval()
    return {
        "token_size": token_size,
        "d_model": d_model,
        "latent_dim": latent,
        "parameters": sum(p.numel() for p in autoencoder.parameters()),
        "minutes": minutes,
        "steps": steps,
        "train_error": [round(autoencoder.reconstruction_error(t), 4) for t in train_tokens[:4]],
        "held_out_error": [round(autoencoder.reconstruction_error(t), 4) for t in val_tokens],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--shapes", nargs="+", default=["230:256:128", "64:128:64", "32:128:32", "32:64:32"])
    parser.add_argument("--models", type=int, default=20, help="zoo checkpoints used (whole lineages)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "autoencoder-sizes.json"))
    args = parser.parse_args()

    torch.set_num_threads(1)
    collection = geosane.Collection(args.collection)
    zoo = sorted((r for r in collection.records() if r.tags.get("dataset") == "eurosat_rgb"), key=lambda r: r.name)
    chosen = zoo[: args.models]
    split = split_models(chosen, 0.2, seed=0)
    train = [collection.export(i) for i in split.train]
    val = [collection.export(i) for i in split.val]
    print(f"{len(train)} training and {len(val)} held-out checkpoints ({len(split.val_lineages)} held-out lineages)")
    runs = []
    for shape in args.shapes:
        token_size, d_model, latent = (int(v) for v in shape.split(":"))
        run = train_shape(train, val, token_size, d_model, latent, args.minutes, seed=0)
        runs.append(run)
        print(
            f"tokens {token_size:3d}, d_model {d_model:3d}, latent {latent:3d}: {run['steps']} steps in "
            f"{args.minutes:g} min; training error {run['train_error']}, held-out {run['held_out_error']}",
            flush=True,
        )
    save({"benchmark": "autoencoder-sizes", "held_out_lineages": split.val_lineages, "runs": runs}, args.out)


if __name__ == "__main__":
    main()
