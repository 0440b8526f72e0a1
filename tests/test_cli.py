"""The `geosane` command as a user runs it: a real subprocess, real exit codes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .helpers import Exploit, assert_bit_exact

GEOSANE = [sys.executable, "-m", "geosane.cli"]


def geosane(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GEOSANE, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )


def test_collect_ls_show_export(tmp_path: Path, shared: Path) -> None:
    out = f"file://{tmp_path}/collection"
    presto = shared / "weights/presto/default_model.pt"
    result = geosane(
        "-q",
        "collect",
        str(presto),
        "timm:test_resnet?in_chans=13&num_classes=10",
        "--out",
        out,
        "--tag",
        "modality=multispectral",
        "--tag",
        "licence=MIT",
        "--tag",
        "source=nasaharvest",
    )
    assert result.returncode == 0, result.stderr
    assert "added 2 model(s)" in result.stdout

    listing = geosane("collection", "ls", out)
    assert listing.returncode == 0, listing.stderr
    assert "default_model" in listing.stdout and "test_resnet" in listing.stdout and "2 model(s)" in listing.stdout

    shown = geosane("collection", "show", out, "default_model")
    record = json.loads(shown.stdout)
    assert record["modality"] == "multispectral" and record["licence"] == "MIT"
    assert record["tags"] == {"source": "nasaharvest"}
    assert record["kept"]["encoder.pos_embed"] == "position embedding"

    again = geosane("-q", "collect", str(presto), "--out", out)
    assert again.returncode == 0 and "added 0 model(s)" in again.stdout and "1 already there" in again.stdout

    target = tmp_path / "presto.safetensors"
    exported = geosane("collection", "export", out, record["id"][:8], "--out", str(target))
    assert exported.returncode == 0, exported.stderr
    original = torch.load(presto, map_location="cpu", weights_only=True)
    # export keeps the original key order: reading it back as a source gives the same state dict
    from geosane.collection.sources import load

    assert_bit_exact(original, load(str(target)).state_dict)
    assert set(load_file(target)) == set(original)


@pytest.mark.parametrize(
    "args, message",
    [
        (["collect", "missing.pt", "--out", "OUT"], "missing.pt: no such file"),
        (["collect", "timm:not_a_model", "--out", "OUT"], "unknown timm model 'not_a_model'"),
        (["collect", "pyproject.toml", "--out", "OUT"], "pyproject.toml: unsupported file type"),
        (
            ["collect", "timm:test_vit", "--out", "OUT", "--tag", "novalue"],
            "tag 'novalue' is not of the form key=value",
        ),
        (["collection", "ls", "OUT"], "no collection here"),
        (["collect", "timm:test_vit?in_chans=-3", "--out", "OUT"], "in_chans must be >= 1"),
        (["collection", "verify", "OUT"], "no collection here"),
        (["collection", "migrate", "OUT"], "no collection here"),
    ],
)
def test_bad_input_exits_non_zero_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.replace("OUT", str(tmp_path / "c")) for a in args]
    result = subprocess.run(
        [*GEOSANE, *args], capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "c").exists(), "a refused command creates nothing"


def test_pickle_with_code_is_refused_by_the_cli(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"w": Exploit(str(marker))}, tmp_path / "evil.pt")
    result = geosane("collect", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "c"))
    assert result.returncode == 2 and "refused to load" in result.stderr
    assert not marker.exists() and not (tmp_path / "c").exists()


def test_help_lists_every_command() -> None:
    result = geosane("--help")
    assert result.returncode == 0
    for command in ("collect", "collection", "zoo", "train", "generate", "embed"):
        assert command in result.stdout
    sub = geosane("collection", "--help")
    for action in ("ls", "show", "export"):
        assert action in sub.stdout


def test_collection_stats_prints_counts_and_writes_a_png(tmp_path: Path, shared: Path) -> None:
    out = str(tmp_path / "c")
    assert geosane("-q", "collect", "pretrained:galileo_nano", "timm:test_vit", "--out", out).returncode == 0
    png = tmp_path / "stats.png"
    result = geosane("collection", "stats", out, "--png", str(png))
    assert result.returncode == 0, result.stderr
    assert "galileo" in result.stdout and "vision_transformer" in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["galileo", "4"] for line in lines)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("flags, offload", [([], None), (["--offload"], "cpu"), (["--offload", "nvme"], "nvme")])
def test_train_offload_flag(flags: list[str], offload: str | None) -> None:
    """`--offload` alone keeps its meaning (CPU); `--offload nvme` puts the optimizer states in files."""
    from geosane.cli import build_parser

    assert build_parser().parse_args(["train", "--collection", "c", *flags]).offload == offload


@pytest.mark.parametrize(
    "command, text, message",
    [
        ("train", "model: tiny\nworkers: two\n", "line 2: workers: expected an integer, got 'two'"),
        ("train", "model: tiny\nlearning_rate: 0.1\n", "line 2: learning_rate: unknown setting"),
        ("zoo", "name: !!python/object/apply:os.system [touch pwned]\ngroups: []\n", "YAML tag not allowed"),
        ("zoo", "", "is empty"),
    ],
)
def test_bad_configs_are_named_before_anything_starts(tmp_path: Path, command: str, text: str, message: str) -> None:
    config = tmp_path / f"{command}.yaml"
    config.write_text(text)
    args = ["--collection", str(tmp_path / "c")] if command == "train" else ["--out", str(tmp_path / "c")]
    result = subprocess.run(
        [*GEOSANE, command, "--config", str(config), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 2 and str(config) in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "pwned").exists()


def test_collect_refuses_a_token_size_of_zero(tmp_path: Path) -> None:
    result = geosane("collect", "timm:test_vit", "--out", str(tmp_path / "c"), "--token-size", "0")
    assert result.returncode == 2 and "token_size must be between 1 and 65,536 values, got 0" in result.stderr
    assert not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An untrained autoencoder and a collection of three architectures, three seeds each."""
    from geosane.autoencoder import Autoencoder, AutoencoderConfig

    root = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    Autoencoder(AutoencoderConfig(token_size=64, window=32)).save(str(root / "ae"))
    models = [
        f"timm:{a}?num_classes=10&seed={s}" for a in ("test_resnet", "test_vit", "test_efficientnet") for s in (0, 1, 2)
    ]
    result = geosane("-q", "collect", *models, "--out", str(root / "c"), "--token-size", "64")
    assert result.returncode == 0, result.stderr
    return {"ae": str(root / "ae"), "collection": str(root / "c")}


