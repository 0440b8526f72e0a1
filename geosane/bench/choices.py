"""A sweep's trials as one table, and the choices the protocol makes from it: each initialization's learning rate
(best on the selection split of the tuning seeds), and where a choice sits at an edge of its grid, the rate one step
past it. The runner reads them between its phases; the results read them for their tables."""

from __future__ import annotations

from typing import Any

from geosane.bench.config import BenchConfig
from geosane.errors import GeoSANEError

__all__ = ["PROBES", "best_rates", "chosen_learning_rates", "chosen_rates", "edge_steps", "results_frame"]

#: Frozen-feature probes every classification trial reports before fine-tuning (``geosane.tasks.probes``).
PROBES = ("linear_probe", "few_shot_probe")


def results_frame(results: Any, config: BenchConfig) -> Any:
    """Every trial and epoch as one table (pandas): task, initialization, learning rate, seed, epoch, scores,
    parameters, source, and whether the learning rate is the one chosen for the initialization (``chosen``).

    Args:
        results: Tune's ResultGrid.
        config: the sweep.

    Returns:
        A pandas DataFrame; ``attrs["failed"]`` lists the trials that failed.

    Raises:
        GeoSANEError: no trial reported anything.
    """
    import pandas as pd

    frames, failed = [], []
    grids = results if isinstance(results, list) else [results]
    for result in (result for grid in grids for result in grid):
        if not result.config:  # a trial an interrupted sweep never started
            continue
        trial = result.config["trial"]
        task = config.tasks[trial["task"]]
        frame = result.metrics_dataframe
        if result.error or frame is None or frame.empty:
            reason = str(result.error).strip().splitlines()[-1] if result.error else "reported nothing"
            failed.append(
                f"{trial['label']}/{trial['init']}/lr{trial.get('lr', task.lrs[0]):g}/s{trial['seed']}: {reason}"
            )
            if frame is None or frame.empty:
                continue
        columns = ["epoch", "metric", "test_score", "selection_score", "train_loss", "epoch_seconds", "parameters"]
        optional = ("init_selection", "distance", "chosen_from", *PROBES)
        frame = frame[[*columns, *(c for c in optional if c in frame), "source"]].copy()
        frame.insert(0, "phase", trial.get("phase", "grid"))
        frame.insert(0, "seed", trial["seed"])
        frame.insert(0, "lr", float(trial.get("lr", task.lrs[0])))
        frame.insert(0, "initialization", trial["init"])
        frame.insert(0, "arch", task.arch)
        frame.insert(0, "data", task.data)
        frame.insert(0, "task", task.name)
        frames.append(frame)
    if not frames:
        raise GeoSANEError("no trial reported anything; first error: " + (failed[0] if failed else "none"))
    table = pd.concat(frames, ignore_index=True)
    table = table.sort_values(["task", "initialization", "lr", "seed", "epoch"]).reset_index(drop=True)
    table["chosen"] = chosen_learning_rates(table)
    table.attrs["failed"] = failed
    return table


def best_rates(table: Any) -> dict[tuple[str, str], float]:
    """Per task and initialization, the learning rate whose *selection-split* score after the last epoch is best on
    average over the tuning seeds (the rows of the ``grid`` and ``edge`` phases; ties: the smaller rate)."""
    tuning = table[table["phase"] != "rest"] if "phase" in table else table
    best = {}
    for (task, init), group in tuning.groupby(["task", "initialization"], sort=False):
        last = group[group["epoch"] == group["epoch"].max()]
        means = last.groupby("lr")["selection_score"].mean()
        best[(task, init)] = min(means.index, key=lambda lr: (-means[lr], lr))
    return best


def chosen_learning_rates(table: Any) -> Any:
    """Which rows carry each initialization's chosen learning rate (:func:`best_rates`).

    Args:
        table: :func:`results_frame`'s rows.

    Returns:
        A boolean Series aligned with ``table``.
    """
    best = best_rates(table)
    return table.apply(lambda row: row["lr"] == best[(row["task"], row["initialization"])], axis=1)


def chosen_rates(table: Any, config: BenchConfig) -> dict[tuple[int, str], float]:
    """Each initialization's chosen learning rate, keyed as :meth:`BenchConfig.trials` takes them.

    Args:
        table: :func:`results_frame`'s rows so far.
        config: the sweep.

    Returns:
        (task index, initialization) -> learning rate.
    """
    index = {task.name: i for i, task in enumerate(config.tasks)}
    return {(index[task], init): lr for (task, init), lr in best_rates(table).items()}


def edge_steps(table: Any, config: BenchConfig) -> dict[tuple[int, str], list[float]]:
    """Where an initialization's chosen rate is the smallest or the largest of its task's grid (of two or more
    rates), the rate one grid step past that edge (the grid's own ratio), to be tried on the same seeds; once per
    initialization (an extension already run is not extended again).

    Args:
        table: :func:`results_frame`'s rows so far.
        config: the sweep.

    Returns:
        (task index, initialization) -> [the rate past the edge].
    """
    edges = table[table["phase"] == "edge"] if "phase" in table else table.iloc[:0]
    extended = set(edges[["task", "initialization"]].itertuples(index=False, name=None))
    steps = {}
    for (index, init), lr in chosen_rates(table, config).items():
        task = config.tasks[index]
        grid = sorted(task.lrs)
        if len(grid) < 2 or (task.name, init) in extended:
            continue
        if lr == grid[0]:
            steps[(index, init)] = [grid[0] * grid[0] / grid[1]]
        elif lr == grid[-1]:
            steps[(index, init)] = [grid[-1] * grid[-1] / grid[-2]]
    return steps
