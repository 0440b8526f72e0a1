"""Galileo (Tseng et al., 2025, "Galileo: Learning Global & Local Features of Many Remote Sensing Modalities"), the
nano encoder as a backbone for Sentinel-2 images: GeoSANE's own implementation from the paper's description, whose
state dict is the released ``encoder.pt`` (loads with ``strict=True``; ``../shared/weights/galileo_nano``).

Galileo tokenizes each *channel group* of an input separately: every group of Sentinel-2 bands (RGB, red edge, NIR
10 m, NIR 20 m, SWIR; NDVI) gets its own 8x8 patch embedding, and each token carries an encoding of four quarters:
which group it is, its time step, its month and its position on the ground (2D sine-cosine). A transformer encodes
all tokens together; groups an image lacks are simply absent. Here one image is one time step, NDVI is left out
(it needs reflectances, the inputs come normalized), and the features are the mean of the encoder's output tokens.
The other modalities' embeddings (S1, ERA5, SRTM, ...) are part of the state dict and unused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geosane.errors import GeoSANEError

__all__ = ["S2_GROUPS", "GalileoClassifier", "GalileoEncoder", "GalileoSettings", "band_groups"]

#: Galileo's space-time channel groups, in the order of its group embeddings; Sentinel-2 bands by name.
SPACE_TIME_GROUPS: dict[str, tuple[str, ...]] = {
    "S1": ("VV", "VH"),
    "S2_RGB": ("B02", "B03", "B04"),
    "S2_Red_Edge": ("B05", "B06", "B07"),
    "S2_NIR_10m": ("B08",),
    "S2_NIR_20m": ("B8A",),
    "S2_SWIR": ("B11", "B12"),
    "NDVI": ("NDVI",),
}
S2_GROUPS = ("S2_RGB", "S2_Red_Edge", "S2_NIR_10m", "S2_NIR_20m", "S2_SWIR")
SPACE_GROUPS = {"SRTM": 2, "DW": 9, "WC": 5}
TIME_GROUPS = {"ERA5": 2, "TC": 3, "VIIRS": 1}
STATIC_GROUPS = {"LS": 1, "location": 3, "DW_static": 9, "WC_static": 5}


@dataclass(frozen=True)
class GalileoSettings:
    """The nano encoder's sizes (the released ``config.json``: width 128, depth 4, 8 heads, patches of 8)."""

    width: int = 128
    depth: int = 4
    heads: int = 8
    mlp_ratio: int = 4
    max_sequence_length: int = 24
    patch_size: int = 8


class PatchEmbed(nn.Module):
    """One channel group's patches to tokens (a strided convolution)."""

    def __init__(self, channels: int, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, width, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> ``[N, H/p, W/p, width]``."""
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention with separate query, key and value projections."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, T, width]`` -> the same."""
        n, t, width = x.shape

        def split(projection: nn.Module) -> torch.Tensor:
            return projection(x).view(n, t, self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q), split(self.k), split(self.v))
        return self.proj(out.transpose(1, 2).reshape(n, t, width))


