"""Verification of data files and exports: a flipped byte in any data file is caught, and an export must hash
to its model id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geosane.collection import Collection
from geosane.collection.legacy import write_first_layout
from geosane.errors import GeoSANEError
from geosane.tokenizer import TokenizerConfig

from ..helpers import assert_bit_exact
from .helpers import source_of, timm_state


def test_verify_catches_a_flipped_byte_in_any_data_file(tmp_path: Path) -> None:
    """Flip one byte at a time across the data file that holds a model: every flip is either reported, naming the
    model and the file, or lands where nothing is read (the model still exports bit-exact). Never a wrong model."""
    import shutil

    root = tmp_path / "c"
    collection = Collection(str(root))
    target, other = timm_state("test_resnet", num_classes=3), timm_state("test_vit", num_classes=3)
    collection.add([source_of(target, "target")], TokenizerConfig(token_size=64), progress=False)
    collection.add([source_of(other, "other")], progress=False)
    record = collection.record("target")
    (file,) = [Path(f) for f in collection.files_of(record)]
    assert file.parent == root / "models.lance" / "data"
    pristine = tmp_path / "pristine"
    shutil.copy(file, pristine)
    size = file.stat().st_size
    caught = silent_but_exact = 0
    for offset in np.linspace(0, size - 1, 48).astype(int):
        damaged = bytearray(pristine.read_bytes())
        damaged[offset] ^= 0xFF
        file.write_bytes(bytes(damaged))
        problems = Collection(str(root)).verify(progress=False)
        if problems:
            assert len(problems) == 1 and record.id in problems[0] and file.name in problems[0], problems
            caught += 1
        else:
            assert_bit_exact(target, Collection(str(root)).export(record.id))
            silent_but_exact += 1
    shutil.copy(pristine, file)
    assert Collection(str(root)).verify(progress=False) == []
    print(f"{caught} of 48 flips caught, {silent_but_exact} landed where nothing is read")
    assert caught >= 40, f"only {caught} of 48 flips were caught ({silent_but_exact} landed where nothing is read)"


def test_exports_are_checked_against_the_model_id(tmp_path: Path) -> None:
    """A collection in the first layout has no stored hashes: the id (a hash of the weights) still catches a
    flipped byte in a shard or a kept file."""
    sd = timm_state("test_resnet", num_classes=3)
    (record,) = write_first_layout(str(tmp_path / "old"), {"m": sd}, token_size=64)
    for part in (f"shards/{record.id}.parquet", f"kept/{record.id}.safetensors"):
        path = tmp_path / "old" / part
        pristine = path.read_bytes()
        flipped = bytearray(pristine)
        flipped[len(pristine) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(GeoSANEError, match=rf"model {record.id}"):
            Collection(str(tmp_path / "old")).export(record.id)
        path.write_bytes(pristine)
    assert_bit_exact(sd, Collection(str(tmp_path / "old")).export(record.id))


# ------------------------------------------------------------------------------ the first layout
