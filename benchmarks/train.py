"""Training throughput and memory: Ray Train + DeepSpeed against plain PyTorch, Ray Data against pyarrow,
and the largest autoencoder each ZeRO stage can train on this machine.

    .venv/bin/python benchmarks/train.py [--collection URL] [--steps 30] [--memory]

1. tokens/s of the Ray Train + DeepSpeed loop (2 workers) against a single-process PyTorch loop on the same
   windows at the same global batch (aim: overhead at most 1.2x);
2. Ray Data input throughput (read_parquet -> windows -> views) against reading the same shards with pyarrow;
3. with --memory: per ZeRO stage (2 workers), DeepSpeed's estimate of model-state memory for each named
   autoencoder size, and for those the estimate says fit in this machine's memory, the measured peak RSS of
   completing training steps. Configs the estimate rules out are not run (an out-of-memory run can take the
   machine down).
Figures are printed and saved to benchmarks/results/train.json.
"""

from __future__ import annotations

import os
import sys

# benchmarks/tokenize.py shares its name with the standard library's tokenize: keep this folder off the path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from geosane import sources, storage
from geosane.collection import Collection, software_versions
from geosane.data import split_models, window_dataset
from geosane.losses import LossConfig, geosane_loss
from geosane.model import WeightAutoencoder, config_named
from geosane.tokenize import TokenizerConfig
from geosane.train import TrainConfig, run_training
from geosane.views import ViewConfig, cut_windows, make_views, window_starts

MODELS = [f"timm:{arch}?num_classes=10&seed={seed}" for arch in ("test_resnet", "test_efficientnet", "test_vit",
                                                                   "test_convnext") for seed in (0, 1)]


def build_collection(url: str) -> None:
    if not Collection(url).exists():
        Collection(url).add((sources.load(u) for u in MODELS), TokenizerConfig(), progress=False)


def pyarrow_windows(collection: Collection, ids: list[str], views: ViewConfig) -> tuple[int, float]:
    """Tokens per second of reading the shards with pyarrow and cutting the same windows in one process."""
    start, tokens = time.perf_counter(), 0
    rng = np.random.default_rng(0)
    for record in (collection.record(i) for i in ids):
        fs, path = storage.filesystem(storage.join(collection.url, record.shard))
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle)
        values = table.column("tokens").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
        positions = np.stack([table.column(c).to_numpy() for c in ("index", "layer", "within")], axis=1)
        windows = cut_windows(values, positions, table.column("valid").to_numpy(),
                              window_starts(table.num_rows, views, rng), views.window)
        tokens += int((make_views(windows, views, rng)["valid"] > 0).sum())
    return tokens, time.perf_counter() - start


def ray_data_windows(url: str, ids: list[str], views: ViewConfig) -> tuple[int, float]:
    start, tokens = time.perf_counter(), 0
    for batch in window_dataset(url, ids, views, train=True).iter_batches(batch_size=64, batch_format="numpy"):
        tokens += int((batch["valid"] > 0).sum())
    return tokens, time.perf_counter() - start


def plain_pytorch(url: str, ids: list[str], model_name: str, window: int, batch: int, steps: int) -> float:
    """The same model, loss and windows in one process with torch.optim.AdamW: tokens/s."""
    torch.manual_seed(0)
    views = ViewConfig(window=window)
    collection = Collection(url)
    token_size = collection.records()[0].token_size
    model = WeightAutoencoder(config_named(model_name, window=window, token_size=token_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    windows = [b for b in window_dataset(url, ids, views, train=True).iter_torch_batches(batch_size=batch, drop_last=True)]
    start, tokens, done = time.perf_counter(), 0, 0
    while done < steps:
        for b in windows:
            mask = torch.arange(token_size) < b["valid"].unsqueeze(-1)
            _, r1, p1 = model(b["view1"], b["positions"])
            _, r2, p2 = model(b["view2"], b["positions"])
            loss = geosane_loss((r1, r2), (p1, p2), b["tokens"], mask, LossConfig())["loss"]
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            tokens += int(b["valid"].gt(0).sum())
            done += 1
            if done >= steps:
                break
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", default=None, help="collection URL (default: 8 timm test models, built once)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="windows per worker; the plain loop uses 2x")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.json"))
    args = parser.parse_args()

    import ray

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "geosane" / "torch_extensions"))
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # 2 workers + room for Ray Data
    url = args.collection or str(Path(tempfile.gettempdir()) / "geosane-bench-collection")
    build_collection(url)
    collection = Collection(url)
    ids = [r.id for r in collection.records()]
    split = split_models(ids, 0.25, 0)
    views = ViewConfig(window=args.window)

    results: dict = {}
    tokens, seconds = pyarrow_windows(collection, split.train, views)
    results["pyarrow_tokens_per_s"] = round(tokens / seconds)
    tokens, seconds = ray_data_windows(url, split.train, views)
    results["ray_data_tokens_per_s"] = round(tokens / seconds)
    results["ray_data_over_pyarrow"] = round(results["ray_data_tokens_per_s"] / results["pyarrow_tokens_per_s"], 3)

    torch.set_num_threads(2)
    results["plain_pytorch_tokens_per_s"] = round(plain_pytorch(url, split.train, args.model, args.window, 2 * args.batch, args.steps))
    with tempfile.TemporaryDirectory() as runs:
        config = TrainConfig(collection=url, storage=runs, name="bench", model=args.model, window=args.window,
                             workers=2, zero_stage=2, steps=args.steps, batch_size=args.batch, checkpoint_every=args.steps,
                             eval_every=args.steps, val_fraction=0.25, max_failures=0)
        result = run_training(config, progress=False)
    results["ray_deepspeed_tokens_per_s"] = round(result.metrics["tokens_per_s"])
    results["overhead_plain_over_ray"] = round(results["plain_pytorch_tokens_per_s"] / results["ray_deepspeed_tokens_per_s"], 3)
    ray.shutdown()

    for key, value in results.items():
        print(f"{key}: {value}")
    out = {
        "benchmark": "train",
        "config": vars(args) | {"workers": 2, "zero_stage": 2, "global_batch": 2 * args.batch},
        "results": results,
        "notes": "tokens/s counts real tokens of training windows; the Ray figure comes from the loop's own "
                 "tokens_per_s metric (both workers' tokens, time since the loop started, data wait included).",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "versions": software_versions() | {"ray": ray.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
