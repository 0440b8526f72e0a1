"""Same seed, same numbers: run `geosane generate` (three settings) and a short bench (sweeps/bench-demo.yaml) with
one checkout of the code, then compare two such runs tensor by tensor and score by score.

    python benchmarks/same_numbers.py run --code /path/to/old/checkout --out out/same-before
    python benchmarks/same_numbers.py run --code . --out out/same-after
    python benchmarks/same_numbers.py compare out/same-before out/same-after --save benchmarks/results/same-numbers

The code under test is put first on PYTHONPATH and the commands run from a folder without a ``geosane`` package
in it (Ray's workers put the driver's working directory first on their path). Both runs read the shipped
autoencoder (geosane:small) and its shipped anchors, and the data in ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: Three generations: query anchors ranked on a 13-band target (joint sampling), token sampling around the same
#: anchors, and the prompt itself as the anchor with no target data.
GENERATIONS = {
    "query-joint": [
        "--prompt", "timm:test_resnet?in_chans=13&num_classes=10", "--data", "eurosat_ms",
        "--anchors", "dataset=eurosat_rgb", "--candidates", "3", "--top-k", "2", "--seed", "7",
    ],
    "query-token": [
        "--prompt", "timm:test_resnet?num_classes=5", "--data", "eurosat_rgb?classes=5-9",
        "--anchors", "dataset=eurosat_rgb", "--sampling", "token", "--candidates", "2", "--seed", "1",
    ],
    "prompt": ["--prompt", "timm:test_resnet?in_chans=4&num_classes=6", "--candidates", "2", "--seed", "11"],
}  # fmt: skip


def run(code: Path, out: Path) -> None:
    """Every command, with ``code`` first on the path."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(code.resolve()), "GEOSANE_DATA": str(root.parent / "shared/data")}
    geosane = [sys.executable, "-c", "import sys; from geosane.cli import main; sys.exit(main())"]
    out = out.resolve()
    with tempfile.TemporaryDirectory() as elsewhere:
        for name, options in GENERATIONS.items():
            command = [*geosane, "-q", "generate", "--autoencoder", "geosane:small", *options]
            subprocess.run([*command, "--out", str(out / "generate" / name)], env=env, cwd=elsewhere, check=True)
        sweep = [*geosane, "-q", "bench", "--config", str(root / "sweeps/bench-demo.yaml")]
        storage, results = out / "runs", out / "bench"
        subprocess.run([*sweep, "--storage", str(storage), "--out", str(results)], env=env, cwd=elsewhere, check=True)


def compare(before: Path, after: Path, save: Path | None) -> dict:
    """Every generated tensor and every bench score of two runs, side by side."""
    import pandas as pd
    from safetensors.torch import load_file

    report: dict = {"generate": {}, "bench": {}}
    for name in GENERATIONS:
        for weights in sorted((before / "generate" / name).glob("model-*.safetensors")):
            old, new = load_file(weights), load_file(after / "generate" / name / weights.name)
            same = old.keys() == new.keys() and all(old[k].equal(new[k]) for k in old)
            report["generate"][f"{name}/{weights.name}"] = {"tensors": len(old), "bit_identical": same}
    old, new = pd.read_parquet(before / "bench/results.parquet"), pd.read_parquet(after / "bench/results.parquet")
    keys = ["task", "initialization", "seed", "epoch"]
    merged = old.merge(new, on=keys, suffixes=("_before", "_after"))
    for column in ("test_score", "selection_score", "train_loss"):
        if f"{column}_before" in merged:
            a, b = merged[f"{column}_before"], merged[f"{column}_after"]
            report["bench"][column] = {
                "rows": len(merged),
                "bit_identical": bool(((a == b) | (a.isna() & b.isna())).all()),
                "largest_difference": float((a - b).abs().max()),
            }
    report["bench"]["rows_before_after"] = [len(old), len(new)]
    print(json.dumps(report, indent=1))
    if save:
        save.with_suffix(".json").write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run", help="generate and bench with one checkout of the code")
    one.add_argument("--code", type=Path, required=True, help="the checkout whose geosane package runs")
    one.add_argument("--out", type=Path, required=True, help="where the models and the bench's results go")
    two = commands.add_parser("compare", help="compare two runs")
    two.add_argument("before", type=Path)
    two.add_argument("after", type=Path)
    two.add_argument("--save", type=Path, help="also write the comparison to SAVE.json")
    args = parser.parse_args()
    if args.command == "run":
        run(args.code, args.out)
    else:
        compare(args.before, args.after, args.save)


if __name__ == "__main__":
    main()
