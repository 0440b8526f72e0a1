"""Specialists: a pretrained model's inputs are the task's standardized images re-normalized as the model expects
them, and the cloud-mask specialist is registered for the cloud-mask data."""

from __future__ import annotations

import torch

from geosane.bench import SPECIALISTS
from geosane.bench.specialists import Renormalize, ukis_csmask


def test_renormalizing_undoes_the_tasks_standardization_and_applies_the_models() -> None:
    ours, theirs = ([10.0, 20.0], [2.0, 4.0]), ([0.5, 1.0], [0.25, 0.5])
    raw = torch.tensor([[12.0, 16.0]]).view(1, 2, 1, 1)  # values in the data's own units
    task = (raw - torch.tensor(ours[0]).view(1, 2, 1, 1)) / torch.tensor(ours[1]).view(1, 2, 1, 1)
    expected = (raw - torch.tensor(theirs[0]).view(1, 2, 1, 1)) / torch.tensor(theirs[1]).view(1, 2, 1, 1)
    assert torch.allclose(Renormalize(ours, theirs)(task), expected)
    assert SPECIALISTS["cloudmask"] is ukis_csmask
