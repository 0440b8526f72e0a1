"""File formats: how one model file's bytes become a flat state dict, without running anything from the file.

Safetensors are parsed; torch files load with ``weights_only=True`` (a pickle that needs more than tensors is
refused); ONNX files are parsed as protobuf and only their initializers read; Keras HDF5 files are read with
``h5py`` (the layers' weights in the model's layer order, optimizer state left out); TensorFlow checkpoints and
SavedModels are read from their tensor bundle (``variables.index`` + ``variables.data-*``) with TensorFlow's own
checkpoint reader (no maintained reader installs without TensorFlow: the one on the registry pins protobuf 3), and
the graph in ``saved_model.pb`` is never read. TensorFlow lives in an environment of its own (set-up makes
``.venv/tensorflow``; ``$GEOSANE_TENSORFLOW_PYTHON`` names another): in GeoSANE's, libraries that import it when
they find it (umap-learn does) crash beside PyTorch.

Every reader returns tensors exactly as stored (same dtype, shape and bits): Keras and TensorFlow kernels keep
their own layout (``[kh, kw, in, out]``), so that a round trip through the collection is bit-exact.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import pickle
import posixpath
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from geosane import storage
from geosane.errors import GeoSANEError

__all__ = [
    "KEY_ORDER",
    "SUFFIXES",
    "bundle_name",
    "channels_last",
    "guess_in_chans",
    "read_keras_h5",
    "read_model_file",
    "read_onnx",
    "read_safetensors",
    "read_tf_bundle",
    "read_torch",
    "tensorflow_python",
]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
KERAS_SUFFIXES = (".h5", ".hdf5")
#: A TensorFlow checkpoint (or a SavedModel's ``variables/variables``) is found by its index file.
BUNDLE_SUFFIX = ".index"
SUFFIXES = (".safetensors", ".onnx", *TORCH_SUFFIXES, *KERAS_SUFFIXES, BUNDLE_SUFFIX)


def read_model_file(uri: str) -> tuple[str, dict[str, torch.Tensor]]:
    """One model file's content hash and tensors, by its suffix.

    Args:
        uri: a local path or fsspec URL (a chained ``zip://member::archive`` too).

    Returns:
        The SHA-256 of the bytes read (for a tensor bundle: its index, then its data shards in order) and the
        state dict in the file's order.

    Raises:
        GeoSANEError: an unsupported suffix, a damaged file, or a file that holds no tensors.
    """
    path = uri.split("::")[0]
    if path.endswith(BUNDLE_SUFFIX):
        digest, state_dict = read_tf_bundle(uri)
    else:
        reader = next((r for suffixes, r in READERS.items() if path.endswith(suffixes)), None)
        if reader is None:
            raise GeoSANEError(f"{uri}: unsupported file type; expected one of {', '.join(SUFFIXES)}")
        data = storage.read_bytes(uri)
        digest, state_dict = hashlib.sha256(data).hexdigest(), reader(data, uri)
    if not state_dict:
        raise GeoSANEError(f"{uri}: holds no tensors")
    return digest, state_dict


#: Safetensors metadata key where GeoSANE records the state dict's key order (the format itself sorts keys).
KEY_ORDER = "geosane_keys"


def read_safetensors(data: bytes, uri: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors in the state dict's original order: as recorded by GeoSANE (:data:`KEY_ORDER`),
    else in the file's data order.

    Args:
        data: the file's bytes.
        uri: where it came from, for messages.

    Returns:
        The tensors by name.

    Raises:
        GeoSANEError: not a safetensors file, or a recorded order that does not list the file's tensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        tensors = load_safetensors(data)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    except (SafetensorError, ValueError) as exc:
        raise GeoSANEError(f"{uri}: not a valid safetensors file ({exc})") from exc
    recorded = (header.get("__metadata__") or {}).get(KEY_ORDER)
    if not recorded:
        return {key: tensors[key] for key in sorted(tensors, key=lambda k: header[k]["data_offsets"][0])}
    try:
        order = json.loads(recorded)
    except json.JSONDecodeError as exc:
        raise GeoSANEError(f"{uri}: metadata {KEY_ORDER} is not a JSON list of tensor names ({exc})") from exc
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(tensors) or len(order) != len(tensors):
        names = set(map(str, order)) if isinstance(order, list) else set()
        missing, unknown = sorted(set(tensors) - names), sorted(names - set(tensors))
        raise GeoSANEError(
            f"{uri}: metadata {KEY_ORDER} must list exactly the file's {len(tensors)} tensors, once each"
            + (f"; it leaves out {missing[:3]}" if missing else "")
            + (f"; it names {unknown[:3]}, which the file does not hold" if unknown else "")
        )
    return {key: tensors[key] for key in order}


def read_torch(data: bytes, uri: str) -> dict[str, torch.Tensor]:
    """A torch state dict, plain or nested as ``{"state_dict": ...}`` / ``{"model": ...}``; never unpickles code.

    Args:
        data: the file's bytes.
        uri: where it came from, for messages.

    Returns:
        The tensors by name.

    Raises:
        GeoSANEError: a pickle that needs more than tensors, or not a torch file.
    """
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc) else ""
        raise GeoSANEError(
            f"{uri}: refused to load: the file is a pickle that needs more than tensors to load, "
            f"and GeoSANE never runs code from model files ({first})"
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise GeoSANEError(f"{uri}: not a readable torch file ({str(exc).splitlines()[0]})") from exc
    return flatten_state_dict(obj, uri)


def flatten_state_dict(obj: Any, uri: str) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint object."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                return flatten_state_dict(obj[key], uri)
        not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if not not_tensors:
            return {str(k): v for k, v in obj.items()}
        raise GeoSANEError(
            f"{uri}: expected a state dict of tensors (optionally under 'state_dict' or 'model'), "
            f"but keys {not_tensors[:5]} are not tensors"
        )
    raise GeoSANEError(f"{uri}: expected a state dict, got a {type(obj).__name__}")


def read_onnx(data: bytes, uri: str) -> dict[str, torch.Tensor]:
    """An ONNX model's initializers (its weights); the graph itself is never run.

    Args:
        data: the file's bytes.
        uri: where it came from, for messages.

    Returns:
        Initializers by name, in the file's order.

    Raises:
        GeoSANEError: not an ONNX model.
    """
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper

    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError) as exc:
        raise GeoSANEError(f"{uri}: not a valid ONNX file ({exc})") from exc
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise GeoSANEError(f"{uri}: ONNX files with external data are not supported; save with the weights inside")
    # Order by first use in the (topologically sorted) graph, so tokens follow the network from input to output.
    first_use: dict[str, int] = {}
    for position, node in enumerate(model.graph.node):
        for name in node.input:
            first_use.setdefault(name, position)
    inits = sorted(model.graph.initializer, key=lambda init: first_use.get(init.name, len(model.graph.node)))
    return {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in inits}


def guess_in_chans(state_dict: Mapping[str, torch.Tensor], channels_last: bool = False) -> int | None:
    """Input channels of the stem, when the model's first weight matrix is a 2-D convolution; else unknown.

    Args:
        state_dict: the model's tensors in order.
        channels_last: kernels are Keras/TensorFlow's ``[kh, kw, in, out]`` rather than PyTorch's ``[out, in, kh, kw]``.

    Returns:
        The stem's input channels, or None.
    """
    for tensor in state_dict.values():
        if tensor.is_floating_point() and tensor.dim() >= 2:
            return int(tensor.shape[2 if channels_last else 1]) if tensor.dim() == 4 else None
    return None


def channels_last(uri: str) -> bool:
    """Whether a file's kernels are laid out ``[kh, kw, in, out]`` (Keras and TensorFlow files)."""
    return uri.split("::")[0].endswith((*KERAS_SUFFIXES, BUNDLE_SUFFIX))


# ------------------------------------------------------------------------------ Keras HDF5


def read_keras_h5(data: bytes, uri: str) -> dict[str, torch.Tensor]:
    """A Keras (2.x, ``tf.keras``) HDF5 file's weights, from ``model.save`` or ``model.save_weights``.

    The layers come in the model's order (the file's ``layer_names``), each layer's weights in its own order
    (``weight_names``); keys are Keras's weight names (``conv2d_1/kernel:0``), prefixed by the layer when two
    layers share one. Optimizer state is not model weights and is left out.

    Args:
        data: the file's bytes.
        uri: where it came from, for messages.

    Returns:
        The weights, exactly as stored.

    Raises:
        GeoSANEError: not an HDF5 file, not a Keras weights file, or a weight the file lists but does not hold.
    """
    import h5py

    try:
        handle = h5py.File(io.BytesIO(data), "r")
    except OSError as exc:
        raise GeoSANEError(f"{uri}: not a readable HDF5 file ({exc})") from exc
    with handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in group.attrs:
            raise GeoSANEError(
                f"{uri}: not a Keras HDF5 weights file (no 'layer_names' attribute"
                f"{' under model_weights' if group is not handle else ''}; Keras 3 '.weights.h5' files are not read)"
            )
        entries = []
        for layer in map(text, group.attrs["layer_names"]):
            if layer not in group:
                raise GeoSANEError(f"{uri}: layer {layer!r} is listed in layer_names but has no group")
            for weight in map(text, group[layer].attrs.get("weight_names", [])):
                try:
                    array = np.asarray(group[layer][weight])
                except (KeyError, OSError) as exc:
                    raise GeoSANEError(f"{uri}: weight {layer}/{weight} is listed but cannot be read ({exc})") from exc
                entries.append((layer, weight, array))
    names = [weight for _, weight, _ in entries]
    prefixed = len(set(names)) != len(names)
    return {(f"{layer}/{weight}" if prefixed else weight): torch.from_numpy(a.copy()) for layer, weight, a in entries}


def text(value: Any) -> str:
    """An HDF5 attribute string (stored as bytes by Keras)."""
    return value.decode("utf-8") if isinstance(value, bytes | np.bytes_) else str(value)


# ------------------------------------------------------------------------------ TensorFlow tensor bundles

#: A tensor bundle's data shards: ``PREFIX.data-00000-of-00002``.
SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


def bundle_name(index: str) -> str:
    """A readable name for a bundle: the SavedModel's folder for ``NAME/variables/variables.index``."""
    prefix = index[: -len(BUNDLE_SUFFIX)]
    parent = posixpath.dirname(prefix)
    if posixpath.basename(prefix) == "variables" and posixpath.basename(parent) == "variables":
        return posixpath.basename(posixpath.dirname(parent))
    return posixpath.basename(prefix)


def read_tf_bundle(index: str) -> tuple[str, dict[str, torch.Tensor]]:
    """A TensorFlow tensor bundle's variables, read with TensorFlow's checkpoint reader in a child process of
    TensorFlow's own environment (:func:`tensorflow_python`; TensorFlow and PyTorch's native libraries clash in one
    process); nothing of the model's graph is loaded or run. The child hands the variables back as safetensors.

    Keys are the variables' own names (``conv2d/kernel``) or their paths through the model's layers, in the
    model's order (``geosane/collection/tf_bundle_reader.py``). Optimizer slots and counters are left out.

    Args:
        index: the bundle's ``.index`` file (local or any fsspec URL; its data shards are read beside it).

    Returns:
        The SHA-256 of the index and data shards' bytes, and the variables exactly as stored.

    Raises:
        GeoSANEError: TensorFlow is not installed, a data shard is missing, or the bundle is damaged.
    """
    python = tensorflow_python()
    if python is None:
        raise GeoSANEError(
            f"{index}: reading TensorFlow checkpoints needs a Python with TensorFlow: `make setup` makes "
            f"{Path(sys.prefix) / 'tensorflow'}, or set GEOSANE_TENSORFLOW_PYTHON"
        )
    prefix = index[: -len(BUNDLE_SUFFIX)]
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as folder:
        for url in bundle_files(index):
            data = storage.read_bytes(url)
            digest.update(data)
            (Path(folder) / ("bundle" + url[len(prefix) :])).write_bytes(data)
        out = Path(folder) / "variables.safetensors"
        child = subprocess.run(
            [python, str(Path(__file__).with_name("tf_bundle_reader.py")), f"{folder}/bundle", str(out)],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        if child.returncode != 0:
            lines = [line for line in child.stderr.strip().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit code {child.returncode}"
            raise GeoSANEError(f"{index}: not a readable TensorFlow checkpoint ({reason})")
        return digest.hexdigest(), read_safetensors(out.read_bytes(), index)


def tensorflow_python() -> str | None:
    """The Python that reads TensorFlow bundles: ``$GEOSANE_TENSORFLOW_PYTHON``, else set-up's
    ``.venv/tensorflow``, else this one if it has TensorFlow; None where there is none.

    Returns:
        A Python executable, or None.
    """
    if os.environ.get("GEOSANE_TENSORFLOW_PYTHON"):
        return os.environ["GEOSANE_TENSORFLOW_PYTHON"]
    own = Path(sys.prefix) / "tensorflow" / "bin" / "python"
    if own.exists():
        return str(own)
    return sys.executable if importlib.util.find_spec("tensorflow") is not None else None


def bundle_files(index: str) -> list[str]:
    """The index and every data shard of a bundle; a missing shard is named."""
    prefix = index[: -len(BUNDLE_SUFFIX)]
    fs, path = storage.filesystem(index)
    with storage.errors_named(index, "read"):
        if not fs.exists(path):
            raise GeoSANEError(f"{index}: no such file")
        shards = sorted(p for p in fs.glob(path[: -len(BUNDLE_SUFFIX)] + ".data-*") if SHARD.search(p))
    if not shards:
        raise GeoSANEError(f"{index}: no data shards beside it ({posixpath.basename(prefix)}.data-00000-of-...)")
    found = [SHARD.search(p) for p in shards]
    totals = {int(m.group(2)) for m in found if m}
    if len(totals) != 1 or sorted(int(m.group(1)) for m in found if m) != list(range(max(totals))):
        names = [posixpath.basename(p) for p in shards]
        raise GeoSANEError(f"{index}: its data shards are incomplete or from different saves: {names}")
    return [index] + [prefix + SHARD.search(p).group(0) for p in shards]  # type: ignore[union-attr]


#: Readers of single-file formats by suffix (tensor bundles span several files: :func:`read_tf_bundle`).
READERS: dict[tuple[str, ...], Callable[[bytes, str], dict[str, torch.Tensor]]] = {
    (".safetensors",): read_safetensors,
    (".onnx",): read_onnx,
    TORCH_SUFFIXES: read_torch,
    KERAS_SUFFIXES: read_keras_h5,
}
