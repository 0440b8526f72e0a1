"""What an initialization is worth before any fine-tuning: frozen pooled features scored by a linear probe (a
logistic regression, scikit-learn's, on standardized features), trained on the whole train split or on a few labelled
images a class, and scored on the test split. A classifier's new head and 30 steps of training hide this worth;
a probe does not."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["few_shot", "linear_probe", "pooled_features", "probe_head", "probe_scores"]


@torch.no_grad()
def pooled_features(model: nn.Module, x: torch.Tensor, batch: int = 100) -> np.ndarray:
    """A classifier's pooled features before its head: its own ``features`` method where it has one (Galileo), else
    timm's ``forward_head(..., pre_logits=True)`` (a ``features`` submodule, as VGG's, is not pooled).

    Args:
        model: the classifier (put in eval mode here).
        x: images ``[N, C, H, W]``.
        batch: images per forward pass.

    Returns:
        ``[N, features]``.
    """
    classifier: Any = model.eval()
    own = inspect.isfunction(getattr(type(classifier), "features", None))
    parts = []
    for chunk in x.split(batch):
        if own:
            parts.append(classifier.features(chunk))
        else:
            parts.append(classifier.forward_head(classifier.forward_features(chunk), pre_logits=True))
    return torch.cat(parts).flatten(1).float().numpy()


def linear_probe(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray, seed: int = 0) -> float:
    """Test accuracy of a logistic regression on standardized features (L2, C=1, lbfgs).

    Args:
        train: train features.
        train_y: their labels.
        test: test features.
        test_y: their labels.
        seed: seeds the solver.

    Returns:
        The accuracy on the test features.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train, train_y)
    return float((probe.predict(test) == test_y).mean())


def probe_head(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0) -> nn.Linear:
    """A linear head fitted as :func:`linear_probe` fits one (logistic regression on standardized features), with the
    standardization folded into its weights: it takes a classifier's pooled features as they come.

    Args:
        features: ``[N, F]`` pooled features.
        labels: their classes.
        num_classes: the head's outputs (a class absent from ``labels`` is never predicted).
        seed: seeds the solver.

    Returns:
        The head, ``F -> num_classes``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features)
    fitted = LogisticRegression(max_iter=2000, random_state=seed).fit(scaler.transform(features), labels)
    coef, intercept = fitted.coef_, fitted.intercept_
    if len(fitted.classes_) == 2:  # one row for two classes: the second's logit minus the first's
        coef, intercept = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_classes, features.shape[1]))
    bias = np.full(num_classes, -1e4)  # a class the labels lack is never predicted
    weight[fitted.classes_] = coef / scaler.scale_
    bias[fitted.classes_] = intercept - (coef * scaler.mean_ / scaler.scale_).sum(1)
    head = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    return head


def few_shot(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Indices of ``shots`` examples of every class (all of a class that has fewer), drawn with ``seed``.

    Args:
        labels: the labels.
        shots: examples per class.
        seed: seeds the draw.

    Returns:
        Sorted indices.
    """
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def probe_scores(model: nn.Module, data: Any, seed: int, shots: int = 10) -> dict[str, float]:
    """A classifier's frozen features probed on a task: on the whole train split, and on ``shots`` images a class.

    Args:
        model: the classifier.
        data: the task's :class:`~geosane.tasks.TaskData` (classification).
        seed: seeds the few-shot draw and the solvers.
        shots: labelled images a class for the few-shot probe.

    Returns:
        ``linear_probe`` and ``few_shot_probe`` test accuracies.
    """
    train, test = pooled_features(model, data.train[0]), pooled_features(model, data.test[0])
    train_y, test_y = np.asarray(data.train[1]), np.asarray(data.test[1])
    chosen = few_shot(train_y, shots, seed)
    return {
        "linear_probe": linear_probe(train, train_y, test, test_y, seed),
        "few_shot_probe": linear_probe(train[chosen], train_y[chosen], test, test_y, seed),
    }
