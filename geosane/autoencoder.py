"""The weight autoencoder: its settings, the network, and whole models in and out of the latent space.

Tokens are standardized (:class:`Scale`), projected to ``d_model`` and summed with sinusoidal embeddings of their
three position coordinates (global index, layer index, index within layer); a pre-LayerNorm transformer encoder
maps them to one latent per token; the decoder mirrors it (latents in, positions added again) and projects back to
``token_size``. A projection head over a window's flattened latents feeds the contrastive loss in training.

The network sees windows of tokens. :meth:`Autoencoder.encode` and :meth:`Autoencoder.decode` take a whole
model's sequence of any length: they cut it into *halo windows* (a core of ``core`` tokens with ``halo`` tokens
of context on each side; only the core's outputs are kept) and stream them through the network
``batch_tokens`` at a time, so memory stays bounded by the model's own size. This module needs torch only:
training (Ray Train, DeepSpeed) lives in ``geosane.train`` and saves through :meth:`Autoencoder.save`.

    autoencoder = Autoencoder.load("runs/demo")          # the run's final/ (or step=N for a checkpoint)
    latents = autoencoder.encode(tokens)                 # tokens: geosane.tokenize(state_dict, autoencoder.tokenizer)
    rebuilt = autoencoder.decode(latents)                # [N, token_size] in the model's own units
    state_dict = geosane.detokenize(rebuilt, tokens.layout, tokens.kept)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
from torch import nn

from geosane import storage
from geosane.errors import GeoSANEError
from geosane.losses import LossConfig, geosane_loss
from geosane.tokenizer import MODES, Layout, TokenizerConfig, Tokens, prefix_mask
from geosane.version import software_versions
from geosane.views import cut_windows, halo_windows

__all__ = [
    "Autoencoder",
    "AutoencoderConfig",
    "Latents",
    "Scale",
    "SIZES",
    "normalized_error",
    "num_parameters",
    "sinusoidal",
    "training_losses",
]

FORMAT = "geosane.autoencoder"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ROWS_PER_PASS = 65_536  # tokens per pass of the whole-model statistics and errors (bounds their memory)


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class AutoencoderConfig:
    """The network's shape, the token language it reads, and how whole models are cut into windows."""

    token_size: int = 230  # values per token, the collection's
    mode: str = "dense"  # the collection's tokenizer mode
    d_model: int = 64
    encoder_blocks: int = 2
    decoder_blocks: int = 2
    heads: int = 4
    latent_dim: int = 16
    window: int = 32  # tokens per training window (the projection head flattens exactly this many)
    projection_dim: int = 32
    dropout: float = 0.0
    halo: int | None = None  # encode/decode: context tokens on each side of a core (None: a quarter of the window)
    core: int | None = None  # encode/decode: tokens per window whose outputs are kept (None: the window less halos)
    batch_tokens: int = 16_384  # encode/decode: tokens per forward pass, which bounds activation memory

    def __post_init__(self) -> None:
        if min(self.token_size, self.d_model, self.heads, self.latent_dim, self.window, self.batch_tokens) < 1:
            raise GeoSANEError(f"autoencoder sizes must be >= 1: {self}")
        if self.d_model % self.heads:
            raise GeoSANEError(f"d_model {self.d_model} is not divisible by {self.heads} heads")
        if self.core_tokens < 1 or self.halo_tokens < 0:
            raise GeoSANEError(
                f"halo windows need core >= 1 and halo >= 0, got core {self.core_tokens}, halo {self.halo_tokens}"
            )
        if self.mode not in MODES:
            raise GeoSANEError(f"unknown tokenizer mode {self.mode!r}; expected one of {', '.join(MODES)}")

    @property
    def halo_tokens(self) -> int:
        return self.window // 4 if self.halo is None else self.halo

    @property
    def core_tokens(self) -> int:
        return self.window - 2 * self.halo_tokens if self.core is None else self.core

    @property
    def tokenizer(self) -> TokenizerConfig:
        """How to tokenize a state dict for this autoencoder."""
        return TokenizerConfig(self.token_size, self.mode)  # type: ignore[arg-type]

    @classmethod
    def named(
        cls, size: str, token_size: int = 230, window: int | None = None, mode: str = "dense", **overrides: Any
    ) -> AutoencoderConfig:
        """A named size (``tiny``, ``base``, ``geosane``) for a collection's token size, at another window if given."""
        if size not in SIZES:
            raise GeoSANEError(f"unknown autoencoder size {size!r}; expected one of {', '.join(SIZES)}")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)} - {"token_size", "mode"})
        if unknown:
            raise GeoSANEError(
                f"unknown autoencoder setting(s) {unknown}; known: {', '.join(f.name for f in fields(cls))}"
            )
        shape = {**SIZES[size], **({"window": window} if window else {}), **overrides}
        return cls(token_size=token_size, mode=mode, **shape)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> AutoencoderConfig:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise GeoSANEError(f"{source}: unknown autoencoder setting(s) {unknown}")
        return cls(**data)


