"""Training checkpoints on storage: what every rank saved, checked before anything reads it, and read back as weights.

Every ``checkpoint_every`` steps each Ray Train worker saves its DeepSpeed ZeRO shards under the tag ``state`` and
writes ``rank<r>.json`` beside them: the step, the settings a resume must share (``resume_key``), the autoencoder's
settings and the SHA-256 of every file it saved. Ray Train merges the ranks' folders into one checkpoint,
``<run>/checkpoint_*``. A corrupt or mismatched checkpoint is refused with a message before DeepSpeed reads it.

:func:`gather_weights` rebuilds the full fp32 weights of a step from its shards with DeepSpeed's own reader
(``zero_to_fp32``), with unpickling restricted to tensors and three plain DeepSpeed data types: a checkpoint file
cannot run code here, whoever wrote it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from geosane import storage
from geosane.errors import GeoSANEError

__all__ = [
    "TAG",
    "gather_weights",
    "record",
    "sha256_file",
    "steps",
    "verify",
]

log = logging.getLogger(__name__)
TAG = "state"  # DeepSpeed's checkpoint tag inside every reported checkpoint
PATTERN = "checkpoint_*"  # Ray Train's checkpoint folders in a run


def record(folder: Path, rank: int, resume_key: dict[str, Any], progress: dict[str, Any]) -> None:
    """Write ``rank<r>.json``: ``progress`` (step, autoencoder settings...), ``resume_key`` and the files' sha256.

    Args:
        folder: the checkpoint folder this rank saved its shards into.
        rank: the rank writing.
        resume_key: the settings a resume must share (:func:`geosane.train.config.resume_key`).
        progress: the step, the starting validation error and the autoencoder settings.
    """
    files = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / f"rank{rank}.json").write_text(json.dumps({**progress, "resume_key": resume_key, "files": files}))


def verify(folder: Path, world_size: int, resume_key: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every rank's record against its files (and against ``resume_key`` when resuming); rank 0's record.

    Args:
        folder: a checkpoint folder as Ray Train hands it back.
        world_size: ranks the resuming run has; the checkpoint must hold as many.
        resume_key: the resuming run's settings, which must equal the saved ones.

    Returns:
        Rank 0's record.

    Raises:
        GeoSANEError: a file whose hash differs, a missing rank, or other settings.
    """
    steps = set()
    for rank in range(world_size):
        record_file = folder / f"rank{rank}.json"
        if not record_file.exists():
            raise GeoSANEError(f"checkpoint {folder}: no record of rank {rank} (saved by another number of workers?)")
        saved = json.loads(record_file.read_text())
        if resume_key is not None and saved["resume_key"] != resume_key:
            raise GeoSANEError(
                f"checkpoint {folder} was saved with different settings {saved['resume_key']}, "
                f"this run has {resume_key}; use another --name to start afresh"
            )
        for name, digest in saved["files"].items():
            path = folder / name
            if not path.exists():
                raise GeoSANEError(f"checkpoint {folder}: {name} is missing")
            if sha256_file(path) != digest:
                raise GeoSANEError(f"checkpoint {folder}: {name} is corrupt (sha256 differs from when it was saved)")
        steps.add(saved["step"])
    if len(steps) != 1:
        raise GeoSANEError(f"checkpoint {folder}: ranks saved different steps {sorted(steps)}")
    return json.loads((folder / "rank0.json").read_text())


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def steps(run: str) -> dict[int, str]:
    """The run's checkpoints by step: ``{step: checkpoint URL}`` (Ray Train keeps the latest few)."""
    with storage.errors_named(run, "list checkpoints of"):
        fs, path = storage.filesystem(run)
        records = fs.glob(f"{path.rstrip('/')}/{PATTERN}/rank0.json")
    found = {}
    for rank0 in records:
        folder = rank0.rsplit("/", 1)[0]
        found[int(json.loads(fs.cat_file(rank0))["step"])] = fs.unstrip_protocol(folder) if "://" in run else folder
    return found


def gather_weights(run: str, step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full fp32 weights of the run's checkpoint at ``step``, and rank 0's record of it.

    Args:
        run: the training run (its folder or URL).
        step: a step the run kept a checkpoint of.

    Returns:
        The weights by parameter name, and rank 0's record (step, autoencoder settings, resume key).
    """
    found = steps(run)
    if step not in found:
        kept = ", ".join(map(str, sorted(found))) or "none"
        raise GeoSANEError(f"{run}: no checkpoint of step {step} (checkpoints kept: {kept})")
    with tempfile.TemporaryDirectory(prefix="geosane-checkpoint-") as scratch:
        folder = local_copy(found[step], Path(scratch))
        workers = json.loads((folder / "rank0.json").read_text())["resume_key"]["workers"]
        saved = verify(folder, workers)
        return zero_weights(folder, saved["resume_key"]["zero_stage"]), saved


def local_copy(url: str, scratch: Path) -> Path:
    """A checkpoint on the local disk: the folder itself, or a copy of one on object storage."""
    fs, path = storage.filesystem(url)
    if "://" not in url or url.startswith("file://"):
        return Path(path)
    with storage.errors_named(url, "download"):
        fs.get(path.rstrip("/") + "/", str(scratch) + "/", recursive=True)
    return scratch


def zero_weights(folder: Path, stage: int) -> dict[str, torch.Tensor]:
    """DeepSpeed's shards gathered into full fp32 weights. Stages 1-3 keep fp32 master partitions, which
    ``zero_to_fp32`` joins; stage 0 keeps the whole module (bf16 when trained in bf16, as ``final/`` then is)."""
    with weights_only_loading():
        if stage == 0:
            module = torch.load(folder / TAG / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)[
                "module"
            ]
            return {name: tensor.float() for name, tensor in module.items()}
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        printed = io.StringIO()  # zero_to_fp32 reports with print(); keep it for the debug log
        with contextlib.redirect_stdout(printed):
            state = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=TAG)
        log.debug("zero_to_fp32: %s", printed.getvalue())
        return {name: tensor.float().contiguous() for name, tensor in state.items()}


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every ``torch.load`` in the block unpickles tensors only (even where its caller asks otherwise), plus the
    plain data types DeepSpeed stores beside them: a stage enum, a tensor-fragment address and the loss scaler."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals([ZeroStageEnum, fragment_address, LossScaler]):
            yield
    except Exception as exc:
        if "Weights only load failed" in str(exc):
            raise GeoSANEError(
                f"refused to read a checkpoint file that needs more than tensors to load "
                f"({str(exc).splitlines()[0][:200]})"
            ) from exc
        raise
    finally:
        if saved is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved
