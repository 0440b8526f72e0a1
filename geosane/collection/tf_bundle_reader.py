"""Read a TensorFlow tensor bundle's variables into a safetensors file; run as a script in its own process.

    python tf_bundle_reader.py BUNDLE_PREFIX OUT.safetensors

``geosane.collection.formats.read_tf_bundle`` runs it with the Python of TensorFlow's own environment
(``.venv/tensorflow``): TensorFlow and PyTorch's native libraries clash in one process, so this script imports
TensorFlow, NumPy and safetensors only (nothing of GeoSANE or PyTorch). It uses TensorFlow's
checkpoint reader, which reads ``PREFIX.index`` and ``PREFIX.data-*`` (checking their checksums) and never loads or
runs a graph. Variables are named and ordered by the checkpoint's object graph, walked from the model in its
children's order (layer by layer): a variable's own full name where the checkpoint kept one (``conv2d/kernel``),
else its path through the layers (``layer_with_weights-0/layer_with_weights-3/kernel``), so that kernels and biases
keep the names the tokenizer reads. The order travels in the file's metadata (``geosane_keys``).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

#: Checkpoint keys of what is not a model weight: the object graph itself, optimizer slots, saved counters.
NOT_WEIGHTS = re.compile(r"(^_CHECKPOINTABLE_OBJECT_GRAPH$|/\.OPTIMIZER_SLOT/|^optimizer/|save_counter)")
#: Object-graph edges that list objects again under a generic name (Keras's ``variables``, ``keras_api``...);
#: a variable is named by the path through its layers instead.
GENERIC_EDGES = frozenset(
    {
        "variables",
        "trainable_variables",
        "non_trainable_variables",
        "keras_api",
        "layers",
        "metrics",
        "layer_metrics",
        "regularization_losses",
        "layer_regularization_losses",
        "signatures",
        "optimizer",
    }
)
KEY_ORDER = "geosane_keys"  # as geosane.collection.formats.KEY_ORDER


def ordered_keys(reader: Any) -> dict[str, str]:
    """Readable name -> checkpoint key, for every model variable, in the order the model holds them; without an
    object graph (a TF1 checkpoint), the keys sorted, named as they are."""
    from tensorflow.core.protobuf.trackable_object_graph_pb2 import TrackableObjectGraph

    keys = [k for k in reader.get_variable_to_shape_map() if not NOT_WEIGHTS.search(k)]
    if not reader.has_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"):
        return {key: key for key in sorted(keys)}
    graph = TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    named: dict[str, str] = {}  # checkpoint key -> name, in walk order
    seen: set[int] = set()
    stack: list[tuple[int, str]] = [(0, "")]
    while stack:
        node, path = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for attribute in graph.nodes[node].attributes:
            if attribute.name == "VARIABLE_VALUE":
                named.setdefault(attribute.checkpoint_key, attribute.full_name or path)
        children = [c for c in graph.nodes[node].children if c.local_name not in GENERIC_EDGES]
        stack.extend((c.node_id, f"{path}/{c.local_name}".lstrip("/")) for c in reversed(children))
    ordered = [k for k in named if k in keys] + sorted(k for k in keys if k not in named)
    names = [named.get(k) or k.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE") for k in ordered]
    if len(set(names)) != len(names):  # two variables under one name: keep the checkpoint's own keys
        names = ordered
    return dict(zip(names, ordered, strict=True))


def main(prefix: str, out: str) -> None:
    """Write the bundle at ``prefix``'s model variables to ``out`` (safetensors, order in the metadata)."""
    import numpy as np
    import tensorflow as tf
    from safetensors.numpy import save_file

    reader = tf.train.load_checkpoint(prefix)
    arrays = {}
    for name, key in ordered_keys(reader).items():
        array = np.require(np.asarray(reader.get_tensor(key)), requirements="C")  # 0-d stays 0-d
        if array.dtype.kind not in "fiub":
            raise SystemExit(f"variable {name!r} is not numeric ({array.dtype})")
        arrays[name] = array
    save_file(arrays, out, metadata={KEY_ORDER: json.dumps(list(arrays))})


if __name__ == "__main__":
    main(*sys.argv[1:3])
