"""A finished sweep's results: a summary over seeds (from :func:`~geosane.bench.choices.results_frame`'s table of
every trial and epoch), Markdown for people, convergence curves, TensorBoard logs, the config and the software
versions."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from geosane.bench.choices import PROBES, results_frame
from geosane.bench.config import BenchConfig
from geosane.bench.runner import TABLE_EPOCHS, BenchRun
from geosane.bench.statistics import detectable, interval

__all__ = ["TABLE_EPOCHS", "markdown", "plot_curves", "summary_table", "verdict", "write_results"]

PROBE_NAMES = {"linear_probe": "linear probe", "few_shot_probe": "10-shot probe"}


def summary_table(table: Any) -> Any:
    """Per task and initialization, at its chosen learning rate: mean, std (``ddof=1``) and 95% interval over seeds
    of the test score at epochs 0, 1, 5 and the last; and, against ``generated``, the paired difference per seed
    (initialization minus generated, same seed) with its interval.

    Args:
        table: :func:`results_frame`'s rows.

    Returns:
        One row per task and initialization.
    """
    import pandas as pd

    chosen = table[table["chosen"]] if "chosen" in table else table
    rows = []
    for (task, init), group in chosen.groupby(["task", "initialization"], sort=False):
        last = int(group["epoch"].max())
        reference = chosen[(chosen["task"] == task) & (chosen["initialization"] == "generated")]
        row: dict[str, Any] = {
            "task": task,
            "initialization": init,
            "metric": group["metric"].iloc[0],
            "parameters": int(group["parameters"].iloc[0]),
            "lr": float(group["lr"].iloc[0]),
            "seeds": group["seed"].nunique(),
            "last_epoch": last,
            "distance": float(group["distance"].mean()) if "distance" in group else math.nan,
            "chosen_from": int(group["chosen_from"].max()) if "chosen_from" in group else 1,
        }
        measures = [*((f"epoch_{e}", e, "test_score") for e in TABLE_EPOCHS), ("final", last, "test_score")]
        measures += [(probe, 0, probe) for probe in PROBES if probe in group]
        for key, epoch, column in measures:
            at = group[group["epoch"] == epoch].set_index("seed")[column]
            row[f"{key}_mean"], row[f"{key}_std"], row[f"{key}_ci"] = interval(at)
            theirs = reference[reference["epoch"] == epoch].set_index("seed")[column]
            paired = (at - theirs).dropna() if init != "generated" and len(theirs) else []
            row[f"{key}_diff"], spread, row[f"{key}_diff_ci"] = interval(paired)
            row[f"{key}_detectable"] = detectable(spread, len(paired))
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(summary: Any) -> str:
    """What the sweep shows, in one line: per baseline, on how many tasks ``generated`` ends better, worse or level
    (by the paired interval of the last epoch; with one seed there is no interval, so only signs are counted).

    Args:
        summary: :func:`summary_table`.

    Returns:
        One line.
    """
    if "generated" not in set(summary["initialization"]):
        return "no generated models in this sweep"
    counts: dict[str, dict[str, int]] = {}
    single_seed = False
    for _, row in summary[summary["initialization"] != "generated"].iterrows():
        diff, ci = row["final_diff"], row["final_diff_ci"]
        if math.isnan(diff):
            continue
        single_seed |= math.isnan(ci)
        margin = 0.0 if math.isnan(ci) else ci
        outcome = "better" if diff + margin < 0 else "worse" if diff - margin > 0 else "level"
        tally = counts.setdefault(row["initialization"], {"better": 0, "worse": 0, "level": 0})
        tally[outcome] += 1
    parts = [
        f"vs {init}: better on {c['better']}, worse on {c['worse']}, level on {c['level']} of {sum(c.values())}"
        for init, c in counts.items()
    ]
    caveat = " (one seed: signs of differences, not claims)" if single_seed else " (95% paired intervals over seeds)"
    return "generated, at the last epoch, " + "; ".join(parts) + caveat


def cell(row: Any, key: str) -> str:
    """A score in results.md: mean ± std [95% interval], or the mean alone for one seed."""
    mean, std, ci = row[f"{key}_mean"], row[f"{key}_std"], row[f"{key}_ci"]
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f} [{mean - ci:.3f}, {mean + ci:.3f}]"


def difference(row: Any, key: str) -> str:
    """A paired difference against ``generated`` in results.md, with its interval, verdict and what it could detect."""
    mean, ci = row.get(f"{key}_diff", math.nan), row.get(f"{key}_diff_ci", math.nan)
    if math.isnan(mean):
        return "-"
    if math.isnan(ci):
        return f"{mean:+.3f}"
    verdict = "generated better" if mean + ci < 0 else "generated worse" if mean - ci > 0 else "no difference"
    return f"{mean:+.3f} [{mean - ci:+.3f}, {mean + ci:+.3f}] {verdict}; detects {row[f'{key}_detectable']:.3f}"


def markdown(summary: Any, config: BenchConfig, info: dict[str, Any]) -> str:
    """The summary for people: per task, a table of scores and one of paired differences against ``generated``,
    with where the numbers come from.

    Args:
        summary: :func:`summary_table`.
        config: the sweep.
        info: collection, held-out checks, software, sources and failures (:func:`write_results`).

    Returns:
        ``results.md``.
    """
    probes = [p for p in PROBES if f"{p}_mean" in summary and not summary[f"{p}_mean"].isna().all()]
    compared = ["epoch_0", "epoch_1", "epoch_5", "final", *probes]
    intervals = sum(
        int(not math.isnan(row.get(f"{key}_diff_ci", math.nan))) for _, row in summary.iterrows() for key in compared
    )
    lines = [
        f"# Benchmark {info['name']}",
        "",
        f"Test-split scores over seeds ({config.seeds} unless a task says): mean ± std (ddof=1) [95% t-interval of "
        "the mean]; epoch 0 is "
        "before any fine-tuning. Every initialization of a task gets the same budget (epochs, AdamW, one-cycle "
        "schedule, batch size, flips) and its own learning rate, the best of the task's grid on the *selection* "
        "split; every initialization from existing weights gets the same head rule, BatchNorm re-estimation and "
        "best-of-N choice on the selection split. Paired differences are per seed, initialization minus "
        "`generated`: an interval that excludes zero is the only claim made. Beside each, the smallest difference "
        "the run could detect (80% power, two-sided 5%, from the observed paired spread); in the score tables, "
        "`final: detects` is the same for two unpaired rows of that row's spread. N is the number of "
        "candidates an initialization was chosen among on the selection split (1: no choice). The probes score "
        "frozen features before any fine-tuning: a logistic regression on the train split (`linear probe`) and on "
        "10 images a class (`10-shot probe`), on the test split.",
        "",
        f"Multiplicity: this file holds {intervals} paired 95% intervals; at that many, about "
        f"{0.05 * intervals:.1f} would exclude zero by chance alone if no initialization differed from `generated`."
        if intervals
        else "Multiplicity: no paired intervals here (one seed, or no `generated`).",
        "",
        f"**{verdict(summary)}.**",
        "",
        f"- autoencoder: {config.autoencoder}",
        f"- collection: {info['collection']['collection']} at version {info['collection']['version']}",
        f"- software: {', '.join(f'{k} {v}' for k, v in info['software'].items())}",
    ]
    for task in config.tasks:
        rows = summary[summary["task"] == task.name]
        if not rows.empty:
            lines += task_section(task, rows, config, info, probes)
    if info.get("failed"):
        lines += ["", "## Failed trials", "", *(f"- {f}" for f in info["failed"])]
    return "\n".join(lines) + "\n"


def task_section(task: Any, rows: Any, config: BenchConfig, info: dict[str, Any], probes: list[str]) -> list[str]:
    """One task's part of results.md: its budget and learning-rate protocol, its scores, its paired differences.

    Args:
        task: the task.
        rows: its rows of :func:`summary_table`.
        config: the sweep.
        info: what :func:`write_results` gathered.
        probes: the probes the sweep reported.

    Returns:
        Lines.
    """
    compared = ["epoch_0", "epoch_1", "epoch_5", "final", *probes]
    held = info["held_out"].get(task.name)
    status = (
        f"held out (checked against {held['checked_models']} collection models; "
        f"{len(held['training_data_unrecorded'])} do not record their training data)"
        if held
        else "not held out"
    )
    probe_columns = "".join(f" {PROBE_NAMES[p]} |" for p in probes)
    lines = [
        "",
        f"## {task.name}: {rows['metric'].iloc[0]}, {task.arch}, {budget(task)}, seeds "
        f"{task.seeds or config.seeds}, {status}",
        "",
        f"Learning rates: {protocol(task, config, info.get('extended', {}).get(task.name, {}))}",
        "",
        "| initialization | N | parameters | lr | epoch 0 | epoch 1 | epoch 5 | final |"
        + probe_columns
        + " final: detects |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(probes) + "---|",
    ]
    for _, row in rows.iterrows():
        cells = " | ".join(cell(row, key) for key in compared)
        n = int(row.get("chosen_from", 1))
        # two rows with this row's spread, unpaired: the smallest final difference between them the seeds could detect
        detects = detectable(math.sqrt(2) * float(row["final_std"]), int(row["seeds"]))
        lines.append(
            f"| {row['initialization']} | {n} | {row['parameters']:,} | {row['lr']:g} | {cells} | {detects:.3f} |"
        )
    if "generated" in set(rows["initialization"]):
        lines += ["", "| minus generated | epoch 0 | epoch 1 | epoch 5 | final |" + probe_columns]
        lines.append("|---|---|---|---|---|" + "---|" * len(probes))
        for _, row in rows[rows["initialization"] != "generated"].iterrows():
            lines.append(f"| {row['initialization']} | " + " | ".join(difference(row, k) for k in compared) + " |")
    sources = info["sources"].get(task.name, {})
    return [*lines, "", *(f"- {init}: {source}" for init, source in sources.items())]


def budget(task: Any) -> str:
    """A task's budget in words: epochs, and the optimizer steps they were set from."""
    steps = f" (from a budget of {task.steps} optimizer steps)" if task.steps else ""
    return f"{task.epochs} epochs{steps}"


