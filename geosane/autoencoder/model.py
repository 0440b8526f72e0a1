"""The weight autoencoder network, and whole models in and out of its latent space.

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

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from geosane import storage
from geosane.autoencoder import registry
from geosane.autoencoder.config import AutoencoderConfig
from geosane.autoencoder.layers import PositionEmbedding, Transformer
from geosane.errors import GeoSANEError
from geosane.scale import Scale
from geosane.tokenizer import ROWS_PER_PASS, Layout, TokenizerConfig, Tokens, prefix_mask, token_positions
from geosane.version import software_versions
from geosane.views import cut_windows, halo_windows

if TYPE_CHECKING:
    from geosane.streaming import TokenReader

__all__ = [
    "Autoencoder",
    "Latents",
    "normalized_error",
    "num_parameters",
]

FORMAT = "geosane.autoencoder"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


# ------------------------------------------------------------------------------ errors


def normalized_error(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean squared error over the real values, in the target's standardized units (:class:`Scale`): how far a
    reconstruction is from a model relative to the spread of the model's own weights.

    Args:
        prediction: ``[N, T]`` rebuilt token values.
        target: ``[N, T]`` the original values.
        valid: real values per token.

    Returns:
        The error (0: identical; about 2: unrelated weights of the same spread).
    """
    scale = Scale.of(target, valid)
    size = target.shape[-1]
    prediction, target, valid = prediction.reshape(-1, size), target.reshape(-1, size), valid.reshape(-1)
    total = 0.0
    for first in range(0, len(target), ROWS_PER_PASS):
        rows = slice(first, first + ROWS_PER_PASS)
        error = (prediction[rows].double() - target[rows].double()) / scale.std.double()
        total += float(error.square()[prefix_mask(valid[rows], size)].sum())
    return total / max(int(valid.sum()), 1)


