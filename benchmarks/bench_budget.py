"""How long a bench task's fine-tuning needs to be (issue 31): reads ``sweeps/bench-budget.yaml``'s results (one
task per dataset and budget) and, per dataset, prints the final selection and test scores at each budget and the
smallest budget whose mean final selection score is within ``--tolerance`` (default: one selection image) of the
largest budget's.

    .venv/bin/python benchmarks/bench_budget.py benchmarks/results/bench-budget

Writes ``budget.json`` and ``budget.md`` beside the results, and adds the budgets' paired differences (with the
smallest difference each could detect) to the sweep's ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from geosane import datasets
from geosane.bench.statistics import detectable, interval

sys.path.insert(0, str(Path(__file__).parent))
from measure import save  # noqa: E402

HEADER = "| steps | test (mean) | selection minus longest | test minus longest |"


def embed(results: Path, lines: list[str]) -> None:
    """The budgets' paired differences, with what each could detect, at the end of the sweep's ``results.md`` (in
    place of an earlier copy or pointer), so that its table stands with them."""
    text = results.read_text()
    for marker in ("\n# Budgets: each minus the longest", "\nPaired differences between the budgets"):
        text = text.split(marker)[0]
    section = [f"#{line}" if line.startswith("#") else line for line in lines]  # one level down
    results.write_text(text.rstrip() + "\n\n" + "\n".join(section) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="the sweep's results folder")
    parser.add_argument("--tolerance", type=float, default=None, help="default: one selection image")
    args = parser.parse_args()
    folder = Path(args.results)
    table = pd.read_parquet(folder / "results.parquet")
    tasks = {t.get("label") or t["data"]: t for t in json.loads((folder / "config.json").read_text())["tasks"]}
    final = table[table["epoch"] == table.groupby("task")["epoch"].transform("max")]
    found = []
    lines = [
        "# Budgets: each minus the longest, paired by seed",
        "",
        "Mean paired difference over seeds [95% t-interval], and the smallest difference the run could detect (80% "
        "power, two-sided 5%, from the observed paired spread). With two seeds, the intervals are wide: these runs "
        "place a budget, they do not compare initializations.",
        "",
    ]
    for data, rows in final.groupby("data"):
        budgets = rows.groupby("task").agg(selection=("selection_score", "mean"), test=("test_score", "mean"))
        budgets["steps"] = [tasks[task]["steps"] for task in budgets.index]
        budgets = budgets.sort_values("steps")
        spec = tasks[budgets.index[0]]
        selection = len(datasets.get(data).load_ids("selection", spec.get("selection_limit", 500)))
        tolerance = args.tolerance or 1 / selection
        enough = budgets[budgets["selection"] >= budgets["selection"].iloc[-1] - tolerance]["steps"].iloc[0]
        print(f"{data}: enough at {enough} steps (tolerance {tolerance:.4f}: one of {selection} selection images)")
        for _, b in budgets.iterrows():
            print(f"  {int(b['steps']):5d} steps: selection {b['selection']:.3f}, test {b['test']:.3f}")
        lines += [f"## {data}: enough at {int(enough)} steps", "", HEADER, "|---|---|---|---|"]
        longest = rows[rows["task"] == budgets.index[-1]].set_index("seed")
        for task, b in budgets.iterrows():
            mine = rows[rows["task"] == task].set_index("seed")
            cells = []
            for column in ("selection_score", "test_score"):
                paired = (mine[column] - longest[column]).dropna()
                mean, spread, ci = interval(paired)
                if task == budgets.index[-1]:
                    cells.append("(the reference)")
                elif spread == 0:  # every seed's difference the same: no spread to size an interval or a power by
                    cells.append(f"{mean:+.3f} on every seed; no spread over {len(paired)} seeds to detect by")
                else:
                    found_ci = f"{mean:+.3f} [{mean - ci:+.3f}, {mean + ci:+.3f}]"
                    cells.append(f"{found_ci}; detects {detectable(spread, len(paired)):.3f}")
            lines.append(f"| {int(b['steps'])} | {b['test']:.3f} | {cells[0]} | {cells[1]} |")
        lines.append("")
        found.append(
            {
                "data": data,
                "enough_steps": int(enough),
                "selection_images": selection,
                "budgets": budgets.to_dict("records"),
            }
        )
    (folder / "budget.md").write_text("\n".join(lines))
    embed(folder / "results.md", lines)
    save({"budgets": found}, folder / "budget.json")


if __name__ == "__main__":
    main()
