"""Keras HDF5 files and TensorFlow tensor bundles: read without running code, bit-exact through a collection,
and damaged files named. The real DL-L8S2-UV, sen2LCZ and Dynamic World files are read the same way."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from geosane.collection import Collection, sources
from geosane.collection.formats import tensorflow_python
from geosane.errors import GeoSANEError

from ..helpers import assert_bit_exact

h5py = pytest.importorskip("h5py")


def keras_layers(seed: int = 0) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """A small Keras-like network: layers in model order, each with its weights (Keras layouts, several dtypes)."""
    rng = np.random.default_rng(seed)
    return [
        ("input_1", []),
        ("conv2d_1", [("conv2d_1/kernel:0", rng.normal(size=(3, 3, 4, 8)).astype(np.float32)),
                      ("conv2d_1/bias:0", rng.normal(size=8).astype(np.float32))]),
        ("batch_normalization_1", [(f"batch_normalization_1/{n}:0", rng.normal(size=8).astype(np.float32))
                                   for n in ("gamma", "beta", "moving_mean", "moving_variance")]),
        ("activation_1", []),
        ("dense_1", [("dense_1/kernel:0", rng.normal(size=(8, 5)).astype(np.float16)),
                     ("dense_1/bias:0", rng.normal(size=5).astype(np.float64))]),
    ]  # fmt: skip


def write_keras_h5(path: Path, layers, whole_model: bool = True) -> None:
    """Keras 2's layout: ``model.save`` puts the weights under ``model_weights`` (optimizer state beside them);
    ``model.save_weights`` at the root."""
    with h5py.File(path, "w") as f:
        group = f.create_group("model_weights") if whole_model else f
        group.attrs["layer_names"] = [name.encode() for name, _ in layers]
        group.attrs["keras_version"] = b"2.13.1"
        for name, weights in layers:
            layer = group.create_group(name)
            layer.attrs["weight_names"] = [w.encode() for w, _ in weights]
            for weight, array in weights:
                layer.create_dataset(weight, data=array)
        if whole_model:
            f.create_dataset("optimizer_weights/Adam/iterations:0", data=np.int64(7))


@pytest.mark.parametrize("whole_model", [True, False])
def test_keras_h5_reads_in_layer_order_and_round_trips_bit_exact(tmp_path: Path, whole_model: bool) -> None:
    layers = keras_layers()
    write_keras_h5(tmp_path / "net.h5", layers, whole_model)
    source = sources.load(str(tmp_path / "net.h5"))
    expected = {w: torch.from_numpy(a) for _, weights in layers for w, a in weights}
    assert_bit_exact(expected, source.state_dict)  # names, layer order, dtypes (float16/64 too) and bits
    assert source.in_chans == 4 and source.tags["kernel_layout"] == "kh,kw,in,out"
    collection = Collection(str(tmp_path / "c"))
    (record,) = collection.add([source], progress=False)
    assert_bit_exact(expected, collection.export(record.id))


def test_keras_h5_prefixes_layers_only_when_weight_names_repeat(tmp_path: Path) -> None:
    a, b = np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32)
    write_keras_h5(tmp_path / "n.h5", [("block_a", [("dense/kernel:0", a)]), ("block_b", [("dense/kernel:0", b)])])
    state_dict = sources.load(str(tmp_path / "n.h5")).state_dict
    assert list(state_dict) == ["block_a/dense/kernel:0", "block_b/dense/kernel:0"]
    assert torch.equal(state_dict["block_b/dense/kernel:0"], torch.from_numpy(b))


def test_damaged_keras_files_are_named(tmp_path: Path) -> None:
    write_keras_h5(tmp_path / "net.h5", keras_layers())
    data = (tmp_path / "net.h5").read_bytes()
    (tmp_path / "truncated.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(GeoSANEError, match=r"truncated\.h5: not a readable HDF5 file"):
        sources.load(str(tmp_path / "truncated.h5"))
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f.create_dataset("x", data=np.ones(3))
    with pytest.raises(GeoSANEError, match=r"plain\.h5: not a Keras HDF5 weights file \(no 'layer_names'"):
        sources.load(str(tmp_path / "plain.h5"))
    with h5py.File(tmp_path / "net.h5", "a") as f:
        del f["model_weights/dense_1/dense_1/bias:0"]
    with pytest.raises(GeoSANEError, match=r"net\.h5: weight dense_1/dense_1/bias:0 is listed but cannot be read"):
        sources.load(str(tmp_path / "net.h5"))


@pytest.mark.parametrize(
    ("group", "models", "in_chans", "parameters"),
    [("dl-l8s2-uv", ("RGBI6", "RGBISWIR7"), (4, 6), (97_049, 97_153)), ("sen2lcz", ("sen2lcz_32",), (10,), (793_348,))],
)
def test_real_keras_models_read_as_h5py_holds_them(shared: Path, group, models, in_chans, parameters) -> None:
    for model, chans, count in zip(models, in_chans, parameters, strict=True):
        source = sources.load(f"pretrained:{group}#{group}/{model}")
        assert source.in_chans == chans and source.licence == "MIT" and len(source.bands or []) == chans
        assert sum(t.numel() for t in source.state_dict.values()) == count  # the README's "about 97k" / "793k"
        with h5py.File(source.uri, "r") as f:
            weights = f["model_weights"] if "model_weights" in f else f
            stored: dict[str, np.ndarray] = {}
            weights.visititems(
                lambda name, obj, into=stored: into.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None
            )
            layers = [n.decode() for n in weights.attrs["layer_names"]]
        # every stored weight read once, nothing else (no optimizer state), each bit-exact
        assert len(stored) == len(source.state_dict)
        for key, tensor in source.state_dict.items():
            (path,) = [p for p in stored if p.split("/", 1)[1] == key]
            assert torch.equal(tensor, torch.from_numpy(np.asarray(stored[path]))), key
        # in the model's layer order
        order = [next(p for p in stored if p.split("/", 1)[1] == key).split("/")[0] for key in source.state_dict]
        assert order == sorted(order, key=layers.index)


# ------------------------------------------------------------------------------ TensorFlow tensor bundles
# TensorFlow runs in child processes here as in GeoSANE (its native libraries and PyTorch's clash in one process).

TENSORFLOW = tensorflow_python()
needs_tf = pytest.mark.skipif(
    TENSORFLOW is None and not os.environ.get("CI"), reason="needs TensorFlow's environment (make setup)"
)

WRITE_SAVEDMODEL = """
import sys, numpy as np, tensorflow as tf
rng = np.random.default_rng(0)
module = tf.Module()  # variables created in a known order, under names that sort in another
module.stem = tf.Variable(rng.normal(size=(3, 3, 5, 4)).astype(np.float32), name="stem/kernel")
module.norm = tf.Variable(rng.normal(size=4).astype(np.float32), name="bn/gamma")
module.head = tf.Variable(rng.normal(size=(4, 2)).astype(np.float16), name="head/kernel")
module.steps = tf.Variable(np.int64(9), name="steps")
tf.saved_model.save(module, sys.argv[1])
created = [module.stem, module.norm, module.head, module.steps]
np.savez(sys.argv[2], **{v.name.removesuffix(":0").replace("/", "|"): np.asarray(v.numpy()) for v in created})
print(",".join(v.name.removesuffix(":0") for v in created))
"""

READ_WITH_TF = """
import sys, numpy as np, tensorflow as tf
reader = tf.train.load_checkpoint(sys.argv[1])
np.savez(sys.argv[2], *[np.asarray(reader.get_tensor(k)) for k in sorted(reader.get_variable_to_shape_map())
                        if not k.startswith("_CHECKPOINTABLE")])
