"""Time and peak memory of generating weights for large prompt architectures.

    .venv/bin/python benchmarks/generate.py [--prompts vit_small_patch16_224 swin_base_patch4_window7_224 ...]
                                            [--sizes tiny small geosane:small] [--candidates 1]

For each prompt and autoencoder, ``geosane.generate`` runs end to end (build the prompt with timm, encode it in halo
windows straight from its weights, draw, decode straight into the task model, load it strictly) without target
data, and the wall time and the extra peak resident memory are measured. ``tiny`` and ``small`` are random
initializations of those sizes (saved to a temporary folder and loaded as a user would: time and memory do not
depend on their weights); ``geosane:small`` is the shipped autoencoder. Results are printed and saved to
benchmarks/results/generate.json; the runs of an earlier file made before generation streamed (no ``streamed``
key) are kept in it as ``before``, for comparison on the same machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import timm
import torch

import geosane

from measure import measure, save

#: the token size each named size is trained for: the collection's (230 as GeoSANE; 32 for ``small``)
TOKEN_SIZES = {"tiny": 230, "small": 32, "base": 230, "geosane": 230}


def one_run(size: str, prompt: str, candidates: int, folder: str) -> dict:
    """One generation, measured in this process (a fresh one: memory the allocator kept from an earlier run would
    hide part of the next run's peak)."""
    if size.startswith("geosane:"):
        autoencoder = geosane.Autoencoder.load(size)
    else:
        torch.manual_seed(0)
        url = f"{folder}/{size}"
        geosane.Autoencoder(geosane.AutoencoderConfig.named(size, token_size=TOKEN_SIZES[size])).save(url)
        autoencoder = geosane.Autoencoder.load(url)
    config = autoencoder.config
    weights = sum(p.numel() for p in timm.create_model(prompt).parameters())
    seconds, peak, generated = measure(
        lambda: geosane.generate(autoencoder, f"timm:{prompt}", candidates=candidates, top_k=1, seed=0)
    )
    timm.create_model(prompt).load_state_dict(generated[0].state_dict, strict=True)
    tokens = -(-weights // config.token_size)
    return {
        "autoencoder": size,
        "autoencoder_parameters": sum(p.numel() for p in autoencoder.parameters()),
        "token_size": config.token_size,
        "prompt": prompt,
        "prompt_parameters": weights,
        "tokens": tokens,
        "candidates": candidates,
        "seconds": round(seconds, 1),
        "microseconds_per_token": round(seconds * 1e6 / tokens, 1),
        "peak_extra_bytes": peak,
        "peak_over_model_bytes": round(peak / (weights * 4), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--prompts",
        nargs="+",
        default=["vit_small_patch16_224", "swin_base_patch4_window7_224", "vit_large_patch16_224"],
    )
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "geosane:small"])
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate.json"))
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "PROMPT"), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(one_run(*args.one, args.candidates, folder)))
        return

    runs: list[dict] = []
    earlier = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    before = earlier.get("before") or ([] if earlier.get("streamed") else earlier.get("runs", []))
    for size in args.sizes:
        for prompt in args.prompts:
            child = [sys.executable, __file__, "--one", size, prompt, "--candidates", str(args.candidates)]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            run = json.loads(done.stdout.strip().splitlines()[-1])
            runs.append(run)
            print(
                f"{size:14s} (tokens of {run['token_size']}) {prompt:32s} {run['prompt_parameters'] / 1e6:6.1f}M "
                f"parameters: {run['seconds']:6.1f} s, {run['microseconds_per_token']} us/token, peak "
                f"+{run['peak_extra_bytes'] / 1e9:.2f} GB ({run['peak_over_model_bytes']}x the model's bytes)",
                flush=True,
            )
            # saved after every run: the largest prompts with the wider autoencoder take the longest
            result = {"benchmark": "generate", "streamed": True, "threads": torch.get_num_threads(), "runs": runs}
            save({**result, "before": before}, args.out)


if __name__ == "__main__":
    main()
