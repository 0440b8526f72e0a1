"""A damaged file damages one model: the other models still list and export bit-exact, every message names the
damaged file and its model, no native backtrace reaches the terminal, and a lost newest version is an error rather
than a silent roll-back; a flipped byte in any data file is caught, and an export must hash to its model id."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

import geosane
from geosane.cli import main
from geosane.collection import Collection
from geosane.collection.legacy import write_first_layout
from geosane.errors import GeoSANEError
from geosane.tokenizer import TokenizerConfig

from ..helpers import assert_bit_exact
from .helpers import source_of, timm_state


def cli(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``geosane ARGV`` in this process, with everything written to file descriptors 1 and 2 (Rust's too)."""
    status = main(argv)
    out = capfd.readouterr()
    return status, out.out + out.err


@pytest.fixture
def two_models(tmp_path: Path) -> tuple[str, list[geosane.ModelRecord]]:
    """A collection of two models, committed one at a time (each in its own data file)."""
    url = str(tmp_path / "collection")
    for seed in (0, 1):
        geosane.collect([f"timm:test_resnet?seed={seed}"], url, token_size=32, progress=False)
    collection = geosane.Collection(url)
    return url, [collection.record(r.id) for r in collection.records()]


def damage(path: str, how: str) -> None:
    data = bytearray(Path(path).read_bytes())
    if how == "footer":
        data[-30] ^= 0xFF
    elif how == "middle":
        data[len(data) // 2] ^= 0xFF
    elif how == "truncation":
        data = data[: len(data) // 2]
    if how == "deletion":
        os.remove(path)
    else:
        Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["footer", "middle", "truncation", "deletion"])
def test_a_damaged_data_file_damages_its_own_model_only(how, two_models, tmp_path, capfd) -> None:
    url, (bad, good) = two_models
    collection = geosane.Collection(url)
    (bad_file,) = collection.files_of(bad)
    expected = collection.export(good)
    damage(bad_file, how)

    status, output = cli(["collection", "ls", url], capfd)
    assert status == 0 and good.id in output
    out = tmp_path / "good.safetensors"
    status, output = cli(["collection", "export", url, good.id, "--out", str(out)], capfd)
    assert status == 0, output
    loaded = load_file(out)  # safetensors lists keys sorted; the file records the model's order beside them
    assert sorted(loaded) == sorted(expected)
    assert_bit_exact(expected, {k: loaded[k] for k in expected})
    assert "panicked" not in output and "backtrace" not in output

    status, output = cli(["collection", "verify", url], capfd)
    assert status == 2 and "1 bad model(s)" in output
    assert bad.id in output and Path(bad_file).name in output and "backtrace" not in output
    status, output = cli(["collection", "export", url, bad.id, "--out", str(tmp_path / "bad.safetensors")], capfd)
    assert status == 2 and bad.id in output and "backtrace" not in output


def test_a_lost_newest_manifest_is_an_error_not_a_roll_back(two_models, capfd) -> None:
    url, (first, second) = two_models
    manifests = sorted(Path(url, "models.lance", "_versions").glob("*.manifest"))
    newest = manifests[0]  # Lance names manifests by u64::MAX - version: the smallest name is the newest version
    newest.unlink()
    for argv in (["collection", "ls", url], ["collection", "verify", url]):
        status, output = cli(argv, capfd)
        assert (
            status == 2
            and "version 3" in output
            and "cannot be opened" in output
            and "Readable versions: 1, 2" in output
        )
    status, output = cli(["collection", "versions", url], capfd)  # what can still be read
    assert status == 0 and "2 " in output
    status, output = cli(["collection", "ls", url, "--version", "2"], capfd)
    assert status == 0 and first.id in output and second.id not in output
    with pytest.raises(geosane.GeoSANEError, match="cannot be opened"):  # nothing is added on top of a lost version
        geosane.collect(["timm:test_resnet?seed=2"], url, progress=False)


def test_a_newest_manifest_lost_with_its_hint_is_found_from_its_transaction(two_models, capfd) -> None:
    """An incomplete copy lost the newest manifest and ``latest_version_hint.json``: the newest version's
    transaction file still says that it was committed, so reading on is an error, not a roll-back."""
    url, (first, second) = two_models
    versions = Path(url, "models.lance", "_versions")
    sorted(versions.glob("*.manifest"))[0].unlink()
    (versions / "latest_version_hint.json").unlink()
    for argv in (["collection", "ls", url], ["collection", "verify", url]):
        status, output = cli(argv, capfd)
        assert status == 2 and "version 3 cannot be opened" in output and "Readable versions: 1, 2" in output
        assert "_transactions" in output and ".txn" in output
    status, output = cli(["collection", "ls", url, "--version", "2"], capfd)
    assert status == 0 and first.id in output and second.id not in output
    with pytest.raises(geosane.GeoSANEError, match="cannot be opened"):
        geosane.collect(["timm:test_resnet?seed=2"], url, progress=False)


@pytest.mark.parametrize("how", ["middle", "zeros", "truncation"])
def test_a_damaged_newest_manifest_lists_the_readable_versions(how, two_models, capfd) -> None:
    url, (first, second) = two_models
    newest = sorted(Path(url, "models.lance", "_versions").glob("*.manifest"))[0]
    data = bytearray(newest.read_bytes())
    if how == "middle":
        data[len(data) // 3 : len(data) // 3 + 200] = b"\xff" * 200
    elif how == "zeros":
        data[: len(data) - 16] = bytes(len(data) - 16)
    else:
        data = data[: len(data) // 2] + data[-16:]
    newest.write_bytes(bytes(data))
    for argv in (["collection", "ls", url], ["collection", "versions", url], ["collection", "verify", url]):
        status, output = cli(argv, capfd)
        assert status == 2 and "newest version cannot be opened" in output, output
        assert "Readable versions: 1, 2;" in output and "panicked" not in output and "Traceback" not in output
    status, output = cli(["collection", "ls", url, "--version", "2"], capfd)
    assert status == 0 and first.id in output and second.id not in output


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