"""


def run_tf(code: str, *args: str) -> str:
    assert TENSORFLOW, "no Python with TensorFlow (make setup makes .venv/tensorflow)"
    done = subprocess.run([TENSORFLOW, "-c", code, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.fixture()
def saved_model(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A SavedModel written by TensorFlow, and its variables in the order they were created."""
    names = run_tf(WRITE_SAVEDMODEL, str(tmp_path / "net"), str(tmp_path / "expected.npz")).split(",")
    with np.load(tmp_path / "expected.npz") as arrays:
        return tmp_path / "net", {n: torch.from_numpy(arrays[n.replace("/", "|")]) for n in names}


@needs_tf
def test_savedmodel_variables_read_in_creation_order_and_round_trip_bit_exact(tmp_path: Path, saved_model) -> None:
    folder, expected = saved_model
    found = sources.find([str(tmp_path)])
    assert [f.name for f in found] == ["net"]
    source = found[0].read()
    assert list(source.state_dict) == ["stem/kernel", "bn/gamma", "head/kernel", "steps"]
    assert_bit_exact(expected, source.state_dict)  # float32, float16 and int64, every bit
    assert source.in_chans == 5 and len(source.sha256) == 64
    collection = Collection(str(tmp_path / "c"))
    (record,) = collection.add([source], progress=False)
    assert_bit_exact(expected, collection.export(record.id))


@needs_tf
def test_damaged_bundles_are_named(saved_model) -> None:
    variables = saved_model[0] / "variables"
    index = variables / "variables.index"
    (shard,) = variables.glob("variables.data-*")
    data = shard.read_bytes()
    flipped = bytearray(data)  # a flipped byte in the data: TensorFlow's checksum catches it
    flipped[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    with pytest.raises(GeoSANEError, match=r"variables\.index: not a readable TensorFlow checkpoint \(.*"):
        sources.load(str(index))
    shard.unlink()
    with pytest.raises(GeoSANEError, match=r"variables\.index: no data shards beside it"):
        sources.load(str(index))
    shard.write_bytes(data)
    shutil.copy(shard, variables / "variables.data-00001-of-00003")
    with pytest.raises(GeoSANEError, match=r"data shards are incomplete or from different saves"):
        sources.load(str(index))


@needs_tf
def test_real_dynamic_world_reads_every_variable(shared: Path, tmp_path: Path) -> None:
    for direction in ("forward", "backward"):
        source = sources.load(f"pretrained:dynamicworld#dynamicworld/{direction}")
        floats = [t for t in source.state_dict.values() if t.is_floating_point()]
        assert len(floats) == 146 and sum(t.numel() for t in floats) == 231_209, direction  # the README's counts
        assert source.in_chans == 9 and source.licence == "Apache-2.0" and source.num_classes == 9
        first, second = list(source.state_dict)[:2]  # named by their layers, kernel and bias as the tokenizer reads
        assert first.startswith("layer_with_weights-0/") and first.endswith("/kernel") and second.endswith("/bias")
        # the same multiset of arrays as TensorFlow reads them, each bit-exact
        run_tf(READ_WITH_TF, source.uri.removesuffix(".index"), str(tmp_path / "tf.npz"))
        with np.load(tmp_path / "tf.npz") as arrays:
            theirs = sorted((a.tobytes(), a.shape) for a in arrays.values())
        ours = sorted((t.numpy().tobytes(), tuple(t.shape)) for t in source.state_dict.values())
        assert ours == theirs, direction
