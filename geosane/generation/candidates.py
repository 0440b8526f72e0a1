"""Candidates: what every candidate of one generation shares (:class:`Plan`, the encoded anchors), making one
(sample, decode, task model, BatchNorm, score), and running them all, as Ray tasks where a cluster is there.

A candidate is streamed (``geosane.streaming``): the anchor is encoded from its state dict a group of windows at a
time, the latents are drawn as they are decoded, and each decoded layer is written straight into the task model's
own tensor. Besides the anchors and their latents, one candidate holds one model's weights, not four copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from geosane.autoencoder import Autoencoder, Latents
from geosane.errors import GeoSANEError
from geosane.generation.anchors import Anchor, WeightsOnDisk, backbone_weights
from geosane.generation.config import GenerateConfig
from geosane.generation.prompt import Prompt, task_model
from geosane.generation.ranking import TargetData, reestimate_batchnorm, selection_score
from geosane.generation.sampling import KernelDraw, sample_latents
from geosane.generation.search import search_latents
from geosane.streaming import TokenReader, TokenWriter
from geosane.tasks import load_backbone

__all__ = ["Plan", "copy_into", "is_weight", "make_candidate", "make_ready", "run_candidates", "weight_distance"]


@dataclass
class Plan:
    """What every candidate shares: the encoded anchors and the settings; shipped once to Ray tasks."""

    config: GenerateConfig
    autoencoder: Autoencoder
    prompt: Prompt
    anchors: list[Anchor]
    target: TargetData | None
    head_kept: bool
    source: dict[str, Any] | None = None  # the anchors' collection URL and version
    encoded: dict[int, Latents] = field(default_factory=dict)

    def latents(self, index: int) -> Latents:
        """Anchor ``index`` in the latent space, encoded on first use (``joint`` sampling encodes only the anchors
        its candidates are drawn around). Its weights move to a temporary file first (:class:`WeightsOnDisk`), so that
        neither encoding nor its candidates hold them in memory beside the latents and the model being decoded."""
        if index not in self.encoded:
            anchor = self.anchors[index]
            if not isinstance(anchor.state_dict, WeightsOnDisk):  # from now on read a tensor at a time, as needed
                anchor.state_dict = WeightsOnDisk(anchor.state_dict)
            self.encoded[index] = self.autoencoder.encode(self.reader(index))
        return self.encoded[index]

    def reader(self, index: int) -> TokenReader:
        """Anchor ``index``'s tokens, read from its weights as they are needed (its layout and kept tensors)."""
        return TokenReader(self.anchors[index].state_dict, self.autoencoder.tokenizer)

    @property
    def num_classes(self) -> int:
        """Classes of the task head: the target data's, else the prompt's."""
        return self.target.num_classes if self.target else self.prompt.num_classes