class Mlp(nn.Module):
    """Two linear layers with a GELU between."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., width]`` -> the same."""
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.mlp = Mlp(width, width * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, T, width]`` -> the same."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """1D sine-cosine encodings of ``positions`` in ``dim`` values (half sines, half cosines)."""
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim / 2))
    angles = positions.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class GalileoEncoder(nn.Module):
    """Galileo's encoder: per-group embeddings for every modality it was trained on, the group, time, month and
    position encodings, transformer blocks and a final norm. :meth:`forward` encodes Sentinel-2 images."""

    def __init__(self, settings: GalileoSettings | None = None) -> None:
        super().__init__()
        s = settings or GalileoSettings()
        self.settings, quarter = s, s.width // 4
        self.space_time_embed = nn.ModuleDict(
            {name: PatchEmbed(len(bands), s.width, s.patch_size) for name, bands in SPACE_TIME_GROUPS.items()}
        )
        self.space_embed = nn.ModuleDict({n: PatchEmbed(c, s.width, s.patch_size) for n, c in SPACE_GROUPS.items()})
        self.time_embed = nn.ModuleDict({n: nn.Linear(c, s.width) for n, c in TIME_GROUPS.items()})
        self.static_embed = nn.ModuleDict({n: nn.Linear(c, s.width) for n, c in STATIC_GROUPS.items()})
        self.s_t_channel_embed = nn.Parameter(torch.zeros(len(SPACE_TIME_GROUPS), quarter))
        self.sp_channel_embed = nn.Parameter(torch.zeros(len(SPACE_GROUPS), quarter))
        self.t_channel_embed = nn.Parameter(torch.zeros(len(TIME_GROUPS), quarter))
        self.st_channel_embed = nn.Parameter(torch.zeros(len(STATIC_GROUPS), quarter))
        positions = sincos(torch.arange(s.max_sequence_length), quarter)
        self.pos_embed = nn.Parameter(positions, requires_grad=False)
        self.month_embed = nn.Embedding(12, quarter)
        self.month_embed.weight.data.copy_(sincos(torch.arange(12) * (2 * math.pi / 12), quarter))
        self.blocks = nn.ModuleList(Block(s.width, s.heads, s.mlp_ratio) for _ in range(s.depth))
        self.norm = nn.LayerNorm(s.width)

    def encodings(self, group: int, height: int, width: int, month: int) -> torch.Tensor:
        """The encoding added to every token of one group at time step 0: group, time, month and ground position,
        a quarter of the width each.

        Args:
            group: the group's index among the space-time groups.
            height: patches down.
            width: patches across.
            month: the month (0-11).

        Returns:
            ``[height, width, channels]``.
        """
        quarter = self.settings.width // 4
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        ground = torch.cat([sincos(rows.reshape(-1), quarter // 2), sincos(cols.reshape(-1), quarter // 2)], 1)
        shared = torch.cat([self.s_t_channel_embed[group], self.pos_embed[0], self.month_embed.weight[month]])
        return torch.cat([shared.expand(height * width, -1), ground.to(shared)], 1).view(height, width, -1)

    def forward(self, groups: dict[str, torch.Tensor], month: int = 0) -> torch.Tensor:
        """Encode one time step of Sentinel-2 images given per channel group.

        Args:
            groups: group name -> ``[N, bands of the group, H, W]`` (any of :data:`S2_GROUPS`).
            month: the month (0-11) all images were taken in (EuroSAT does not say: 0).

        Returns:
            The encoded tokens, ``[N, groups x H/8 x W/8, width]``.
        """
        names = list(SPACE_TIME_GROUPS)
        tokens = []
        for name, x in groups.items():
            embedded = self.space_time_embed[name](x)
            _, height, width, _ = embedded.shape
            tokens.append((embedded + self.encodings(names.index(name), height, width, month)).flatten(1, 2))
        x = torch.cat(tokens, 1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def band_groups(bands: list[str] | tuple[str, ...]) -> dict[str, list[int]]:
    """Which input bands feed which Galileo group: every Sentinel-2 group whose bands the input has, by name.

    Args:
        bands: the input's band names (``B04, B03, B02`` for EuroSAT RGB; the 13 of EuroSAT multispectral).

    Returns:
        Group -> the bands' indices in the input, in the group's order.

    Raises:
        GeoSANEError: no group is complete.
    """
    found = {
        name: [list(bands).index(b) for b in SPACE_TIME_GROUPS[name]]
        for name in S2_GROUPS
        if all(b in bands for b in SPACE_TIME_GROUPS[name])
    }
    if not found:
        raise GeoSANEError(f"Galileo needs Sentinel-2 bands by name ({', '.join(S2_GROUPS)}); got {list(bands)}")
    return found


class GalileoClassifier(nn.Module):
    """The encoder on Sentinel-2 images, its tokens averaged, and a linear head."""

    def __init__(self, bands: list[str] | tuple[str, ...], num_classes: int) -> None:
        super().__init__()
        self.groups = band_groups(bands)
        self.encoder = GalileoEncoder()
        self.head = nn.Linear(self.encoder.settings.width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` images -> ``[N, width]``: the mean of the encoded tokens."""
        groups = {name: x[:, index] for name, index in self.groups.items()}
        return self.encoder(groups).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.features(x))
