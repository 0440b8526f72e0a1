"""Memory and time of encoding and decoding a whole large model through the autoencoder's halo windows.

    .venv/bin/python benchmarks/autoencoder.py [--model vit_large_patch16_224] [--size tiny] [--windows 32 128 512]

For each window (core = half the window, a quarter on each side as halo), ``Autoencoder.encode`` and ``.decode`` run
over the model's whole token sequence, and the extra peak resident memory of each phase is measured (the kernel's
high-water mark, reset before the phase) next to the model's own bytes. The aim: within 1.5x the model's bytes,
whatever the window, because windows are cut and run ``batch_tokens`` at a time and each output is written in place.
The decoded tokens then become a state dict that loads into the timm model with ``strict=True``. The weights of the
autoencoder are a random initialization: memory and time do not depend on them. Results are printed and saved with
the config and versions to benchmarks/results/autoencoder.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch

import geosane

from measure import measure, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_large_patch16_224", help="timm architecture to encode")
    parser.add_argument("--size", default="tiny", help="autoencoder size (tiny, base, geosane)")
    parser.add_argument("--windows", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--token-size", type=int, default=230)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "autoencoder.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    network = timm.create_model(args.model, pretrained=False)
    state_dict = {k: v.detach() for k, v in network.state_dict().items()}
    model_bytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    tokens = geosane.tokenize(state_dict, geosane.TokenizerConfig(args.token_size))
    token_bytes = tokens.tokens.numel() * 4
    print(f"{args.model}: {model_bytes / 1e9:.2f} GB of weights, {len(tokens.tokens):,} tokens of {args.token_size}")

    runs = []
    for window in args.windows:
        config = geosane.AutoencoderConfig.named(args.size, token_size=args.token_size, window=window)
        autoencoder = geosane.Autoencoder(config).eval()
        encode_s, encode_peak, latents = measure(lambda a=autoencoder: a.encode(tokens))
        decode_s, decode_peak, decoded = measure(lambda a=autoencoder, z=latents: a.decode(z))
        run = {
            "window": window,
            "core": config.core_tokens,
            "halo": config.halo_tokens,
            "batch_tokens": config.batch_tokens,
            "encode_seconds": round(encode_s, 1),
            "encode_peak_extra_bytes": encode_peak,
            "encode_peak_over_model_bytes": round(encode_peak / model_bytes, 3),
            "decode_seconds": round(decode_s, 1),
            "decode_peak_extra_bytes": decode_peak,
            "decode_peak_over_model_bytes": round(decode_peak / model_bytes, 3),
            "latent_bytes_over_model_bytes": round(latents.values.numel() * 4 / model_bytes, 3),
        }
        runs.append(run)
        print(
            f"window {window:>4} (core {run['core']}, halo {run['halo']}): "
            f"encode {encode_s:6.1f} s, peak +{encode_peak / 1e9:.2f} GB ({run['encode_peak_over_model_bytes']}x); "
            f"decode {decode_s:6.1f} s, peak +{decode_peak / 1e9:.2f} GB ({run['decode_peak_over_model_bytes']}x)",
            flush=True,
        )
        del latents, decoded

    # the whole path at this scale: decoded tokens -> a state dict the architecture loads strictly
    rebuilt = geosane.detokenize(autoencoder.decode(autoencoder.encode(tokens)), tokens.layout, tokens.kept)
    network.load_state_dict(rebuilt, strict=True)
    worst = max(max(r["encode_peak_over_model_bytes"], r["decode_peak_over_model_bytes"]) for r in runs)
    print(f"largest peak over model bytes: {worst} (aim <= 1.5); detokenized state dict loads with strict=True")

    result = {
        "benchmark": "autoencoder",
        "model": args.model,
        "model_bytes": model_bytes,
        "tokens": len(tokens.tokens),
        "token_bytes": token_bytes,
        "config": {"size": args.size, "token_size": args.token_size, "windows": args.windows},
        "runs": runs,
        "largest_peak_over_model_bytes": worst,
        "loads_strict": True,
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
