"""Which autoencoder shape rebuilds models it never saw, for a fixed wall-clock budget on one core each?

    .venv/bin/python benchmarks/autoencoder_sizes.py --collection out/hetero --minutes 6 \
        --holdout family=convnext,vision_transformer --jobs 2

A plain PyTorch loop (no Ray, no DeepSpeed: the shape is what is compared) over a seeded sample of the collection's
zoo lineages, a few per architecture family (both checkpoints of each), at the collection's token size. Whole
families named by ``--holdout`` are never trained on; of the rest, a fifth of the lineages is held out. Each shape
``D_MODEL:LATENT`` (optionally ``:BLOCKS``) trains for the same minutes with GeoSANE's loss on shifted views, windows
drawn per model (every model as often, whatever its size), and reports the normalized reconstruction error of
training models, held-out lineages of seen families and held-out families, per family. ``--jobs 2`` trains two
shapes at a time, one core each. Results are printed and saved to benchmarks/results/autoencoder-sizes.json.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
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


def train_shape(collection_url: str, split: dict, shape: str, minutes: float, seed: int) -> dict:
    torch.set_num_threads(1)
    collection = geosane.Collection(collection_url)
    records = {r.id: r for r in collection.records()}
    train_tokens = [collection.tokens(i) for i in split["train"]]
    d_model, latent, *blocks = (int(v) for v in shape.split(":"))
    token_size = int(train_tokens[0].tokens.shape[1])
    depth = {"encoder_blocks": blocks[0], "decoder_blocks": blocks[0]} if blocks else {}
    config = geosane.AutoencoderConfig(
        token_size=token_size, d_model=d_model, latent_dim=latent, window=WINDOW, **depth
    )
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
    errors: dict[str, dict[str, list[float]]] = {}
    for part in ("train", "val", "held_out"):
        for model_id in split[part]:
            tokens = train_tokens[split["train"].index(model_id)] if part == "train" else collection.tokens(model_id)
            family = records[model_id].family
            errors.setdefault(part, {}).setdefault(family, []).append(autoencoder.reconstruction_error(tokens))
    return {
        "shape": shape,
        "token_size": token_size,
        "d_model": d_model,
        "latent_dim": latent,
        "compression": token_size / latent,
        **depth,
        "parameters": sum(p.numel() for p in autoencoder.parameters()),
        "minutes": minutes,
        "steps": steps,
        "error": {
            part: {
                **{f: round(float(np.mean(v)), 4) for f, v in sorted(by_family.items())},
                "all": round(float(np.mean([e for v in by_family.values() for e in v])), 4),
            }
            for part, by_family in errors.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["128:32", "128:16", "128:8", "128:4", "256:8:3"],
        help="D_MODEL:LATENT[:BLOCKS] (the small size is 128:32 with 2 blocks each side)",
    )
    parser.add_argument("--holdout", default="family=convnext,vision_transformer", help="FIELD=V1,V2 never trained on")
    parser.add_argument("--lineages", type=int, default=6, help="zoo lineages sampled per family")
    parser.add_argument("--jobs", type=int, default=2, help="shapes trained at once (one core each)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "autoencoder-sizes.json"))
    args = parser.parse_args()

    collection = geosane.Collection(args.collection)
    field, _, values = args.holdout.partition("=")
    holdout = {field: values.split(",")} if values else {}
    rng = np.random.default_rng(0)
    by_family: dict[str, list[str]] = {}
    zoo = [r for r in collection.records() if "lineage" in r.tags]
    for r in zoo:
        by_family.setdefault(r.family, [])
        if r.tags["lineage"] not in by_family[r.family]:
            by_family[r.family].append(r.tags["lineage"])
    chosen = {str(x) for lineages in by_family.values() for x in rng.permutation(sorted(lineages))[: args.lineages]}
    split = asdict(split_models([r for r in zoo if r.tags["lineage"] in chosen], 0.2, 0, holdout))
    print(
        f"{len(split['train'])} training checkpoints, {len(split['val'])} of held-out lineages, "
        f"{len(split['held_out'])} of held-out families ({args.holdout}); families {sorted(by_family)}",
        flush=True,
    )
    runs = []
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train_shape, args.collection, split, shape, args.minutes, 0) for shape in args.shapes]
        for future in futures:
            run = future.result()
            runs.append(run)
            error = run["error"]
            print(
                f"d_model {run['d_model']:3d}, latent {run['latent_dim']:3d} ({run['compression']:g}x): "
                f"{run['steps']} steps in {args.minutes:g} min; error train {error['train']['all']}, held-out "
                f"lineages {error['val']['all']}, held-out families {error.get('held_out', {})}",
                flush=True,
            )
    save(
        {
            "benchmark": "autoencoder-sizes",
            "collection": args.collection,
            "holdout": holdout,
            "held_out_lineages": split["val_lineages"],
            "runs": runs,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
