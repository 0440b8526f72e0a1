"""What the two Ray Tune stages (the model zoo and the benchmark) share: folder names and one progress line.

Tune's own tables and logs are for debugging (``geosane -v``): a sweep of dozens of trials otherwise prints a
table per status change. The stages show one progress bar over their trials instead.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ray.tune import Callback

__all__ = ["TrialProgress", "run_experiment", "slug", "trial_name", "tune_verbosity"]

log = logging.getLogger(__name__)


def slug(spec: str) -> str:
    """A dataset spec as a folder name: ``cloudmask?holdout=landsat5`` -> ``cloudmask-holdout-landsat5``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", spec).strip("-")


def trial_name(trial: Any) -> str:
    """``eurosat_rgb-test_resnet-s3-00003``: what a trial runs (the ``stem`` its config names) and Tune's trial
    number, readable in Tune's tables and folders; the zoo's members and the bench's trials both carry a stem."""
    spec = next(v for v in trial.config.values() if isinstance(v, dict) and "stem" in v)
    return f"{spec['stem']}-{trial.trial_id.split('_')[-1]}"


def tune_verbosity() -> int:
    """Tune's verbosity: its tables and logs only when GeoSANE logs debug detail (``geosane -v``)."""
    return 2 if logging.getLogger("geosane").isEnabledFor(logging.DEBUG) else 0


class TrialProgress(Callback):
    """One tqdm bar over a sweep's trials (finished ones counted, running and failed ones in its postfix).

    Tune pickles its callbacks with the experiment, so the bar is made when the experiment (re)starts, and counts
    from the trials' states: a resumed sweep starts the bar at the trials that had finished."""

    def __init__(self, description: str, enabled: bool = True) -> None:
        self.description = description
        self.enabled = enabled
        self.bar: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"description": self.description, "enabled": self.enabled, "bar": None}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Tune's hook after every step of its loop: the bar follows the trials' states.

        Args:
            iteration: Tune's loop iteration.
            trials: every trial.
            **info: what else Tune passes.
        """
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=len(trials), desc=self.description, unit="trial", disable=not self.enabled)
        self.bar.total = len(trials)
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        failed = sum(t.status == "ERROR" for t in trials)
        if (done, running, failed) != getattr(self, "_shown", None):
            self._shown = (done, running, failed)
            self.bar.n = done
            self.bar.set_postfix(running=running, **({"failed": failed} if failed else {}))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """The bar shows the final counts and closes.

        Args:
            trials: every trial.
            **info: what else Tune passes.
        """
        self.on_step_end(0, trials)
        self.bar.close()


def run_experiment(
    trainable: Any,
    storage: str,
    name: str,
    param_space: dict[str, Any],
    description: str,
    progress: bool = True,
    keep_checkpoints: int | None = None,
    **tune_config: Any,
) -> Any:
    """Run the Tune experiment ``storage/name``, or resume it where it exists (finished trials stay finished, trials
    that errored run again); one failure per trial is retried. Returns Tune's ResultGrid.

    Args:
        trainable: the Tune trainable.
        storage: experiment storage.
        name: the experiment.
        param_space: Tune's parameter space.
        description: the progress bar's label.
        progress: show the bar.
        keep_checkpoints: checkpoints kept per trial (None: all).
        **tune_config: :class:`ray.tune.TuneConfig` settings.

    Returns:
        Tune's ResultGrid.
    """
    from ray import tune

    experiment = f"{storage.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(experiment):
        log.info("resuming the experiment at %s", experiment)
        return tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True).fit()
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(**tune_config),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=tune_verbosity(),
            callbacks=[TrialProgress(description, enabled=progress)],
        ),
    )
    return tuner.fit()