@dataclass
class Latents:
    """A model in the latent space: one vector per token, the tokens' positions, and the scale decoding restores.

    Generation decodes other values at the same positions: ``dataclasses.replace(latents, values=sampled)``.
    """

    values: torch.Tensor  # [N, latent_dim] float32
    positions: torch.Tensor | Layout  # [N, 3] int64, or the layout they follow (24 bytes a token not held)
    scale: Scale

    @property
    def num_tokens(self) -> int:
        """Tokens of the whole model."""
        return len(self.values)

    def rows(self, first: int, last: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents ``first..last-1``, their positions, and zero counts (latents have no padding to mask).

        Args:
            first: the first token.
            last: one past the last token.

        Returns:
            Values, positions and counts, read as :meth:`Autoencoder.decode_rows` reads any latents.
        """
        positions = self.positions
        positions = token_positions(positions, first, last) if isinstance(positions, Layout) else positions[first:last]
        return self.values[first:last], positions, torch.zeros(last - first, dtype=torch.int64)


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
        """Standardized ``[B, W, T]`` tokens and ``[B, W, 3]`` positions -> ``[B, W, latent_dim]``.

        Args:
            tokens: standardized ``[B, W, T]`` tokens.
            positions: their ``[B, W, 3]`` positions.

        Returns:
            ``[B, W, latent_dim]`` latents.
        """
        hidden = self.token_in(tokens) + self.positions(positions).to(tokens.dtype)
        return self.to_latent(self.encoder(hidden))

    def decode_windows(self, latents: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``[B, W, latent_dim]`` latents and their positions -> standardized ``[B, W, T]`` tokens.

        Args:
            latents: ``[B, W, latent_dim]`` latents.
            positions: their ``[B, W, 3]`` positions.

        Returns:
            Standardized ``[B, W, T]`` tokens.
        """
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

        Args:
            values: standardized tokens (or latents, for the decoder).
            positions: their positions.
            part: ``both``, ``encoder`` or ``decoder``.

        Returns:
            Latents, reconstruction and projection (``both``); latents or tokens otherwise.
        """
        if part == "encoder":
            return self.encode_windows(values, positions)
        if part == "decoder":
            return self.decode_windows(values, positions)
        latents = self.encode_windows(values, positions)
        return latents, self.decode_windows(latents, positions), self.project(latents)

    # -------------------------------------------------------------------------- whole models

    @torch.no_grad()
    def encode(self, tokens: Tokens | TokenReader, network: Callable[..., Any] | None = None) -> Latents:
        """A whole model's tokens (any length) -> one latent per token, in halo windows.

        ``tokens`` is a tokenized model, or a :class:`~geosane.streaming.TokenReader` that builds the rows each group
        of windows needs from the state dict (no whole copy of the tokens; the same latents to the bit).

        Args:
            tokens: a whole model, tokenized with :attr:`tokenizer`, or read from its state dict.
            network: what runs the window passes: this module (default) or the DeepSpeed engine around it.

        Returns:
            One latent per token, with the positions and the scale that decoding restores.

        Raises:
            GeoSANEError: tokens of another size or mode than this autoencoder's.
        """
        self.check_layout(tokens.layout)
        n = tokens.num_tokens
        scale = Scale.of_rows(lambda first, last: tokens.rows(first, last)[::2], n)
        run = network or self

        def step(windows: dict[str, torch.Tensor]) -> torch.Tensor:
            values = scale.apply(windows["tokens"]) * prefix_mask(windows["valid"], self.config.token_size)
            return run(*self.on_device(values, windows["positions"]), part="encoder")

        values = torch.empty(n, self.config.latent_dim)
        self.in_halo_windows(tokens.rows, n, step, lambda first, block: values[first : first + len(block)].copy_(block))
        return Latents(values, tokens.positions if isinstance(tokens, Tokens) else tokens.layout, scale)

    @torch.no_grad()
    def decode(self, latents: Latents, network: Callable[..., Any] | None = None) -> torch.Tensor:
        """Latents -> ``[N, token_size]`` token values at the scale of the encoded model, in halo windows.

        ``geosane.detokenize(decoded, layout, kept)`` turns them into a state dict (padding values are ignored);
        :meth:`decode_rows` hands them out a group of windows at a time instead.

        Args:
            latents: a whole model in the latent space (from :meth:`encode`, or sampled around it).
            network: what runs the window passes (default: this module).

        Returns:
            ``[N, token_size]`` token values.
        """
        out = torch.empty(latents.num_tokens, self.config.token_size)
        self.decode_rows(latents, lambda first, block: out[first : first + len(block)].copy_(block), network)
        return out

    @torch.no_grad()
    def decode_rows(
        self,
        latents: Any,
        write: Callable[[int, torch.Tensor], Any],
        network: Callable[..., Any] | None = None,
    ) -> None:
        """Decode a group of windows at a time and hand each group's rows, in the model's units and in order, to
        ``write(first_row, values)`` (a :class:`~geosane.streaming.TokenWriter` puts them straight into a model).

        Args:
            latents: :class:`Latents`, or anything with ``num_tokens``, ``scale`` and ``rows(first, last)`` (latents
                drawn around an anchor a group at a time, ``geosane.generation.sampling``).
            write: takes ``(first_row, [k, token_size] values)``.
            network: what runs the window passes (default: this module).
        """
        run = network or self
        std, mean = latents.scale.std.cpu(), latents.scale.mean.cpu()

        def step(windows: dict[str, torch.Tensor]) -> torch.Tensor:
            return run(*self.on_device(windows["tokens"], windows["positions"]), part="decoder")

        self.in_halo_windows(
            latents.rows, latents.num_tokens, step, lambda first, block: write(first, block.mul_(std).add_(mean))
        )

    def reconstruction_error(self, tokens: Tokens, network: Callable[..., Any] | None = None) -> float:
        """:func:`normalized_error` of ``decode(encode(tokens))``: the held-out metric training reports.

        Args:
            tokens: a whole model.
            network: what runs the window passes (default: this module).

        Returns:
            The normalized error.
        """
        rebuilt = self.decode(self.encode(tokens, network), network)
        return normalized_error(rebuilt, tokens.tokens, tokens.valid)

    @property
    def collection(self) -> str | None:
        """The collection it learned from, as its run recorded it (a shipped autoencoder's is not shipped with it)."""
        return self.info.get("train", {}).get("collection") or self.info.get("collection")

    @property
    def anchors(self) -> str | None:
        """Where query anchors come from unless a generation names a collection: the anchors a shipped autoencoder
        ships with, else the collection it learned from."""
        return self.info.get("anchors") or self.collection

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
        """Refuse tokens of another size or mode than this autoencoder reads, naming both."""
        if (layout.token_size, layout.mode) != (self.config.token_size, self.config.mode):
            raise GeoSANEError(
                f"tokens of size {layout.token_size} in {layout.mode} mode, but this autoencoder reads tokens of size "
                f"{self.config.token_size} in {self.config.mode} mode: tokenize with autoencoder.tokenizer"
            )

    def on_device(self, values: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window inputs where the network's parameters are, in their dtype (bf16 inside a bf16 engine).

        Args:
            values: window values.
            positions: window positions.

        Returns:
            Both, moved.
        """
        parameter = next(self.parameters())
        return values.to(parameter.device, parameter.dtype), positions.to(parameter.device)

    def in_halo_windows(
        self,
        read: Callable[[int, int], tuple[torch.Tensor, ...]],
        num_tokens: int,
        step: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        write: Callable[[int, torch.Tensor], Any],
    ) -> None:
        """Run ``step`` over the halo windows of a sequence, ``batch_tokens`` at a time, and hand each group's core
        outputs to ``write`` in order: only one group's inputs and outputs are alive at once.

        Args:
            read: ``read(first, last)`` gives rows ``first..last-1``: values, positions and real values per token.
            num_tokens: the sequence's length.
            step: one pass of windows ``{"tokens", "positions", "valid"}`` to outputs ``[B, W, width]``.
            write: takes ``(first_row, [k, width] float32 outputs on the CPU)``, rows ``first_row..first_row+k-1``.
        """
        config = self.config
        core, halo = config.core_tokens, config.halo_tokens
        length = core + 2 * halo
        starts, cores = halo_windows(num_tokens, core, halo)
        per_pass = max(1, config.batch_tokens // length)
        offsets = torch.arange(core)
        for first in range(0, len(starts), per_pass):
            start, kept = starts[first : first + per_pass], cores[first : first + per_pass]
            low, high = int(start[0]), min(int(start[-1]) + length, num_tokens)  # the rows these windows cover
            values, positions, valid = (part.detach().cpu().numpy() for part in read(low, high))
            windows = {
                k: torch.from_numpy(v) for k, v in cut_windows(values, positions, valid, start - low, length).items()
            }
            outputs = step(windows).float().cpu()
            rows = torch.from_numpy(kept)[:, None] + offsets  # the cores' token indices ...
            columns = torch.from_numpy(kept - start)[:, None] + offsets  # ... and where they sit in their windows
            inside = rows < num_tokens
            window = torch.arange(len(start))[:, None].expand_as(rows)
            write(int(kept[0]), outputs[window[inside], columns[inside]])  # the cores tile: consecutive rows

    # -------------------------------------------------------------------------- storage

    def save(self, url: str) -> None:
        """``url/model.safetensors`` (fp32) and ``url/config.json`` (settings, ``info``, versions), the config last:
        a folder with a config holds a complete autoencoder."""
        from safetensors.torch import save

        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        weights = save(state)
        storage.write_bytes(storage.join(url, WEIGHTS), weights)
        record = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "sha256": {WEIGHTS: hashlib.sha256(weights).hexdigest()},  # checked by every load
            "autoencoder": asdict(self.config),
            "info": self.info,
            "software": software_versions(),
        }
        storage.write_bytes(storage.join(url, CONFIG), json.dumps(record, indent=1).encode())

    @classmethod
    def load(cls, url: str, step: int | None = None) -> Autoencoder:
        """A saved autoencoder: ``url`` is a shipped one (``geosane:small``, see :mod:`geosane.autoencoder.registry`),
        a folder written by :meth:`save` or a training run (its ``final/``); with ``step``, the run's checkpoint of
        that step, its ZeRO shards gathered into full fp32 weights.

        Args:
            url: ``geosane:NAME``, a folder written by :meth:`save`, or a training run.
            step: a kept checkpoint's step instead of ``final/``.

        Returns:
            The autoencoder in eval mode, with ``info`` (training settings, step, metrics, collection).

        Raises:
            GeoSANEError: nothing there, not an autoencoder, a newer format, or weights that do not fit the settings.
        """
        url = url.rstrip("/")
        if registry.is_shipped(url):
            if step is not None:
                raise GeoSANEError(f"{url} is a shipped autoencoder: it has no training checkpoints (step={step})")
            path = registry.folder(url)  # hashes checked against its card
            model = cls.load(str(path))
            model.info = {**model.info, "url": url, "card": str(path / registry.CARD)}
            model.info["anchors"] = str(path / registry.ANCHORS)  # anchors ship; the collection it learned does not
            return model
        if step is None and registry.is_shipped_folder(url):  # a shipped one by path: the same checks as by name
            registry.check_files(Path(url), url)
        if step is not None:
            from geosane.autoencoder import checkpoints

            state, record = checkpoints.gather_weights(url, step)
            if "autoencoder" not in record:
                raise GeoSANEError(
                    f"{url}: the checkpoint of step {step} was saved by an older GeoSANE, without its "
                    "autoencoder settings; load the run's final/ instead"
                )
            config = AutoencoderConfig.from_dict(record["autoencoder"], f"{url} checkpoint of step {step}")
            info = {"run": url, "step": step, "checkpoint": record}
        else:
            config, info, state = read_saved(url)
        with torch.device("meta"):  # no random initialization to throw away: the weights are assigned as read
            model = cls(config, info)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
            raise GeoSANEError(f"{url}: weights do not fit the autoencoder settings ({detail})") from exc
        return model.eval()


def read_saved(url: str) -> tuple[AutoencoderConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """The settings, ``info`` and weights of a folder :meth:`Autoencoder.save` wrote (``url`` or ``url/final``), the
    weights checked against the SHA-256 its config records.

    Args:
        url: the folder, or a training run.

    Returns:
        Settings, info and state dict.

    Raises:
        GeoSANEError: nothing there, not an autoencoder, a newer format, or weights changed since they were saved.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

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
    weights_url = storage.join(folder, WEIGHTS)
    weights = storage.read_bytes(weights_url)
    expected = record.get("sha256", {}).get(WEIGHTS)  # autoencoders saved before hashes have none
    found = hashlib.sha256(weights).hexdigest()
    if expected and found != expected:
        raise GeoSANEError(
            f"{weights_url}: SHA-256 {found[:16]}... differs from {expected[:16]}... recorded in {CONFIG}: "
            "the weights were changed or damaged since they were saved"
        )
    try:
        state = load_safetensors(weights)
    except SafetensorError as exc:
        raise GeoSANEError(f"{weights_url}: corrupt weights ({exc})") from exc
    return config, record.get("info", {}), state


def num_parameters(model: nn.Module) -> int:
    """Parameters of a module, all of them."""
    return sum(p.numel() for p in model.parameters())
