"""Tokenizer speed and memory on a large real architecture, against a plain clone() of every tensor.

    .venv/bin/python benchmarks/tokenizer.py [--model vit_large_patch16_224] [--mode dense] [--repeats 3]

Prints seconds, GB/s, and the extra peak resident memory of each phase (measured by resetting the kernel's
high-water mark before the phase), and saves them with the config and versions to benchmarks/results/.
Aims (issue 2): tokenize + detokenize within 3x of clone time; peak memory under 2.5x the model's bytes.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import timm
import torch

import geosane

from measure import measure, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_large_patch16_224")
    parser.add_argument("--mode", default="dense", choices=["dense", "per-channel"])
    parser.add_argument("--token-size", type=int, default=230)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tokenizer.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    state_dict = {k: v.detach() for k, v in timm.create_model(args.model, pretrained=False).state_dict().items()}
    model_bytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    params = sum(t.numel() for t in state_dict.values())
    config = geosane.TokenizerConfig(args.token_size, args.mode)
    print(f"{args.model}: {params / 1e6:.1f}M values, {model_bytes / 1e9:.2f} GB; {config}")

    phases: dict[str, dict[str, list[float]]] = {"clone": {}, "tokenize": {}, "detokenize": {}}
    for _ in range(args.repeats):
        t, mem, clone = measure(lambda: {k: v.clone() for k, v in state_dict.items()})
        del clone
        phases["clone"].setdefault("seconds", []).append(t)
        phases["clone"].setdefault("peak_bytes", []).append(mem)
        t, mem, tokens = measure(lambda: geosane.tokenize(state_dict, config))
        phases["tokenize"].setdefault("seconds", []).append(t)
        phases["tokenize"].setdefault("peak_bytes", []).append(mem)
        t, mem, rebuilt = measure(lambda made=tokens: geosane.detokenize(made.tokens, made.layout, made.kept))
        phases["detokenize"].setdefault("seconds", []).append(t)
        phases["detokenize"].setdefault("peak_bytes", []).append(mem)
        exact = all(
            torch.equal(
                rebuilt[k].view(torch.uint8) if rebuilt[k].numel() else rebuilt[k],
                v.view(torch.uint8) if v.numel() else v,
            )
            for k, v in state_dict.items()
        )
        assert exact and list(rebuilt) == list(state_dict), "round trip is not bit-exact"
        token_bytes = tokens.tokens.numel() * 4 + tokens.valid.numel() * 8 + tokens.positions.numel() * 8
        del tokens, rebuilt

    summary = {}
    for phase, values in phases.items():
        seconds = statistics.median(values["seconds"])  # allocation and page faults make single runs noisy
        peak = max(values["peak_bytes"])
        summary[phase] = {
            "seconds": round(seconds, 4),
            "seconds_each": [round(x, 4) for x in values["seconds"]],
            "GB_per_s": round(model_bytes / seconds / 1e9, 3),
            "peak_extra_bytes": peak,
            "peak_over_model_bytes": round(peak / model_bytes, 3),
        }
    clone = summary["clone"]["seconds"]
    round_trip = summary["tokenize"]["seconds"] + summary["detokenize"]["seconds"]
    summary["ratios"] = {
        "tokenize_over_clone": round(summary["tokenize"]["seconds"] / clone, 2),
        "detokenize_over_clone": round(summary["detokenize"]["seconds"] / clone, 2),
        "round_trip_over_clone": round(round_trip / clone, 2),
        "token_bytes_over_model_bytes": round(token_bytes / model_bytes, 3),
    }

    print(f"{'phase':<12}{'seconds':>9}{'GB/s':>8}{'peak extra':>12}{'x model':>9}")
    for phase in phases:
        s = summary[phase]
        print(
            f"{phase:<12}{s['seconds']:>9.3f}{s['GB_per_s']:>8.2f}"
            f"{s['peak_extra_bytes'] / 1e9:>10.2f}GB{s['peak_over_model_bytes']:>9.2f}"
        )
    for key, value in summary["ratios"].items():
        print(f"{key}: {value}")

    result = {
        "benchmark": "tokenize",
        "model": args.model,
        "values": params,
        "model_bytes": model_bytes,
        "config": {"token_size": args.token_size, "mode": args.mode, "repeats": args.repeats},
        "results": summary,
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