#: Named sizes: ``tiny`` for CPU tests and the demo, ``small`` for a laptop (tokens of 32 values), ``base`` for a
#: workstation, ``geosane`` as published (0.9B).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {},
    # what two CPU cores train in 25 minutes into working reconstructions (benchmarks/reconstruct.py): a latent as
    # wide as the token, so that the network learns weights in general rather than compressing the lineages it saw
    "small": {"d_model": 128, "latent_dim": 32, "window": 64},
    "base": {"d_model": 512, "encoder_blocks": 8, "decoder_blocks": 8, "heads": 8, "latent_dim": 64, "window": 256},
    "geosane": {
        "d_model": 1536,
        "encoder_blocks": 16,
        "decoder_blocks": 16,
        "heads": 16,
        "latent_dim": 128,
        "window": 512,
        "projection_dim": 128,
    },
}


# ------------------------------------------------------------------------------ standardization


@dataclass(frozen=True)
class Scale:
    """The standardization rule, in this one place: a model's token values pass through the network as
    ``(x - mean) / std``, with the mean and (unbiased) standard deviation of the model's real values. The collection
    stores each model's scale (computed here at collect time), training windows carry their model's, and encoding a
    model computes it; decoding restores the scale the encoder removed."""

    mean: torch.Tensor  # 0-dimensional for one model; one per window ([B, 1, 1]) in a training batch
    std: torch.Tensor

    @classmethod
    def of(cls, values: torch.Tensor, valid: torch.Tensor) -> Scale:
        """The scale of ``values`` ``[..., T]`` whose first ``valid`` entries per token are real (float64 sums)."""
        rows, counts = values.reshape(-1, values.shape[-1]), valid.reshape(-1)
        total = torch.zeros((), dtype=torch.float64, device=values.device)
        squares, real = total.clone(), int(counts.sum())
        for first in range(0, len(rows), ROWS_PER_PASS):
            chunk = rows[first : first + ROWS_PER_PASS].double()
            chunk = chunk * prefix_mask(counts[first : first + ROWS_PER_PASS], values.shape[-1])
            total += chunk.sum()
            squares += chunk.square().sum()
        mean = total / max(real, 1)
        variance = (squares - real * mean.square()) / (real - 1) if real > 1 else torch.ones_like(mean)
        return cls(mean.float(), variance.clamp_min(0).sqrt().float().clamp_min(1e-8))

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std

    def restore(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.std + self.mean


def normalized_error(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean squared error over the real values, in the target's standardized units (:class:`Scale`): how far a
    reconstruction is from a model relative to the spread of the model's own weights."""
    scale = Scale.of(target, valid)
    size = target.shape[-1]
    prediction, target, valid = prediction.reshape(-1, size), target.reshape(-1, size), valid.reshape(-1)
    total = 0.0
    for first in range(0, len(target), ROWS_PER_PASS):
        rows = slice(first, first + ROWS_PER_PASS)
        error = (prediction[rows].double() - target[rows].double()) / scale.std.double()
        total += float(error.square()[prefix_mask(valid[rows], size)].sum())
    return total / max(int(valid.sum()), 1)


def training_losses(
    network: Callable[..., Any], batch: dict[str, torch.Tensor], loss: LossConfig, bf16: bool
) -> dict[str, torch.Tensor]:
    """GeoSANE's loss on a training batch: both views through ``network`` (an :class:`Autoencoder` or the DeepSpeed
    engine around one), each window standardized by its model's scale (``batch["mean"]``, ``batch["std"]``, as
    ``encode`` standardizes a whole model); each view's target is its clean window in the same units (view 2's is
    ``tokens2`` at ``positions2`` when the views are shifted windows, the same window otherwise)."""
    scale = Scale(batch["mean"].view(-1, 1, 1), batch["std"].view(-1, 1, 1))
    dtype = torch.bfloat16 if bf16 else torch.float32
    size = batch["tokens"].shape[-1]
    targets, masks, outputs = [], [], []
    for view, suffix in (("view1", ""), ("view2", "2" if "tokens2" in batch else "")):
        mask = prefix_mask(batch["valid" + suffix], size)
        outputs.append(network((scale.apply(batch[view]) * mask).to(dtype), batch["positions" + suffix]))
        targets.append(scale.apply(batch["tokens" + suffix]))
        masks.append(mask)
    reconstructions = (outputs[0][1].float(), outputs[1][1].float())
    projections = (outputs[0][2], outputs[1][2])
    return geosane_loss(reconstructions, projections, (targets[0], targets[1]), (masks[0], masks[1]), loss)


# ------------------------------------------------------------------------------ the network


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``[..., dim]`` sin/cos embedding of integer positions (any size: global indices reach millions)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=positions.device) / half)
    angles = positions.to(torch.float32).unsqueeze(-1) * frequencies
    embedding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return nn.functional.pad(embedding, (0, dim - 2 * half))