def make_candidate(plan: Plan, index: int) -> tuple[nn.Module, dict[str, Any]]:
    """Candidate ``index``: sample, decode straight into the task model, then :func:`make_ready`. Seeded by the
    generation's seed and ``index`` alone, so a candidate is the same wherever it runs.

    Args:
        plan: what every candidate shares.
        index: which candidate.

    Returns:
        The task model and what the card says of it (anchor, BatchNorm layers, selection score, distance).
    """
    config = plan.config
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
    if config.sampling == "joint":  # one anchor per candidate
        chosen = int(torch.randint(len(plan.anchors), (1,), generator=generator))
        latents, _ = sample_latents([plan.latents(chosen)], "joint", config.bandwidth, generator)
    else:
        everyone = [plan.latents(i) for i in range(len(plan.anchors))]
        latents, chosen = sample_latents(everyone, config.sampling, config.bandwidth, generator)
    anchor = plan.anchors[chosen]
    reader = plan.reader(chosen)  # the anchor's layout and kept tensors
    searched = None
    if config.search_steps:  # lightweight prompts: the whole draw in memory, and the decoder's activations
        whole = latents.latents() if isinstance(latents, KernelDraw) else latents
        latents, searched = search_latents(plan, whole, reader, index)

    def decode_into(targets: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        writer = TokenWriter(reader.layout, reader.kept, targets)
        try:  # a damaged autoencoder or anchor decodes to NaN: say so rather than write weights that compute it
            plan.autoencoder.decode_rows(latents, writer.write)
        except GeoSANEError as exc:
            raise GeoSANEError(f"candidate {index} decoded from {anchor.name}: {exc}") from exc
        return writer.finish()

    model, info = make_ready(plan, decode_into, index)
    return model, {
        **info,
        **({"search": searched} if searched else {}),
        "anchor": anchor.name if config.sampling == "joint" else None,
        "distance": weight_distance(
            backbone_weights(model.state_dict()), anchor.state_dict, plan.prompt.head if not plan.head_kept else ()
        ),
    }


def make_ready(
    plan: Plan,
    weights: Mapping[str, torch.Tensor] | Callable[[dict[str, torch.Tensor] | None], dict[str, torch.Tensor]],
    index: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """Weights in the prompt's shapes made task-ready, as every initialization from existing weights is: the task
    model seeded by ``index`` (so that its new head, where the head is not kept, is the candidate's: see
    :func:`~geosane.generation.anchors.keeps_head`), the weights put in, BatchNorm statistics re-estimated on unlabeled
    target images, and the selection-split score that ranks it.

    Args:
        plan: the generation's shared plan (prompt, target data, head rule, seed).
        weights: weights in the prompt's shapes (an anchor's, a soup...), or a function that writes them into the
            tensors it is given (a classifier's own, new head left out) or, given None, returns new ones (decoding).
        index: which candidate (seeds the new head).

    Returns:
        The task model, and what its card says (candidate, BatchNorm layers, selection score).
    """
    config, prompt = plan.config, plan.prompt
    torch.manual_seed(config.seed * 1_000_003 + index)
    model = task_model(prompt, config.task, plan.num_classes)
    new_head = prompt.head if not plan.head_kept else ()
    if config.task == "classification":  # the weights go straight into the model's tensors
        targets = {k: v for k, v in model.state_dict().items() if k not in new_head}
        written = weights(targets) if callable(weights) else copy_into(targets, weights)
        missing = sorted(set(targets) - set(written))
        if missing:
            raise GeoSANEError(f"the weights lack {len(missing)} tensor(s) of {prompt.arch}, e.g. {missing[:3]}")
    else:
        load_backbone(model.backbone, weights(None) if callable(weights) else weights)  # type: ignore[arg-type]
    info: dict[str, Any] = {"candidate": index}
    if plan.target is not None:
        # a new task head learns its own statistics in fine-tuning; the backbone's must fit the target's images now
        network = model if config.task == "classification" else model.backbone
        info["batchnorm_layers"] = reestimate_batchnorm(network, plan.target.unlabeled)  # type: ignore[arg-type]
        info["selection_score"], info["predictions"] = selection_score(model, plan.target, plan.head_kept, config.task)
    return model.eval(), info


def copy_into(targets: dict[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy ``weights`` into the tensors of ``targets`` they name (shapes must match), and return those written.

    Args:
        targets: a model's tensors (from ``model.state_dict()``), written in place.
        weights: the weights to copy.

    Returns:
        The targets that were written.

    Raises:
        GeoSANEError: a tensor whose shape differs from the model's, named.
    """
    written = {}
    for key, target in targets.items():
        if key in weights:
            if weights[key].shape != target.shape:
                raise GeoSANEError(
                    f"{key!r}: the model has shape {tuple(target.shape)}, the weights {tuple(weights[key].shape)}"
                )
            written[key] = target.copy_(weights[key])
    return written


def is_weight(key: str, value: torch.Tensor, skip: tuple[str, ...] = ()) -> bool:
    """Whether a tensor counts in weight-space distances: floating point, not BatchNorm statistics (they are
    re-estimated), not under a ``skip`` prefix (a new head).

    Args:
        key: the tensor's name.
        value: the tensor.
        skip: key prefixes left out.

    Returns:
        Whether it counts.
    """
    return (
        value.is_floating_point()
        and not key.endswith(("running_mean", "running_var"))
        and not (skip and key.startswith(skip))
    )


def weight_distance(
    weights: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], skip: tuple[str, ...] = ()
) -> float:
    """Normalized distance in weight space, ``||w - r|| / ||r||`` over the floating-point tensors both hold (not
    BatchNorm statistics, nor the ``skip`` prefixes: a new head): how far a model moved from where it started.

    Args:
        weights: a model's weights.
        reference: the weights it is compared with.
        skip: key prefixes left out.

    Returns:
        The distance (0 for identical weights).
    """
    difference = norm = 0.0
    for key, value in weights.items():
        other = reference.get(key)
        if other is None or other.shape != value.shape or not is_weight(key, value, skip):
            continue
        difference += float((value.double() - other.double()).pow(2).sum())
        norm += float(other.double().pow(2).sum())
    return (difference / norm) ** 0.5 if norm else float("nan")


def run_candidates(
    plan: Plan, progress: bool, use_ray: bool | None = None
) -> tuple[list[tuple[nn.Module, dict[str, Any]]], str]:
    """All candidates: as Ray tasks when a Ray cluster is there (``ray.init`` done, or ``RAY_ADDRESS`` set) unless
    ``use_ray`` is False (inside a Tune trial, whose resources are the trial's), in this process otherwise; with a
    progress bar either way.

    Args:
        plan: what every candidate shares.
        progress: show a progress bar.
        use_ray: False: never as Ray tasks.

    Returns:
        Every candidate in index order, and where they ran.
    """
    import os
    import sys

    from tqdm import tqdm

    bar = tqdm(total=plan.config.candidates, desc="candidates", unit="model", disable=not progress)
    results: dict[int, Any] = {}
    ray_running = "ray" in sys.modules and sys.modules["ray"].is_initialized()  # never import Ray just to ask
    executor = "this process"
    if use_ray is not False and (ray_running or os.environ.get("RAY_ADDRESS")):
        import ray

        executor = "Ray tasks"
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        shared = ray.put(plan)
        task = ray.remote(num_cpus=1)(make_candidate)
        pending = {task.remote(shared, i): i for i in range(plan.config.candidates)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            results[pending.pop(done[0])] = ray.get(done[0])
            bar.update()
    else:
        for i in range(plan.config.candidates):
            results[i] = make_candidate(plan, i)
            bar.update()
    bar.close()
    return [results[i] for i in range(plan.config.candidates)], executor
