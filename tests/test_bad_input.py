"""The probe suite: what a careless or hostile user does, through the command line. Each case asserts the exit
code, that the message names the problem, and that nothing was written or lost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

import geosane
from geosane.autoencoder import AutoencoderConfig
from geosane.cli import main
from geosane.errors import GeoSANEError

PROMPT = "timm:test_resnet?num_classes=5"


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collection of two models (tokens of 32, as the shipped autoencoder reads)."""
    url = tmp_path_factory.mktemp("bad-input") / "collection"
    geosane.collect(["timm:test_resnet?seed=0", "timm:test_resnet?seed=1"], str(url), token_size=32, progress=False)
    return url


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``geosane ARGV`` in this process: exit status and everything it printed."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = int(exc.code or 0)
    out = capsys.readouterr()
    return status, out.out + out.err


def nan_model(folder: Path) -> Path:
    """A model file whose weights are all NaN."""
    path = folder / "nan.safetensors"
    state = {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in tiny_state().items()}
    save_file(state, path)
    return path


def tiny_state() -> dict:
    import timm

    return {k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=5).state_dict().items()}


@pytest.mark.parametrize("bandwidth", ["nan", "inf", "-1", "1e30"])
def test_generate_refuses_a_bandwidth_that_makes_no_weights(bandwidth, tmp_path, capsys) -> None:
    status, output = run(
        ["generate", "--prompt", PROMPT, "--bandwidth", bandwidth, "--out", str(tmp_path / "g")], capsys
    )
    assert status == 2 and re.search(
        r"bandwidth: Input should be (a finite number|(less|greater) than or equal to)", output
    )
    assert not (tmp_path / "g").exists()


def test_a_changed_byte_in_a_saved_autoencoder_is_refused_by_name(tmp_path, capsys) -> None:
    folder = tmp_path / "run" / "final"
    geosane.Autoencoder(AutoencoderConfig.named("tiny", token_size=32)).save(str(folder))
    geosane.Autoencoder.load(str(tmp_path / "run"))  # intact: loads
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # a weight's byte: the file still parses
    weights.write_bytes(bytes(data))
    status, output = run(
        ["generate", "--autoencoder", str(tmp_path / "run"), "--prompt", PROMPT, "--out", str(tmp_path / "g")], capsys
    )
    assert status == 2 and "model.safetensors: SHA-256" in output and "changed or damaged" in output
    assert not (tmp_path / "g").exists()


def test_collect_refuses_nonfinite_weights_unless_asked(tmp_path, capsys) -> None:
    source, out = nan_model(tmp_path), tmp_path / "c"
    status, output = run(["collect", str(source), "--out", str(out), "--token-size", "32"], capsys)
    assert status == 2 and "non-finite value(s)" in output and "--allow-nonfinite" in output
    assert not geosane.Collection(str(out)).exists()  # nothing committed
    status, _ = run(["collect", str(source), "--out", str(out), "--token-size", "32", "--allow-nonfinite"], capsys)
    assert status == 0 and len(geosane.Collection(str(out)).records()) == 1
    # training refuses it before Ray starts, and writes no run
    status, output = run(
        ["train", "--collection", str(out), "--storage", str(tmp_path / "runs"), "--name", "x"], capsys
    )
    assert status == 2 and "non-finite weights" in output
    assert not (tmp_path / "runs" / "x").exists()


def test_train_refuses_zero_workers_before_anything(collection, tmp_path, capsys) -> None:
    argv = ["train", "--collection", str(collection), "--storage", str(tmp_path / "runs"), "--name", "x"]
    status, output = run([*argv, "--workers", "0"], capsys)
    assert status == 2 and "workers must be >= 1" in output
    assert not (tmp_path / "runs").exists()


def test_collect_refuses_a_token_size_that_cannot_fit(tmp_path, capsys) -> None:
    status, output = run(["collect", PROMPT, "--out", str(tmp_path / "c"), "--token-size", "1000000000000"], capsys)
    assert status == 2 and "token_size must be between 1 and 65,536" in output
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("version", ["-1", "0", "x"])
def test_collection_versions_count_from_one(version, collection, capsys) -> None:
    status, output = run(["collection", "ls", str(collection), "--version", version], capsys)
    assert status == 2 and "version" in output and "Traceback" not in output


