"""Galileo nano's frozen features under a linear probe, before and after our implementation was made to match the
official one (issue 31): the landed implementation of commit 7006efd (read from git) against today's, each with the
released weights and with its random initialization, on EuroSAT RGB classes 5-9 (500 train images, the whole test
split) and EuroSAT multispectral (the whole train and test splits).

    .venv/bin/python benchmarks/galileo_probe.py          # about 10 minutes on 2 cores

Writes ``benchmarks/results/galileo-probe.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

from geosane.bench.foundation import GALILEO_ENCODER, galileo_classifier
from geosane.collection.pretrained import weights_dir
from geosane.tasks import load_task
from geosane.tasks.probes import few_shot, linear_probe, pooled_features

sys.path.insert(0, str(Path(__file__).parent))
from measure import save  # noqa: E402

BEFORE = "7006efd"  # the landed implementation the issue measured
TASKS = {"eurosat_rgb?classes=5-9": {"train_limit": 500}, "eurosat_ms": {}}


def landed_classifier(data, pretrained: bool, data_root: str | None) -> torch.nn.Module:
    """The implementation of commit ``BEFORE``, from git: the task's standardization, no resolution, month 0."""
    source = subprocess.run(
        ["git", "show", f"{BEFORE}:geosane/tasks/galileo.py"], capture_output=True, text=True, check=True
    ).stdout
    module = sys.modules.setdefault("galileo_before", types.ModuleType("galileo_before"))
    exec(compile(source, "galileo_before.py", "exec"), module.__dict__)  # the project's own earlier code
    torch.manual_seed(0)
    model = module.GalileoClassifier(data.bands, data.num_classes)
    if pretrained:
        weights = torch.load(weights_dir(data_root) / GALILEO_ENCODER, map_location="cpu", weights_only=True)
        model.encoder.load_state_dict(weights, strict=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default="benchmarks/results/galileo-probe.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for spec, limits in TASKS.items():
        data = load_task(spec, args.data_root, **limits)
        train_y, test_y = np.asarray(data.train[1]), np.asarray(data.test[1])
        for implementation in ("before", "after"):
            for pretrained in (True, False):
                if implementation == "before":
                    model = landed_classifier(data, pretrained, args.data_root)
                else:
                    model = galileo_classifier(data, 0, args.data_root, pretrained)
                train, test = pooled_features(model, data.train[0]), pooled_features(model, data.test[0])
                shots = [few_shot(train_y, 10, seed) for seed in range(5)]
                row = {
                    "task": spec,
                    "implementation": implementation,
                    "weights": "released" if pretrained else "random",
                    "train": len(train_y),
                    "test": len(test_y),
                    "linear_probe": linear_probe(train, train_y, test, test_y),
                    "ten_shot_probe_mean_of_5_draws": float(
                        np.mean([linear_probe(train[s], train_y[s], test, test_y, i) for i, s in enumerate(shots)])
                    ),
                }
                rows.append(row)
                print(
                    f"{spec:26s} {implementation:6s} {row['weights']:8s} linear {row['linear_probe']:.3f} "
                    f"10-shot {row['ten_shot_probe_mean_of_5_draws']:.3f} (train {row['train']}, test {row['test']})"
                )
    save({"rows": rows, "before": BEFORE}, args.out)


if __name__ == "__main__":
    main()
