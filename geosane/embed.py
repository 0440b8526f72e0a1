"""Embeddings of a collection's models in the autoencoder's latent space, and whether they say what models are.

Each model is encoded whole (halo windows) and summarized by the mean and the spread of its token latents. A
latent space worth generating from puts models of one architecture, task or modality near each other: the
k-nearest-neighbour accuracy of those labels from the embeddings (leave-one-out) is compared with the same
classifier on shuffled labels, and a UMAP map is coloured by each label.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geosane import storage
from geosane.autoencoder import Autoencoder
from geosane.collection import Collection, ModelRecord
from geosane.errors import GeoSANEError
from geosane.version import software_versions

__all__ = ["LABELS", "Embeddings", "embed_collection", "knn_accuracy", "write_embeddings"]

log = logging.getLogger(__name__)

LABELS = ("family", "architecture", "task", "modality", "dataset")
SHUFFLES = 20  # shuffled-label baselines averaged


@dataclass
class Embeddings:
    """One row per collection model: ids, names, the embedding matrix and the labels it is judged by."""

    ids: list[str]
    names: list[str]
    vectors: np.ndarray  # [models, 2 * latent_dim]
    labels: dict[str, list[str]]


def architecture(record: ModelRecord) -> str:
    """A zoo model's timm architecture, otherwise the model's family."""
    return record.tags.get("arch") or record.family


def dataset(record: ModelRecord) -> str:
    """What a model learned from: a zoo model's dataset, a catalogued model's source, else unknown."""
    if "dataset" in record.tags:
        return record.tags["dataset"]
    return f"pretrained:{record.tags['catalogue']}" if "catalogue" in record.tags else "unknown"


def embed_collection(autoencoder: Autoencoder, collection: Collection, progress: bool = True) -> Embeddings:
    """Every model of ``collection`` through the encoder: the mean and standard deviation of its latents.

    Args:
        autoencoder: a trained autoencoder.
        collection: the collection to embed (its token language must be the autoencoder's).
        progress: show a progress bar.

    Returns:
        Ids, vectors and labels (family, architecture, task, modality, dataset).
    """
    from tqdm import tqdm

    records = collection.records()
    if len(records) < 2:
        raise GeoSANEError(f"{collection.url} holds {len(records)} model(s); embeddings need at least 2 to compare")
    autoencoder.check_collection(collection)
    vectors = []
    for record in tqdm(records, desc="embedding", unit="model", disable=not progress):
        latents = autoencoder.encode(collection.tokens(record)).values
        vectors.append(
            torch.cat([latents.mean(0), latents.std(0) if len(latents) > 1 else torch.zeros_like(latents[0])])
        )
    labels = {
        "family": [r.family for r in records],
        "architecture": [architecture(r) for r in records],
        "task": [r.task for r in records],
        "modality": [r.modality for r in records],
        "dataset": [dataset(r) for r in records],
    }
    return Embeddings([r.id for r in records], [r.name for r in records], torch.stack(vectors).numpy(), labels)


def knn_accuracy(vectors: np.ndarray, labels: list[str], k: int = 3, seed: int = 0) -> dict[str, float]:
    """Leave-one-out k-nearest-neighbour accuracy of ``labels`` (cosine distance on standardized embeddings), and
    the mean accuracy of the same classifier on shuffled labels: the chance level this collection's label counts
    give.

    Args:
        vectors: one embedding per model.
        labels: one label per model.
        k: neighbours that vote.
        seed: seeds the shuffles.

    Returns:
        ``knn_accuracy``, ``shuffled_accuracy`` and ``k``.
    """
    from sklearn.model_selection import LeaveOneOut, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = max(1, min(k, len(labels) - 1))
    classifier = make_pipeline(StandardScaler(), KNeighborsClassifier(k, metric="cosine"))
    accuracy = float(cross_val_score(classifier, vectors, labels, cv=LeaveOneOut()).mean())
    rng = np.random.default_rng(seed)
    shuffled = [
        float(cross_val_score(classifier, vectors, list(rng.permutation(labels)), cv=LeaveOneOut()).mean())
        for _ in range(SHUFFLES)
    ]
    return {"knn_accuracy": accuracy, "shuffled_accuracy": float(np.mean(shuffled)), "k": k}


def plot_map(embeddings: Embeddings, path: Path, seed: int = 0) -> None:
    """A 2-D UMAP of the embeddings, one panel per label, coloured by its values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import umap
    from sklearn.preprocessing import StandardScaler

    n = len(embeddings.ids)
    with warnings.catch_warnings():  # UMAP notes that a seed means one thread: the seed is the point
        warnings.filterwarnings("ignore", message="n_jobs value")
        points = umap.UMAP(n_neighbors=max(2, min(15, n - 1)), random_state=seed, init="random").fit_transform(
            StandardScaler().fit_transform(embeddings.vectors)
        )
    figure, axes = plt.subplots(1, len(LABELS), figsize=(6 * len(LABELS), 5))
    for axis, name in zip(axes, LABELS, strict=True):
        values = embeddings.labels[name]
        for index, value in enumerate(sorted(set(values))):
            chosen = [i for i, v in enumerate(values) if v == value]
            axis.scatter(points[chosen, 0], points[chosen, 1], s=18, label=value, color=plt.cm.tab20(index % 20))
        axis.set_title(f"by {name}")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.legend(fontsize=7, loc="best")
    figure.suptitle(f"{n} collection models in the autoencoder's latent space (UMAP)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_embeddings(
    embeddings: Embeddings, out: str, info: dict[str, Any] | None = None, seed: int = 0
) -> dict[str, Any]:
    """``out/embeddings.npz`` (ids, vectors), ``out/umap.png`` and ``out/knn.json`` (kNN accuracy against the
    shuffled baseline per label, with what produced them); returns the kNN results.

    Args:
        embeddings: :func:`embed_collection`.
        out: the output folder.
        info: what produced them (autoencoder, collection), recorded in ``knn.json``.
        seed: seeds UMAP and the shuffles.

    Returns:
        The kNN results per label.
    """
    import io

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    results = {name: knn_accuracy(embeddings.vectors, labels, seed=seed) for name, labels in embeddings.labels.items()}
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array(embeddings.ids), names=np.array(embeddings.names), vectors=embeddings.vectors)
    storage.write_bytes(str(folder / "embeddings.npz"), buffer.getvalue())
    plot_map(embeddings, folder / "umap.png", seed)
    record = {"models": len(embeddings.ids), "knn": results, **(info or {}), "software": software_versions()}
    storage.write_bytes(str(folder / "knn.json"), json.dumps(record, indent=1).encode())
    return results
