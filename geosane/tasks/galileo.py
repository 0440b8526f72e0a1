"""Galileo (Tseng et al., 2025, "Galileo: Learning Global & Local Features of Many Remote Sensing Modalities"), the
nano encoder as a backbone for Sentinel-2 (and Sentinel-1) image time series: GeoSANE's own implementation, whose
state dict is the released ``encoder.pt`` (loads with ``strict=True``; ``../shared/weights/galileo_nano``) and whose
outputs match the official implementation's (nasaharvest/galileo) to 1e-4 on its reference cases
(``tests/tasks/test_galileo.py``).

Galileo tokenizes each *channel group* of a space-time input separately: S1, the Sentinel-2 groups (RGB, red edge,
NIR 10 m, NIR 20 m, SWIR) and NDVI each get their own patch embedding, whose 8x8 kernels are resized for other patch
sizes (the pseudo-inverse of a bicubic resize, as FlexiViT does). Every token carries four encodings, a quarter of
the width each: its group, its time step, its month, and its position on the ground, scaled by the ground size of a
token (``resolution_m`` x patch size) over 10 m. A transformer encodes the tokens that are present; absent groups
(masked) take no part, and come out as the final norm of zero. The other modalities' embeddings (ERA5, SRTM, ...) are
part of the state dict and unused here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from geosane.config import settings
from geosane.errors import GeoSANEError

__all__ = [
    "S2_GROUPS",
    "SPACE_TIME_BANDS",
    "GalileoClassifier",
    "GalileoEncoder",
    "GalileoSettings",
    "band_groups",
    "load_normalization",
]

#: Galileo's space-time bands, in its own order (Sentinel-2 bands by our names: B02, not B2).
SPACE_TIME_BANDS = ("VV", "VH", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "NDVI")
#: Its space-time channel groups, in the order of its group embeddings.
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
#: The ground size Galileo's positions are measured in.
BASE_GSD_M = 10.0


@settings(frozen=True)
class GalileoSettings:
    """The nano encoder's sizes (the released ``config.json``: width 128, depth 4, 8 heads, patches of 8)."""

    width: int = 128
    depth: int = 4
    heads: int = 8
    mlp_ratio: int = 4
    max_sequence_length: int = 24
    patch_size: int = 8


def sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sine-cosine encodings of ``positions`` in ``dim`` values (half sines, half cosines), at Galileo's frequencies:
    ``10000^(-i / (2 dim))`` for ``i < dim / 2``."""
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / dim / 2.0)
    angles = positions.float().reshape(-1)[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def month_table(dim: int) -> torch.Tensor:
    """Galileo's month encodings, ``[12, dim]``: month m's angle 2 pi m / 12, its sine in the first half of the values
    and its cosine in the second."""
    angles = torch.arange(12, dtype=torch.float32) * (2 * math.pi / 12)
    return torch.cat([angles.sin()[:, None].expand(12, dim // 2), angles.cos()[:, None].expand(12, dim // 2)], 1)


def ground_positions(height: int, width: int, ratio: float, dim: int) -> torch.Tensor:
    """Position encodings of a ``height x width`` grid of tokens each ``ratio`` x 10 m across, ``[height, width,
    dim]``: the column's distance in the first half of the values, the row's in the second."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    encoded = torch.cat([sincos(cols * ratio, dim // 2), sincos(rows * ratio, dim // 2)], 1)
    return encoded.view(height, width, dim)


