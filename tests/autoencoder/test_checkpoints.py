"""Checkpoint records: every rank's files with their sha256, checked before anything reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosane.autoencoder import checkpoints
from geosane.errors import GeoSANEError

KEY = {"model": "tiny", "workers": 2, "zero_stage": 2}


def test_records_catch_corruption_and_mismatch(tmp_path: Path) -> None:
    for rank in range(2):
        shard = tmp_path / "state" / f"zero_pp_rank_{rank}_optim_states.pt"
        shard.parent.mkdir(exist_ok=True)
        shard.write_bytes(bytes(range(256)) * (rank + 1))
        checkpoints.record(tmp_path, rank, KEY, {"step": 30, "val_reconstruction_start": 1.5})
    assert checkpoints.verify(tmp_path, 2, KEY)["step"] == 30
    assert checkpoints.verify(tmp_path, 2)["resume_key"] == KEY, "reading weights does not need the resume key"
    with pytest.raises(GeoSANEError, match="saved with different settings"):
        checkpoints.verify(tmp_path, 2, {**KEY, "zero_stage": 3})
    with pytest.raises(GeoSANEError, match="no record of rank 2"):
        checkpoints.verify(tmp_path, 3, KEY)
    shard = tmp_path / "state" / "zero_pp_rank_1_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:-1] + b"!")
    with pytest.raises(GeoSANEError, match="zero_pp_rank_1_optim_states.pt is corrupt"):
        checkpoints.verify(tmp_path, 2, KEY)
    shard.unlink()
    with pytest.raises(GeoSANEError, match="is missing"):
        checkpoints.verify(tmp_path, 2, KEY)


def test_steps_are_found_by_their_records(tmp_path: Path) -> None:
    for folder, step in (("checkpoint_2026-11-28_10-00-00", 10), ("checkpoint_2026-11-28_10-05-00", 20)):
        (tmp_path / folder).mkdir()
        checkpoints.record(tmp_path / folder, 0, KEY, {"step": step})
    (tmp_path / "checkpoint_partial").mkdir()  # a folder without records is not a checkpoint
    assert checkpoints.steps(str(tmp_path)) == {
        10: str(tmp_path / "checkpoint_2026-11-28_10-00-00"),
        20: str(tmp_path / "checkpoint_2026-11-28_10-05-00"),
    }
    with pytest.raises(GeoSANEError, match=r"no checkpoint of step 15 \(checkpoints kept: 10, 20\)"):
        checkpoints.gather_weights(str(tmp_path), 15)


@pytest.mark.parametrize("stage", [0, 2])
def test_a_checkpoint_that_carries_code_is_refused_not_run(tmp_path: Path, stage: int) -> None:
    """DeepSpeed's reader asks torch.load for weights_only=False; gathering forces tensors-only unpickling anyway."""
    import torch

    from ..helpers import Exploit

    marker = tmp_path / "pwned"
    folder = tmp_path / "run" / "checkpoint_0"
    (folder / checkpoints.TAG).mkdir(parents=True)
    (folder / "latest").write_text(checkpoints.TAG)
    name = "mp_rank_00_model_states.pt" if stage == 0 else "zero_pp_rank_0_mp_rank_00_model_states.pt"
    torch.save({"module": {}, "payload": Exploit(str(marker))}, folder / checkpoints.TAG / name)
    checkpoints.record(folder, 0, {**KEY, "workers": 1, "zero_stage": stage}, {"step": 5})
    with pytest.raises(GeoSANEError, match="refused to read a checkpoint file that needs more than tensors"):
        checkpoints.gather_weights(str(tmp_path / "run"), 5)
    assert not marker.exists()