class PositionEmbedding(nn.Module):
    """Sum of the sinusoidal embeddings of the three position coordinates."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return sum(sinusoidal(positions[..., i], self.dim) for i in range(positions.shape[-1]))  # type: ignore[return-value]


class Transformer(nn.Module):
    """Pre-LayerNorm transformer blocks (non-causal attention, 4x GELU MLP) and a final LayerNorm.

    Each block is built on its own, not deep-copied as ``nn.TransformerEncoder`` does: copies start from equal
    weights, and under DeepSpeed's ``zero.Init`` a copy of a partitioned parameter is empty.
    """

    def __init__(self, config: AutoencoderConfig, blocks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.d_model,
                config.heads,
                dim_feedforward=4 * config.d_model,
                dropout=config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(blocks)
        )
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden)
        return self.norm(hidden)


@dataclass
class Latents:
    """A model in the latent space: one vector per token, the tokens' positions, and the scale decoding restores.

    Generation decodes other values at the same positions: ``dataclasses.replace(latents, values=sampled)``.
    """

    values: torch.Tensor  # [N, latent_dim] float32
    positions: torch.Tensor  # [N, 3] int64
    scale: Scale


class Autoencoder(nn.Module):
    """The weight autoencoder: windows in :meth:`forward` (training), whole models in :meth:`encode` and
    :meth:`decode`, and :meth:`load` / :meth:`save` for a run's weights."""

    def __init__(self, config: AutoencoderConfig, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.info = info or {}  # where the weights came from: training settings, step, metrics, collection
        self.positions = PositionEmbedding(config.d_model)
        self.token_in = nn.Linear(config.token_size, config.d_model)
        self.encoder = Transformer(config, config.encoder_blocks)
        self.to_latent = nn.Linear(config.d_model, config.latent_dim)
        self.latent_in = nn.Linear(config.latent_dim, config.d_model)
        self.decoder = Transformer(config, config.decoder_blocks)
        self.token_out = nn.Linear(config.d_model, config.token_size)
        self.projection = nn.Sequential(
            nn.Linear(config.window * config.latent_dim, 4 * config.projection_dim),
            nn.GELU(),
            nn.Linear(4 * config.projection_dim, config.projection_dim),
        )

    @property
    def tokenizer(self) -> TokenizerConfig:
        """The token language this autoencoder reads: ``geosane.tokenize(state_dict, autoencoder.tokenizer)``."""
        return self.config.tokenizer

    # -------------------------------------------------------------------------- windows

    def encode_windows(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Standardized ``[B, W, T]`` tokens and ``[B, W, 3]`` positions -> ``[B, W, latent_dim]``."""
        hidden = self.token_in(tokens) + self.positions(positions).to(tokens.dtype)
        return self.to_latent(self.encoder(hidden))

    def decode_windows(self, latents: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``[B, W, latent_dim]`` latents and their positions -> standardized ``[B, W, T]`` tokens."""
        hidden = self.latent_in(latents) + self.positions(positions).to(latents.dtype)
        return self.token_out(self.decoder(hidden))

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """One vector per window for the contrastive loss (windows must be ``config.window`` long)."""
        return self.projection(latents.flatten(1))

    def forward(self, values: torch.Tensor, positions: torch.Tensor, part: str = "both") -> Any:
        """Windows through the network. ``part="both"`` (training): standardized tokens -> latents, reconstruction
        and projection. ``part="encoder"`` / ``"decoder"``: one half, as :meth:`encode` and :meth:`decode` use it.

        Whole-model passes go through ``forward`` so that a DeepSpeed engine around this module can run them: under
        ZeRO-3 only the engine's forward gathers the partitioned parameters a module reads without calling the
        module that owns them (attention reads its ``out_proj`` weights directly).
        """
        if part == "encoder":
            return self.encode_windows(values, positions)
        if part == "decoder":
            return self.decode_windows(values, positions)
        latents = self.encode_windows(values, positions)
        return latents, self.decode_windows(latents, positions), self.project(latents)

    # -------------------------------------------------------------------------- whole models

    @torch.no_grad()
    def encode(self, tokens: Tokens, network: Callable[..., Any] | None = None) -> Latents:
        """A whole model's tokens (any length) -> one latent per token, in halo windows.

        ``network`` runs the window passes: this module (the default) or the DeepSpeed engine around it in training.
        """
        self.check_layout(tokens.layout)
        scale = Scale.of(tokens.tokens, tokens.valid)
        run = network or self

        def step(windows: dict[str, torch.Tensor]) -> torch.Tensor:
            values = scale.apply(windows["tokens"]) * prefix_mask(windows["valid"], self.config.token_size)
            return run(*self.on_device(values, windows["positions"]), part="encoder")

        values = self.in_halo_windows(tokens.tokens, tokens.positions, tokens.valid, step, self.config.latent_dim)
        return Latents(values, tokens.positions, scale)

    @torch.no_grad()
    def decode(self, latents: Latents, network: Callable[..., Any] | None = None) -> torch.Tensor:
        """Latents -> ``[N, token_size]`` token values at the scale of the encoded model, in halo windows.

        ``geosane.detokenize(decoded, layout, kept)`` turns them into a state dict (padding values are ignored).
        """
        run = network or self

        def step(windows: dict[str, torch.Tensor]) -> torch.Tensor:
            return run(*self.on_device(windows["tokens"], windows["positions"]), part="decoder")

        unused = torch.zeros(1, dtype=torch.int64).expand(len(latents.values))  # latents have no padding to mask
        decoded = self.in_halo_windows(latents.values, latents.positions, unused, step, self.config.token_size)
        return decoded.mul_(latents.scale.std.cpu()).add_(latents.scale.mean.cpu())

    def reconstruction_error(self, tokens: Tokens, network: Callable[..., Any] | None = None) -> float:
        """:func:`normalized_error` of ``decode(encode(tokens))``: the held-out metric training reports."""
        rebuilt = self.decode(self.encode(tokens, network), network)
        return normalized_error(rebuilt, tokens.tokens, tokens.valid)

    def check_collection(self, collection: Any) -> None:
        """Refuse a collection whose tokens this autoencoder does not read (another token size or mode)."""
        stored = collection.config()
        if stored and (stored.token_size, stored.mode) != (self.config.token_size, self.config.mode):
            raise GeoSANEError(
                f"the autoencoder reads tokens of size {self.config.token_size} ({self.config.mode}), the collection "
                f"{collection.url} holds tokens of size {stored.token_size} ({stored.mode}): use an autoencoder "
                "trained on this collection"
            )

    def check_layout(self, layout: Layout) -> None:
        if (layout.token_size, layout.mode) != (self.config.token_size, self.config.mode):
            raise GeoSANEError(
                f"tokens of size {layout.token_size} in {layout.mode} mode, but this autoencoder reads tokens of size "
                f"{self.config.token_size} in {self.config.mode} mode: tokenize with autoencoder.tokenizer"
            )

    def on_device(self, values: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window inputs where the network's parameters are, in their dtype (bf16 inside a bf16 engine)."""
        parameter = next(self.parameters())
        return values.to(parameter.device, parameter.dtype), positions.to(parameter.device)

    def in_halo_windows(
        self,
        values: torch.Tensor,
        positions: torch.Tensor,
        valid: torch.Tensor,
        step: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        width: int,
    ) -> torch.Tensor:
        """Run ``step`` over the halo windows of a ``[N, D]`` sequence, ``batch_tokens`` at a time, and keep each
        window's core outputs: ``[N, width]`` float32 on the CPU, written in place (no list of chunks to join)."""
        config = self.config
        core, halo = config.core_tokens, config.halo_tokens
        length = core + 2 * halo
        n = len(values)
        out = torch.empty(n, width)
        starts, cores = halo_windows(n, core, halo)
        arrays = values.detach().cpu().numpy(), positions.cpu().numpy(), valid.cpu().numpy()
        per_pass = max(1, config.batch_tokens // length)
        offsets = torch.arange(core)
        for first in range(0, len(starts), per_pass):
            start, kept = starts[first : first + per_pass], cores[first : first + per_pass]
            windows = {k: torch.from_numpy(v) for k, v in cut_windows(*arrays, start, length).items()}
            outputs = step(windows).float().cpu()
            rows = torch.from_numpy(kept)[:, None] + offsets  # the cores' token indices ...
            columns = torch.from_numpy(kept - start)[:, None] + offsets  # ... and where they sit in their windows
            inside = rows < n
            window = torch.arange(len(start))[:, None].expand_as(rows)
            out[rows[inside]] = outputs[window[inside], columns[inside]]
        return out

    # -------------------------------------------------------------------------- storage

    def save(self, url: str) -> None:
        """``url/model.safetensors`` (fp32) and ``url/config.json`` (settings, ``info``, versions), the config last:
        a folder with a config holds a complete autoencoder."""
        from safetensors.torch import save

        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        storage.write_bytes(storage.join(url, WEIGHTS), save(state))
        record = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "autoencoder": asdict(self.config),
            "info": self.info,
            "software": software_versions(),
        }
        storage.write_bytes(storage.join(url, CONFIG), json.dumps(record, indent=1).encode())

    @classmethod
    def load(cls, url: str, step: int | None = None) -> Autoencoder:
        """A saved autoencoder: ``url`` is a folder written by :meth:`save` or a training run (its ``final/``);
        with ``step``, the run's checkpoint of that step, its ZeRO shards gathered into full fp32 weights."""
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        url = url.rstrip("/")
        if step is not None:
            from geosane import checkpoints

            state, record = checkpoints.gather_weights(url, step)
            if "autoencoder" not in record:
                raise GeoSANEError(
                    f"{url}: the checkpoint of step {step} was saved by an older GeoSANE, without its "
                    "autoencoder settings; load the run's final/ instead"
                )
            config = AutoencoderConfig.from_dict(record["autoencoder"], f"{url} checkpoint of step {step}")
            info = {"run": url, "step": step, "checkpoint": record}
        else:
            folder = url if storage.exists(storage.join(url, CONFIG)) else storage.join(url, "final")
            source = storage.join(folder, CONFIG)
            if not storage.exists(source):
                raise GeoSANEError(
                    f"no autoencoder at {url}: neither {CONFIG} nor final/{CONFIG} (an unfinished run "
                    "has none yet; load a checkpoint with step=N)"
                )
            try:
                record = json.loads(storage.read_bytes(source))
            except json.JSONDecodeError as exc:
                raise GeoSANEError(f"{source}: not valid JSON ({exc})") from exc
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise GeoSANEError(f"{source}: not a GeoSANE autoencoder (format {FORMAT!r} expected)")
            if record.get("version", 0) > FORMAT_VERSION:
                raise GeoSANEError(f"{source}: autoencoder format {record['version']} is newer than this GeoSANE reads")
            config = AutoencoderConfig.from_dict(record["autoencoder"], source)
            info = record.get("info", {})
            try:
                state = load_safetensors(storage.read_bytes(storage.join(folder, WEIGHTS)))
            except SafetensorError as exc:
                raise GeoSANEError(f"{storage.join(folder, WEIGHTS)}: corrupt weights ({exc})") from exc
        with torch.device("meta"):  # no random initialization to throw away: the weights are assigned as read
            model = cls(config, info)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
            raise GeoSANEError(f"{url}: weights do not fit the autoencoder settings ({detail})") from exc
        return model.eval()


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
