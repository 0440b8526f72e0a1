"""Starting a task model from pretrained weights of another band count or task: the input convolution's filters
put on their bands by name (ImageNet's red, green and blue onto Sentinel-2's B04, B03 and B02 of 13 bands) or
adapted as timm adapts pretrained stems, the classifier kept only where it fits, everything else checked.

Generation fits anchors to a prompt with the same two stem rules; the zoo starts lineages from one pretrained
checkpoint (``start_from`` of a zoo group) with :func:`start_from`, so that models fine-tuned from one checkpoint
share its units, as real remote-sensing models mostly do.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from geosane.errors import GeoSANEError

__all__ = ["SAME_BANDS", "adapt_input", "band_mapped_input", "start_from"]

#: Names of one band across sensors and datasets: a colour name and Sentinel-2's band for it.
SAME_BANDS = {"B04": "Red", "B4": "Red", "B03": "Green", "B3": "Green", "B02": "Blue", "B2": "Blue"}


def adapt_input(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """An input convolution for ``in_chans`` bands from one trained on others, as timm adapts RGB stems: the filters
    repeated over the new bands in order and rescaled, or, for fewer bands, summed onto them, so that a constant
    image gives the same response. timm's ``adapt_input_conv`` assumes a 3-band source (it returns a 6-band stem
    unchanged for a 3-band target).

    Args:
        weight: ``[out, bands, k, k]`` filters.
        in_chans: the bands the prompt takes.

    Returns:
        ``[out, in_chans, k, k]`` filters.
    """
    from timm.models import adapt_input_conv

    bands = weight.shape[1]
    if bands == 3:
        return adapt_input_conv(in_chans, weight)
    if bands >= in_chans:  # fewer bands: source band s adds onto band s mod in_chans
        folded = weight.new_zeros(weight.shape[0], in_chans, *weight.shape[2:])
        for band in range(bands):
            folded[:, band % in_chans] += weight[:, band]
        return folded
    return weight.repeat(1, -(-in_chans // bands), 1, 1)[:, :in_chans] * (bands / in_chans)


def band_mapped_input(
    weight: torch.Tensor, anchor_bands: list[str] | None, target_bands: list[str] | None
) -> torch.Tensor | None:
    """An input convolution for the target's bands from one trained on the anchor's, by band name: each of the anchor's
    filters goes to its band's channel, other bands start at zero, so the generated model first sees exactly what
    the anchor saw (EuroSAT RGB's B04, B03, B02 inside the 13 multispectral bands). None when a band is missing.

    Args:
        weight: the anchor's input filters.
        anchor_bands: the bands the anchor was trained on.
        target_bands: the target data's bands.

    Returns:
        The mapped filters, or None.
    """
    if not anchor_bands or not target_bands or not set(anchor_bands) <= set(target_bands):
        return None
    mapped = weight.new_zeros(weight.shape[0], len(target_bands), *weight.shape[2:])
    for channel, band in enumerate(anchor_bands):
        mapped[:, target_bands.index(band)] = weight[:, channel]
    return mapped


def start_from(
    model: nn.Module,
    arch: str,
    task: str,
    weights: Mapping[str, torch.Tensor],
    bands: tuple[list[str] | None, list[str] | None] = (None, None),
) -> str:
    """Put a timm classifier's pretrained ``weights`` into a fresh task model of the same architecture: the input
    convolution mapped by band name (names that mean the same band match, :data:`SAME_BANDS`) or adapted for another
    band count, the classifier kept where its shape fits (else the model's own, fresh), every other tensor required.

    Args:
        model: a task model (``geosane.tasks.create_model``) of ``arch``.
        arch: its timm architecture.
        task: its task (a segmentation model takes the weights into its backbone).
        weights: the pretrained classifier's state dict (timm's names).
        bands: the bands the weights were trained on and the bands of the task's data.

    Returns:
        How the stem was fitted (``as is``, ``mapped by band (...)``, ``adapted``) and whether the head was kept.

    Raises:
        GeoSANEError: a tensor of the model that the weights lack or cannot fit, named with its shapes.
    """
    import timm

    from geosane.tasks.models import load_backbone

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        raise GeoSANEError(f"{arch}: timm knows no stem or classifier of it (no pretrained config)")
    stem = f"{cfg.first_conv}.weight"
    weights = dict(weights)
    in_chans = len(bands[1]) if bands[1] else None
    how = "stem as is"
    if stem in weights and in_chans is not None and weights[stem].shape[1] != in_chans:
        same = [[SAME_BANDS.get(b, b) for b in names] if names else None for names in bands]
        mapped = band_mapped_input(weights[stem], same[0], same[1])
        weights[stem] = mapped if mapped is not None else adapt_input(weights[stem], in_chans)
        how = f"stem mapped by band ({', '.join(bands[0] or [])})" if mapped is not None else "stem adapted"
    if task != "classification":
        load_backbone(model.backbone, weights)  # type: ignore[arg-type]
        return how + ", new head"
    own = model.state_dict()
    fits = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    head = cfg.classifier
    heads = (head,) if isinstance(head, str) else tuple(head or ())
    missing = [k for k in own if k not in fits and not k.startswith(tuple(f"{h}." for h in heads))]
    if missing:
        shapes = [f"{k} {tuple(own[k].shape)}" for k in missing[:3]]
        raise GeoSANEError(f"the pretrained weights lack {len(missing)} tensor(s) of {arch}: {shapes}")
    model.load_state_dict({**own, **fits}, strict=True)
    kept = all(k in fits for k in own if k.startswith(tuple(f"{h}." for h in heads)))
    return how + (", head kept" if kept else ", new head")