@pytest.mark.parametrize("inside", ["", "models.lance", "models.lance/data"])
def test_no_verb_writes_inside_a_collection(inside, collection, tmp_path, capsys) -> None:
    out = str(collection / inside / "out")
    before = sorted(p.relative_to(collection) for p in collection.rglob("*"))
    for argv in (
        ["generate", "--prompt", PROMPT, "--out", out],
        ["embed", "--collection", str(collection), "--out", out],
        ["bench", "--config", "sweeps/bench-demo.yaml", "--storage", str(tmp_path / "runs"), "--out", out],
    ):
        status, output = run(argv, capsys)
        assert status == 2 and "is inside" in output and "collection" in output, argv
    status, output = run(["train", "--collection", str(collection), "--storage", out, "--name", "x"], capsys)
    assert status == 2 and "inside the collection" in output
    assert sorted(p.relative_to(collection) for p in collection.rglob("*")) == before


def test_a_bench_whose_autoencoder_is_missing_fails_before_ray(tmp_path, capsys, caplog) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(
        f"name: nothing\nautoencoder: {tmp_path / 'no-such-run'}\nseeds: [0]\ntasks:\n"
        "  - {data: eurosat_rgb, arch: test_resnet, initializations: [generated], epochs: 1, lr: 0.001}\n"
    )
    argv = ["bench", "--config", str(config), "--storage", str(tmp_path / "runs"), "--resume", "--name", "NOSUCH"]
    with caplog.at_level("INFO"):
        status, output = run(argv, capsys)
    assert status == 2 and "no autoencoder at" in output and "no-such-run" in output
    assert "nothing to resume" in caplog.text  # --resume of a sweep that is not there says so
    import ray

    assert not ray.is_initialized()


