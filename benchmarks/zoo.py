"""Zoo throughput: models trained per minute under Ray Tune, and parallel efficiency against training the
same trials one after another in one process, measured in the same run.

    .venv/bin/python benchmarks/zoo.py [--trials 4] [--epochs 2] [--train-limit 1500]

Saves the figures with the config and versions to benchmarks/results/zoo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import ray
import torch

import geosane
from geosane.zoo import ZooConfig, ZooGroup, fit_member, load_data, run_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=1500)
    parser.add_argument("--test-limit", type=int, default=500)
    parser.add_argument("--arch", default="test_resnet")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "zoo.json"))
    args = parser.parse_args()

    cpus = os.cpu_count() or 1
    config = ZooConfig(
        name="bench-zoo",
        groups=[
            ZooGroup(
                dataset="eurosat_rgb",
                architectures=[args.arch],
                trials=args.trials,
                epochs=args.epochs,
                train_limit=args.train_limit,
                test_limit=args.test_limit,
            )
        ],
        search={"lr": 0.003, "weight_decay": 0.01},
    )
    data = load_data(config, None)

    # one after another, in this process, one thread each (as every Tune trial gets one CPU)
    torch.set_num_threads(1)
    start = time.perf_counter()
    for member in config.trials(config.groups[0]):
        fit_member({"member": member, "lr": 0.003, "weight_decay": 0.01}, data, lambda metrics, folder: None)
    sequential = time.perf_counter() - start

    # the same trials under Ray Tune, in parallel on every CPU
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        added = run_zoo(config, f"{tmp}/collection", f"{tmp}/runs", progress=False)
        parallel = time.perf_counter() - start
    ray.shutdown()

    checkpoints = len(added)
    speedup = sequential / parallel
    result = {
        "benchmark": "zoo",
        "config": {
            "trials": args.trials,
            "epochs": args.epochs,
            "arch": args.arch,
            "train_limit": args.train_limit,
            "test_limit": args.test_limit,
            "cpus": cpus,
        },
        "results": {
            "sequential_seconds": round(sequential, 2),
            "tune_seconds": round(parallel, 2),
            "models_per_minute_tune": round(args.trials / parallel * 60, 2),
            "models_per_minute_sequential": round(args.trials / sequential * 60, 2),
            "checkpoints_added": checkpoints,
            "speedup": round(speedup, 2),
            "parallel_efficiency": round(speedup / cpus, 2),
        },
        "notes": "tune_seconds includes Ray start-up of the trials, checkpoint persistence and adding every "
        "checkpoint to a collection; sequential runs the same training and evaluation only.",
        "machine": {"python": platform.python_version(), "cpus": cpus},
        "versions": geosane.software_versions() | {"ray": ray.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key, value in result["results"].items():
        print(f"{key}: {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
