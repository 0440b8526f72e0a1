"""Candidates: what every candidate of one generation shares (:class:`Plan`, the encoded anchors), making one
(sample, decode, detokenize, task model, BatchNorm, score), and running them all, as Ray tasks where a cluster is
there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from geosane.autoencoder import Autoencoder, Latents
from geosane.errors import GeoSANEError
from geosane.generation.anchors import Anchor, backbone_weights
from geosane.generation.config import GenerateConfig
from geosane.generation.prompt import Prompt, task_model
from geosane.generation.ranking import TargetData, reestimate_batchnorm, selection_score
from geosane.generation.sampling import sample_latents
from geosane.tasks import load_backbone
from geosane.tokenizer import detokenize, first_nonfinite, tokenize

__all__ = ["Plan", "is_weight", "make_candidate", "make_ready", "run_candidates", "weight_distance"]


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
        """Anchor ``index`` in the latent space, encoded on first use: ``joint`` sampling encodes only the anchors
        its candidates are drawn around."""
        if index not in self.encoded:
            tokens = tokenize(self.anchors[index].state_dict, self.autoencoder.tokenizer)
            self.encoded[index] = self.autoencoder.encode(tokens)
        return self.encoded[index]

    @property
    def num_classes(self) -> int:
        """Classes of the task head: the target data's, else the prompt's."""
        return self.target.num_classes if self.target else self.prompt.num_classes


def make_candidate(plan: Plan, index: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Candidate ``index``: sample, decode, detokenize, then :func:`make_ready`. Seeded by the generation's seed and
    ``index`` alone, so a candidate is the same wherever it runs.

    Args:
        plan: what every candidate shares.
        index: which candidate.

    Returns:
        The task model's weights and what the card says of it (anchor, BatchNorm layers, selection score).
    """
    config = plan.config
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
    if config.sampling == "joint":  # one anchor per candidate
        chosen = int(torch.randint(len(plan.anchors), (1,), generator=generator))
        latents, _ = sample_latents([plan.latents(chosen)], "joint", config.bandwidth, generator)
    else:
        everyone = [plan.latents(i) for i in range(len(plan.anchors))]
        latents, chosen = sample_latents(everyone, config.sampling, config.bandwidth, generator)
    tokens = tokenize(plan.anchors[chosen].state_dict, plan.autoencoder.tokenizer)  # its layout and kept tensors
    state_dict = detokenize(plan.autoencoder.decode(latents), tokens.layout, tokens.kept)
    found = first_nonfinite(state_dict)
    if found:  # a damaged autoencoder or anchor: say so rather than write weights that compute NaN
        raise GeoSANEError(
            f"candidate {index} decoded from {plan.anchors[chosen].name}: tensor {found[0]!r} has {found[1]:,} "
            f"non-finite value(s) of {found[2]:,}; the autoencoder or the anchor is damaged"
        )
    anchor = plan.anchors[chosen]
    weights, info = make_ready(plan, state_dict, index)
    return weights, {
        **info,
        "anchor": anchor.name if config.sampling == "joint" else None,
        "distance": weight_distance(
            backbone_weights(weights), anchor.state_dict, plan.prompt.head if not plan.head_kept else ()
        ),
    }


def make_ready(plan: Plan, state_dict: dict[str, torch.Tensor], index: int) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights in the prompt's shapes made task-ready, as every initialization from existing weights is: a seeded
    new head unless the head is kept (:func:`~geosane.generation.anchors.keeps_head`), the task model,
    BatchNorm statistics re-estimated on unlabeled target images, and the selection-split score that ranks it.

    Args:
        plan: the generation's shared plan (prompt, target data, head rule, seed).
        state_dict: weights in the prompt's shapes (decoded, an anchor's, a soup...).
        index: which candidate (seeds the new head).

    Returns:
        The task model's weights, and what its card says (candidate, BatchNorm layers, selection score).
    """
    import timm

    config, prompt = plan.config, plan.prompt
    state_dict = dict(state_dict)
    if not plan.head_kept and prompt.head:
        torch.manual_seed(config.seed * 1_000_003 + index)
        fresh = timm.create_model(prompt.arch, in_chans=prompt.in_chans, num_classes=prompt.num_classes, **prompt.sizes)
        state_dict.update({k: v for k, v in fresh.state_dict().items() if k in prompt.head})
    model = task_model(prompt, config.task, plan.num_classes)
    if config.task == "classification":
        model.load_state_dict(state_dict, strict=True)
    else:
        load_backbone(model.backbone, state_dict)  # type: ignore[arg-type]
    info: dict[str, Any] = {"candidate": index}
    if plan.target is not None:
        # a new task head learns its own statistics in fine-tuning; the backbone's must fit the target's images now
        network = model if config.task == "classification" else model.backbone
        info["batchnorm_layers"] = reestimate_batchnorm(network, plan.target.unlabeled)  # type: ignore[arg-type]
        if config.task in ("classification", "segmentation"):
            info["selection_score"], info["predictions"] = selection_score(
                model, plan.target, plan.head_kept, config.task
            )
    model.eval()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, info


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
    weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], skip: tuple[str, ...] = ()
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
) -> tuple[list[tuple[dict[str, torch.Tensor], dict[str, Any]]], str]:
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