def test_generate_writes_weights_and_cards(small_world: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "generated"
    result = geosane(
        "-q", "generate", "--autoencoder", small_world["ae"], "--prompt", "timm:test_resnet?in_chans=13&num_classes=10",
        "--anchors", "family=resnet", "--collection", small_world["collection"], "--candidates", "2", "--top-k", "2",
        "--seed", "7", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "rank 1" in result.stdout and "rank 2" in result.stdout and "not ranked: no target data" in result.stdout
    card = json.loads((out / "model-1.json").read_text())
    assert card["seed"] == 7 and card["prompt"]["in_chans"] == 13 and len(card["anchors"]) == 3
    assert {a["fitted"] for a in card["anchors"]} == {"input convolution adapted"}
    weights = load_file(out / "model-1.safetensors")
    assert weights["conv1.0.weight"].shape[1] == 13
    assert "# GeoSANE generated test_resnet: rank 1" in (out / "model-1.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "timm:resnet_nonexistent"], "unknown timm model 'resnet_nonexistent'"),
        (["--prompt", "timm:test_vit", "--anchors", "family=resnet"], "fits the prompt test_vit"),
        (["--prompt", "timm:test_resnet", "--anchors", "family=swin"], "no model in"),
        (["--prompt", "timm:test_resnet?in_chans=13", "--data", "eurosat_rgb"], "eurosat_rgb has 3 bands"),
    ],
)
def test_generate_refuses_bad_input_and_writes_nothing(
    small_world: dict[str, str], tmp_path: Path, args: list[str], message: str, shared: Path
) -> None:
    out = tmp_path / "generated"
    result = geosane(
        "generate", "--autoencoder", small_world["ae"], "--collection", small_world["collection"], *args,
        "--out", str(out), env={"GEOSANE_DATA": str(shared / "data")},
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_embed_tells_architectures_apart(small_world: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "embed"
    result = geosane("-q", "embed", "--autoencoder", small_world["ae"], "--collection", small_world["collection"],
                     "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    knn = json.loads((out / "knn.json").read_text())["knn"]
    assert knn["architecture"]["knn_accuracy"] > knn["architecture"]["shuffled_accuracy"] + 0.3
    assert (out / "umap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "architecture" in result.stdout


def test_versions_verify_and_safe_exports(tmp_path: Path) -> None:
    out = str(tmp_path / "c")
    assert geosane("-q", "collect", "timm:test_vit?num_classes=3", "--out", out, "--token-size", "64").returncode == 0
    second = geosane("-q", "collect", "timm:test_resnet?num_classes=3", "--out", out)
    assert second.returncode == 0 and "(now at version 3)" in second.stdout
    past = geosane("collection", "ls", out, "--version", "2")
    assert past.returncode == 0 and "test_vit" in past.stdout and "test_resnet" not in past.stdout
    assert "1 model(s)" in past.stdout and "at version 2" in past.stdout
    history = geosane("collection", "versions", out)
    assert [line.split()[0] for line in history.stdout.splitlines()[1:]] == ["1", "2", "3"], history.stdout
    ok = geosane("collection", "verify", out)
    assert ok.returncode == 0 and "every model of version 3 reads back" in ok.stdout

    # export refuses a directory and anywhere inside the collection, and changes nothing when it refuses
    before = {p: p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()}
    (tmp_path / "d").mkdir()
    for target, message in (
        (str(tmp_path / "d"), "is a directory; give a file name"),
        (f"file://{tmp_path}/c/manifest.json", "is inside the collection"),
        (str(tmp_path / "c" / "models.lance" / "x.safetensors"), "is inside the collection"),
    ):
        refused = geosane("collection", "export", out, "test_vit", "--out", target)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert list((tmp_path / "d").iterdir()) == []
    assert {p: p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()} == before
    exported = geosane("collection", "export", out, "test_vit", "--out", str(tmp_path / "d" / "m.safetensors"))
    assert exported.returncode == 0 and f"to {tmp_path / 'd' / 'm.safetensors'}" in exported.stdout
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["m.safetensors"], "no temporary file is left behind"

    # a flipped byte in a model's data file: verify names the model and the file, export refuses
    data = next((tmp_path / "c" / "models.lance" / "data").iterdir())
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 3] ^= 0xFF
    data.write_bytes(bytes(damaged))
    bad = geosane("collection", "verify", out)
    assert bad.returncode == 2 and data.name in bad.stdout and "1 bad model(s)" in bad.stderr, bad.stdout + bad.stderr


def test_migrate_converts_the_first_layout(tmp_path: Path) -> None:
    from geosane.collection.legacy import write_first_layout

    sd = __import__("timm").create_model("test_vit", num_classes=3).state_dict()
    (record,) = write_first_layout(str(tmp_path / "old"), {"m": sd})
    listing = geosane("collection", "ls", str(tmp_path / "old"))
    assert listing.returncode == 0 and "(first layout, read only)" in listing.stdout
    refused = geosane("collect", "timm:test_resnet", "--out", str(tmp_path / "old"))
    assert refused.returncode == 2 and f"geosane collection migrate {tmp_path / 'old'}" in refused.stderr
    migrated = geosane("collection", "migrate", str(tmp_path / "old"))
    assert migrated.returncode == 0 and "migrated 1 model(s)" in migrated.stdout, migrated.stderr
    assert geosane("collection", "verify", str(tmp_path / "old")).returncode == 0
    exported = geosane(
        "collection", "export", str(tmp_path / "old"), record.id, "--out", str(tmp_path / "m.safetensors")
    )
    assert exported.returncode == 0
    from geosane.collection.sources import load

    assert_bit_exact(sd, load(str(tmp_path / "m.safetensors")).state_dict)


def test_no_message_holds_a_credential(tmp_path: Path, s3_server: str) -> None:
    port = s3_server.rsplit(":", 1)[1]
    env = {"AWS_ENDPOINT_URL": f"http://user:SECRET-IN-URL@127.0.0.1:{port}", "AWS_SECRET_ACCESS_KEY": "SECRET-KEY"}
    result = geosane("collect", "timm:test_vit", "--out", "s3://some-bucket/c", env=env)
    assert result.returncode == 2 and "AWS_ENDPOINT_URL=http://***@127.0.0.1" in result.stderr, result.stderr
    assert "carries credentials" in result.stderr
    assert "SECRET-IN-URL" not in result.stderr + result.stdout and "SECRET-KEY" not in result.stderr + result.stdout
    typo = geosane("collect", "timm:test_vit", "--out", "s3://no-such-bucket-cli/c")
    assert (
        typo.returncode == 2
        and "bucket no-such-bucket-cli does not exist; create it, or pass --create-bucket" in typo.stderr
    )


def test_bench_refuses_an_invalid_sweep_before_anything_starts(tmp_path: Path, shared: Path) -> None:
    bad = tmp_path / "bench-bad.yaml"
    bad.write_text(
        "name: bad\nautoencoder: nowhere\ntasks:\n  - {data: eurosat_ms, arch: test_resnet, epochs: 1, lr: 0.01,\n"
        "     initializations: [scratch, magic]}\n"
    )
    result = geosane("bench", "--config", str(bad), "--storage", str(tmp_path / "runs"))
    assert result.returncode == 2 and "tasks[0].initializations: unknown ['magic']" in result.stderr
    assert not (tmp_path / "runs").exists()
    assert "--resume" in geosane("bench", "--help").stdout