def protocol(task: Any, config: BenchConfig, extended: dict[str, float]) -> str:
    """How a task's learning rates were chosen: the grid, which seeds chose, and the grid's extensions."""
    if len(task.lrs) == 1:
        return f"one rate, {task.lrs[0]:g}, for every initialization."
    seeds = task.seeds or config.seeds
    tuning = len(seeds) if config.tuning_seeds is None else min(config.tuning_seeds, len(seeds))
    text = f"grid {', '.join(f'{lr:g}' for lr in task.lrs)}, chosen per initialization on the selection split of "
    text += (
        "every seed" if tuning == len(seeds) else f"the first {tuning} seeds (the others ran at the chosen rate only)"
    )
    if extended:
        text += "; extended one step past the grid's edge for " + ", ".join(
            f"{init} ({lr:g})" for init, lr in sorted(extended.items())
        )
    return text + "."


def plot_curves(table: Any, task: str, path: str) -> None:
    """Selection score per epoch (the split scored after every epoch; the test split is scored only at the tables'
    epochs) at each initialization's chosen learning rate, mean over seeds with a band of one std (``ddof=1``), one
    line per initialization.

    Args:
        table: :func:`results_frame`.
        task: the task to draw.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[(table["task"] == task) & table["chosen"]]
    figure, axis = plt.subplots(figsize=(6, 4))
    for init, group in rows.groupby("initialization"):
        stats = group.groupby("epoch")["selection_score"].agg(["mean", "std"]).fillna(0)
        axis.plot(stats.index, stats["mean"], marker="o", markersize=3, label=init)
        axis.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2)
    axis.set_xlabel("fine-tuning epoch")
    axis.set_ylabel(f"selection {rows['metric'].iloc[0]}")
    axis.set_title(task)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(run: BenchRun, config: BenchConfig, out: str, name: str) -> dict[str, Any]:
    """Parquet, Markdown, JSON, PNG curves and TensorBoard logs of a finished sweep into the folder ``out`` (a local
    path, or any fsspec URL: they are written locally first, then uploaded).

    Args:
        run: the finished sweep.
        config: the sweep.
        out: the results folder.
        name: the experiment name.

    Returns:
        What was written where (``written``), the summary and the run's information.
    """
    import shutil

    config = run.config or config  # as it ran: budgets in epochs

    from geosane import storage
    from geosane.tuning import slug
    from geosane.version import software_versions

    remote = "://" in out and not out.startswith("file://")
    folder = Path(tempfile.mkdtemp(prefix="geosane-bench-")) if remote else Path(out.removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    table = results_frame(run.results, config)
    summary = summary_table(table)
    sources = {
        task: {init: group["source"].iloc[0] for init, group in rows[rows["chosen"]].groupby("initialization")}
        for task, rows in table.groupby("task")
    }
    info = {
        "name": name,
        "collection": run.collection,
        "held_out": run.held_out,
        "experiment": run.experiment,
        "software": software_versions(
            "ray", "timm", "torchvision", "torchmetrics", "torch-pruning", "segmentation-models-pytorch", "numpy"
        ),
        "sources": sources,
        "failed": table.attrs.get("failed", []),
        "extended": {
            task: dict(zip(rows["initialization"], rows["lr"], strict=True))
            for task, rows in table[table["phase"] == "edge"]
            .drop_duplicates(["task", "initialization"])
            .groupby("task")
        },
    }
    written = {}
    for filename, write in (
        ("results.parquet", lambda path: table.to_parquet(path, index=False)),
        ("summary.parquet", lambda path: summary.to_parquet(path, index=False)),
        ("results.md", lambda path: Path(path).write_text(markdown(summary, config, info))),
        ("config.json", lambda path: Path(path).write_text(json.dumps(asdict(config), indent=1))),
        ("run.json", lambda path: Path(path).write_text(json.dumps(info, indent=1, default=str))),
    ):
        temporary = folder / f".{filename}.tmp"
        write(str(temporary))
        os.replace(temporary, folder / filename)
        written[filename] = str(folder / filename)
    for task in summary["task"].unique():
        path = folder / f"curves-{slug(task)}.png"
        plot_curves(table, task, str(path))
        written[path.name] = str(path)
    write_tensorboard(table, folder / "tensorboard")
    written["tensorboard"] = str(folder / "tensorboard")  # (written afresh above: one event file per run)
    if remote:
        storage.upload(folder, out)
        shutil.rmtree(folder, ignore_errors=True)
        written = {k: storage.join(out, Path(v).relative_to(folder).as_posix()) for k, v in written.items()}
    info["summary"] = summary
    info["written"] = written
    return info


def write_tensorboard(table: Any, folder: Path) -> None:
    """One TensorBoard run per task, initialization, learning rate and seed, written afresh (a rewrite of the results
    must not add a second event file to a run: its curves would be drawn twice).

    Args:
        table: :func:`~geosane.bench.choices.results_frame`.
        folder: the ``tensorboard`` folder.
    """
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    from geosane.tuning import slug

    shutil.rmtree(folder, ignore_errors=True)
    for (task, init, lr, seed), group in table.groupby(["task", "initialization", "lr", "seed"]):
        with SummaryWriter(str(folder / slug(task) / f"{init}-lr{lr:g}-s{seed}")) as writer:
            for _, row in group.iterrows():
                if not math.isnan(row["test_score"]):
                    writer.add_scalar(f"test/{row['metric']}", row["test_score"], int(row["epoch"]))
                writer.add_scalar(f"selection/{row['metric']}", row["selection_score"], int(row["epoch"]))
                if not math.isnan(row["train_loss"]):
                    writer.add_scalar("train/loss", row["train_loss"], int(row["epoch"]))
