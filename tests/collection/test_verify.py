"""A damaged file damages one model: the other models still list and export bit-exact, every message names the
damaged file and its model, no native backtrace reaches the terminal, and a lost newest version is an error rather
than a silent roll-back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

import geosane
from geosane.cli import main

from ..helpers import assert_bit_exact


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