def test_credentials_in_the_endpoint_are_refused_and_never_printed(collection, tmp_path) -> None:
    """Every s3 verb at -v, with a marked password in the endpoint: an error that says where credentials go, and the
    password nowhere in the output or in any file written."""
    marker = "Pa55-MARKED-secret"
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://user:{marker}@127.0.0.1:9", "AWS_ACCESS_KEY_ID": "key"}
    env["AWS_SECRET_ACCESS_KEY"] = "secret-value"
    cli = str(Path(sys.executable).with_name("geosane"))
    for argv in (
        ["collect", PROMPT, "--out", "s3://bucket/c"],
        ["collection", "ls", "s3://bucket/c"],
        ["collection", "export", "s3://bucket/c", "x", "--out", str(tmp_path / "m.safetensors")],
        ["generate", "--prompt", PROMPT, "--out", "s3://bucket/g"],
    ):
        done = subprocess.run([cli, "-v", *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode == 2, output[-2000:]
        assert "carries credentials" in output and "AWS_SECRET_ACCESS_KEY" in output
        assert marker not in output
    assert not any(marker.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_the_log_filter_masks_credentials_in_any_record(caplog) -> None:
    """The AWS clients log request URLs at debug level: a record holding one comes out masked."""
    import logging

    from geosane.storage import RedactingFilter

    record = logging.LogRecord(
        "botocore.endpoint", logging.DEBUG, __file__, 1, "url %s", ("http://u:pw-123@h/b",), None
    )
    assert RedactingFilter().filter(record) and record.getMessage() == "url http://***@h/b"


def test_generated_cards_carry_the_hash_of_their_weights(tmp_path) -> None:
    import hashlib
    import json

    status = main(["-q", "generate", "--prompt", PROMPT, "--candidates", "1", "--out", str(tmp_path)])
    assert status == 0
    card = json.loads((tmp_path / "model-1.json").read_text())
    assert card["weights_sha256"] == hashlib.sha256((tmp_path / "model-1.safetensors").read_bytes()).hexdigest()


def test_library_callers_get_the_same_checks() -> None:
    with pytest.raises(GeoSANEError, match="bandwidth"):
        geosane.generate("geosane:small", PROMPT, bandwidth=float("nan"))


def bench_with_prompt_weights(tmp_path: Path, weights: Path) -> Path:
    config = tmp_path / "bench.yaml"
    config.write_text(
        "name: prompt-weights\nseeds: [0]\ntasks:\n"
        "  - {data: eurosat_rgb, arch: test_resnet, initializations: [prompt], epochs: 1, lr: 0.001, "
        f"prompt_weights: {weights}}}\n"
    )
    return config


@pytest.mark.parametrize("weights", ["missing", "another architecture", "code-carrying pickle"])
def test_a_bench_checks_its_prompt_weights_before_ray(weights, shared, tmp_path, capsys) -> None:
    import pickle

    import timm
    import torch

    path = tmp_path / "weights.safetensors"
    if weights == "another architecture":
        save_file(timm.create_model("test_vit", num_classes=10).state_dict(), path)
    elif weights == "code-carrying pickle":
        path = tmp_path / "weights.pt"

        class Payload:
            def __reduce__(self):
                return (os.system, ("touch " + str(tmp_path / "pwned"),))

        torch.save({"conv.weight": torch.zeros(1), "payload": Payload()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    config = bench_with_prompt_weights(tmp_path, path)
    status, output = run(["bench", "--config", str(config), "--storage", str(tmp_path / "runs")], capsys)
    assert status == 2 and "tasks[0].prompt_weights" in output and str(path.name) in output, output
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "runs").exists()
    import ray

    assert not ray.is_initialized()


def test_a_bench_takes_prompt_weights_that_fit(shared, tmp_path) -> None:
    import timm

    from geosane.bench import BenchConfig

    path = tmp_path / "weights.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=7).state_dict(), path)
    assert BenchConfig.from_yaml(bench_with_prompt_weights(tmp_path, path)).tasks[0].prompt_weights == str(path)


@pytest.mark.parametrize("seed", [str(2**70), "-1"])
def test_seeds_outside_0_to_2_63_are_refused_on_every_path(seed, tmp_path, capsys) -> None:
    status, output = run(["generate", "--prompt", PROMPT, "--seed", seed, "--out", str(tmp_path / "g")], capsys)
    assert status == 2 and "seed: must be a whole number from 0 to 2^63-1" in output and "Traceback" not in output
    status, output = run(["collect", f"{PROMPT}&seed={seed}", "--out", str(tmp_path / "c")], capsys)
    assert status == 2 and "seed: must be a whole number from 0 to 2^63-1" in output
    for name, text in [
        ("bench", "name: x\nseeds: [SEED]\ntasks: []\n"),
        ("zoo", "name: x\ngroups: []\nseed: SEED\n"),
        ("train", "collection: c\nstorage: s\nname: x\nseed: SEED\n"),
    ]:
        config = tmp_path / f"{name}.yaml"
        config.write_text(text.replace("SEED", seed))
        argv = {
            "bench": ["bench", "--config", str(config), "--storage", str(tmp_path / "runs")],
            "zoo": ["zoo", "--config", str(config), "--out", str(tmp_path / "z")],
            "train": ["train", "--config", str(config), "--collection", "c", "--storage", str(tmp_path / "r")],
        }[name]
        status, output = run(argv, capsys)
        assert status == 2 and "seed" in output and "line" in output and "Traceback" not in output, (name, output)
    assert not any((tmp_path / d).exists() for d in ("g", "c", "runs", "z", "r"))


def test_no_verb_but_collect_create_bucket_creates_a_bucket(s3_server, tmp_path, capsys) -> None:
    import boto3

    from geosane import storage
    from geosane.serve import ServeConfig, resolved

    buckets = boto3.client("s3", endpoint_url=s3_server)
    status, output = run(["generate", "--prompt", PROMPT, "--candidates", "1", "--out", "s3://no-bucket-g/g"], capsys)
    assert status == 2 and "bucket no-bucket-g does not exist" in output
    with pytest.raises(GeoSANEError, match="bucket no-bucket-s does not exist"):
        resolved(ServeConfig(storage="s3://no-bucket-s/jobs"))
    with pytest.raises(GeoSANEError, match="bucket no-bucket-w does not exist"):
        storage.write_bytes("s3://no-bucket-w/x.json", b"{}")
    names = [b["Name"] for b in buckets.list_buckets()["Buckets"]]
    assert not {"no-bucket-g", "no-bucket-s", "no-bucket-w"} & set(names)
    status, _ = run(["collect", PROMPT, "--out", "s3://made-by-collect/c", "--create-bucket"], capsys)
    assert status == 0 and "made-by-collect" in [b["Name"] for b in buckets.list_buckets()["Buckets"]]
