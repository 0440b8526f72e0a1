"""Time and peak memory of generating weights for large prompt architectures.

    .venv/bin/python benchmarks/generate.py [--prompts vit_small_patch16_224 swin_base_patch4_window7_224 ...]
                                            [--sizes tiny small] [--candidates 2]

For each prompt and autoencoder size, ``geosane.generate`` runs end to end (build the prompt with timm, tokenize,
encode in halo windows, sample, decode ``--candidates`` candidates, detokenize, load strictly into the task model)
without target data, and the wall time and the extra peak resident memory are measured. The autoencoders are
random initializations of the named sizes (saved to a temporary folder and loaded as a user would): time and
memory do not depend on their weights. Results are printed and saved to benchmarks/results/generate.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import timm
import torch

import geosane

from measure import measure, save

#: the token size each named size is trained for: the collection's (230 as GeoSANE; 32 for ``small``)
TOKEN_SIZES = {"tiny": 230, "small": 32, "base": 230, "geosane": 230}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--prompts",
        nargs="+",
        default=["vit_small_patch16_224", "swin_base_patch4_window7_224", "vit_large_patch16_224"],
    )
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate.json"))
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            torch.manual_seed(0)
            config = geosane.AutoencoderConfig.named(size, token_size=TOKEN_SIZES[size])
            url = f"{folder}/{size}"
            geosane.Autoencoder(config).save(url)
            autoencoder = geosane.Autoencoder.load(url)
            parameters = sum(p.numel() for p in autoencoder.parameters())
            for prompt in args.prompts:
                weights = sum(p.numel() for p in timm.create_model(prompt).parameters())
                seconds, peak, generated = measure(
                    lambda a=autoencoder, p=prompt: geosane.generate(
                        a, f"timm:{p}", candidates=args.candidates, top_k=1, seed=0
                    )
                )
                model = timm.create_model(prompt)
                model.load_state_dict(generated[0].state_dict, strict=True)
                run = {
                    "autoencoder": size,
                    "autoencoder_parameters": parameters,
                    "token_size": config.token_size,
                    "prompt": prompt,
                    "prompt_parameters": weights,
                    "tokens": -(-weights // config.token_size),
                    "candidates": args.candidates,
                    "seconds": round(seconds, 1),
                    "peak_extra_bytes": peak,
                    "peak_over_model_bytes": round(peak / (weights * 4), 2),
                }
                runs.append(run)
                print(
                    f"{size:6s} ({parameters / 1e6:.2f}M, tokens of {config.token_size}) {prompt:32s} "
                    f"{weights / 1e6:6.1f}M parameters: {seconds:6.1f} s, peak +{peak / 1e9:.2f} GB "
                    f"({run['peak_over_model_bytes']}x the model's bytes)",
                    flush=True,
                )
                del generated, model
                # saved after every run: the largest prompts with the wider autoencoder take the longest
                save({"benchmark": "generate", "threads": torch.get_num_threads(), "runs": runs}, args.out)


if __name__ == "__main__":
    main()