class PatchEmbed(nn.Module):
    """One channel group's patches to tokens: a strided convolution whose kernels (trained at 8x8) are resized for
    another patch size by the pseudo-inverse of a bicubic resize, so that a resized kernel sees a resized patch as the
    original kernel sees the original."""

    def __init__(self, channels: int, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, width, patch, stride=patch)
        self.resizers: dict[int, torch.Tensor] = {}  # patch size -> [size^2, patch^2] (not weights: no state)

    def resizer(self, size: int) -> torch.Tensor:
        """The linear map from a base kernel to one of ``size`` x ``size`` (cached per size)."""
        if size not in self.resizers:
            base = self.proj.kernel_size[0]
            basis = torch.eye(base * base).view(base * base, 1, base, base)
            resized = F.interpolate(basis, (size, size), mode="bicubic", antialias=True).view(base * base, -1)
            self.resizers[size] = torch.linalg.pinv(resized)
        return self.resizers[size]

    def forward(self, x: torch.Tensor, patch: int | None = None) -> torch.Tensor:
        """``[N, C, H, W]`` -> ``[N, H/p, W/p, width]`` for patches of ``patch`` (default: the kernel's size)."""
        weight, base = self.proj.weight, self.proj.kernel_size[0]
        if patch and patch != base:
            resizer = self.resizer(patch).to(weight)
            weight = (weight.flatten(2) @ resizer.T).view(*weight.shape[:2], patch, patch)
        return F.conv2d(x, weight, self.proj.bias, stride=patch or base).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention with separate query, key and value projections; absent tokens are no keys."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, T, width]`` (and ``[N, T]`` True where a token is present) -> ``[N, T, width]``."""
        n, t, width = x.shape

        def split(projection: nn.Module) -> torch.Tensor:
            return projection(x).view(n, t, self.heads, width // self.heads).transpose(1, 2)

        mask = None if present is None else present[:, None, None, :]
        out = F.scaled_dot_product_attention(split(self.q), split(self.k), split(self.v), attn_mask=mask)
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

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, T, width]`` -> the same."""
        x = x + self.attn(self.norm1(x), present)
        return x + self.mlp(self.norm2(x))


class GalileoEncoder(nn.Module):
    """Galileo's encoder: per-group embeddings for every modality it was trained on, the group, time, month and
    ground-position encodings, transformer blocks and a final norm. :meth:`forward` encodes space-time inputs."""

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
        self.pos_embed = nn.Parameter(sincos(torch.arange(s.max_sequence_length), quarter), requires_grad=False)
        self.month_embed = nn.Embedding.from_pretrained(month_table(quarter), freeze=True)
        self.blocks = nn.ModuleList(Block(s.width, s.heads, s.mlp_ratio) for _ in range(s.depth))
        self.norm = nn.LayerNorm(s.width)

    def encodings(self, months: torch.Tensor, height: int, width: int, ratio: float) -> torch.Tensor:
        """What is added to every token: group, time step, month and ground position, a quarter of the width each.

        Args:
            months: ``[N, T]``, 0-11.
            height: tokens down.
            width: tokens across.
            ratio: a token's ground size over 10 m.

        Returns:
            ``[N, height, width, T, groups, channels]``.
        """
        n, steps = months.shape
        groups, quarter = self.s_t_channel_embed.shape
        shape = (n, height, width, steps, groups, quarter)
        ground = ground_positions(height, width, ratio, quarter).to(self.pos_embed)
        return torch.cat(
            [
                self.s_t_channel_embed[None, None, None, None].expand(shape),
                self.pos_embed[:steps][None, None, None, :, None].expand(shape),
                self.month_embed(months)[:, None, None, :, None].expand(shape),
                ground[None, :, :, None, None].expand(shape),
            ],
            dim=-1,
        )

    def forward(
        self,
        x: torch.Tensor,
        present: torch.Tensor,
        months: torch.Tensor,
        patch_size: int | None = None,
        resolution_m: float = BASE_GSD_M,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a space-time input.

        Args:
            x: ``[N, H, W, T, 13]``, the bands of :data:`SPACE_TIME_BANDS` (normalized; absent ones any value).
            present: ``[N, H, W, T, 7]``, True where a group's pixels are there (read at each patch's first pixel).
            months: ``[N, T]``, each time step's month (0-11).
            patch_size: pixels per patch side (default 8, the kernels' size; others resize them).
            resolution_m: the input's ground size per pixel.

        Returns:
            Tokens ``[N, H/p, W/p, T, 7, width]`` and ``[N, H/p, W/p, T, 7]`` True where a token is present; absent
            tokens hold the final norm of zero.
        """
        patch = patch_size or self.settings.patch_size
        n, height, width, steps, _ = x.shape
        rows, cols = height // patch, width // patch
        present = present[:, ::patch, ::patch][:, :rows, :cols]
        used = [g for g in range(len(SPACE_TIME_GROUPS)) if bool(present[..., g].any())]  # others: no token at all
        tokens = x.new_zeros(n, rows, cols, steps, len(SPACE_TIME_GROUPS), self.settings.width)
        encodings = self.encodings(months, rows, cols, resolution_m * patch / BASE_GSD_M)
        for g in used:
            name = list(SPACE_TIME_GROUPS)[g]
            bands = [SPACE_TIME_BANDS.index(b) for b in SPACE_TIME_GROUPS[name]]
            frames = x[..., bands].permute(0, 3, 4, 1, 2).reshape(n * steps, len(bands), height, width)
            embedded = self.space_time_embed[name](frames, patch).view(n, steps, rows, cols, -1).permute(0, 2, 3, 1, 4)
            tokens[..., g, :] = embedded + encodings[..., g, :]
        sequence = tokens[..., used, :].reshape(n, -1, self.settings.width)
        keys = present[..., used].reshape(n, -1)
        for block in self.blocks:
            sequence = block(sequence, keys)
        out = tokens.new_zeros(tokens.shape)
        out[..., used, :] = (sequence * keys[..., None]).view(n, rows, cols, steps, len(used), -1)
        return self.norm(out), present

    @staticmethod
    def pooled(tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The mean of the present tokens (Galileo's ``average_tokens``).

        Args:
            tokens: ``[N, ..., width]``, as :meth:`forward` returns them.
            present: ``[N, ...]``, True where a token is present.

        Returns:
            ``[N, width]``.
        """
        weights = present.flatten(1).to(tokens)
        return (tokens.flatten(1, -2) * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


def band_groups(bands: list[str] | tuple[str, ...]) -> dict[str, list[int]]:
    """Which input bands feed which Galileo group: every space-time group whose bands the input has, by name.

    Args:
        bands: the input's band names (``B04, B03, B02`` for EuroSAT RGB; the 13 of EuroSAT multispectral).

    Returns:
        Group -> the bands' indices in the input, in the group's order.

    Raises:
        GeoSANEError: no group is complete.
    """
    found = {
        name: [list(bands).index(b) for b in group]
        for name, group in SPACE_TIME_GROUPS.items()
        if all(b in bands for b in group)
    }
    if not found:
        raise GeoSANEError(f"Galileo needs Sentinel-2 bands by name ({', '.join(S2_GROUPS)}); got {list(bands)}")
    return found


def load_normalization(path: str) -> dict[str, tuple[float, float]]:
    """Galileo's pre-training statistics (``normalization.json``, the 13 space-time bands' entry), by band name.

    Args:
        path: the file.

    Returns:
        Band -> (mean, std).
    """
    import json
    from pathlib import Path

    try:
        stats = json.loads(Path(path).read_text())[str(len(SPACE_TIME_BANDS))]
        return {band: (stats["mean"][i], stats["std"][i]) for i, band in enumerate(SPACE_TIME_BANDS)}
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise GeoSANEError(f"{path}: not Galileo's normalization statistics ({exc})") from None


class GalileoClassifier(nn.Module):
    """The encoder on one time step of an image, its present tokens averaged, and a linear head.

    The task's inputs come standardized with the task's own statistics; where Galileo's pre-training statistics
    are given (``normalization``, by band name) and the task's (``task_statistics``), each band is mapped from the
    one to the other (an affine map per band: raw values, then Galileo's standardization). ``resolution_m`` is the
    data's real ground size per pixel (EuroSAT: 10 m).
    """

    source: torch.Tensor  # per Galileo band, the input band it is read from (-1: none)
    scale: torch.Tensor  # per Galileo band, the affine map from the task's standardization to Galileo's
    shift: torch.Tensor

    def __init__(
        self,
        bands: list[str] | tuple[str, ...],
        num_classes: int,
        resolution_m: float = BASE_GSD_M,
        month: int = 0,
        normalization: dict[str, tuple[float, float]] | None = None,
        task_statistics: tuple[list[float], list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.groups = band_groups(bands)
        self.encoder = GalileoEncoder()
        self.head = nn.Linear(self.encoder.settings.width, num_classes)
        self.resolution_m, self.month = resolution_m, month
        source = [list(bands).index(b) if b in bands else -1 for b in SPACE_TIME_BANDS]
        self.register_buffer("source", torch.tensor(source), persistent=False)
        scale, shift = torch.ones(len(SPACE_TIME_BANDS)), torch.zeros(len(SPACE_TIME_BANDS))
        if normalization and task_statistics:
            for i, band in enumerate(SPACE_TIME_BANDS):
                if band in bands and band in normalization:
                    mean, std = task_statistics[0][bands.index(band)], task_statistics[1][bands.index(band)]
                    scale[i], shift[i] = (
                        std / normalization[band][1],
                        (mean - normalization[band][0]) / normalization[band][1],
                    )
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` images -> ``[N, width]``: the mean of the encoded tokens that are present."""
        n, _, height, width = x.shape
        picked = x[:, self.source.clamp_min(0)] * self.scale[:, None, None] + self.shift[:, None, None]
        picked = picked * (self.source >= 0).to(x)[:, None, None]
        names = list(SPACE_TIME_GROUPS)
        present = torch.zeros(n, height, width, 1, len(names), dtype=torch.bool, device=x.device)
        present[..., [names.index(g) for g in self.groups]] = True
        months = torch.full((n, 1), self.month, dtype=torch.long, device=x.device)
        tokens, kept = self.encoder(picked.permute(0, 2, 3, 1)[:, :, :, None], present, months, None, self.resolution_m)
        return GalileoEncoder.pooled(tokens, kept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.features(x))
