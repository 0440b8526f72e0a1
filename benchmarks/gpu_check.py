"""GPU check: the `geosane` autoencoder (0.9B parameters) trained by DeepSpeed ZeRO-2 and ZeRO-3 with bf16 on one
CUDA device, against a plain PyTorch bf16-autocast loop at the same batch, on tokens of real architectures.

    python benchmarks/gpu_check.py [--batch 8] [--steps 10] [--out results/gpu_check.json]

Run it on a machine with a GPU (the project's tests never need one). Each case runs in its own process so that
peak memory is the case's own. Tokens come from timm architectures (random initialization, nothing downloaded)
tokenized by `geosane.tokenizer`; windows and views by `geosane.views`; the engine by `geosane.train` and the loss
by `geosane.autoencoder`, exactly what a training run uses. Prints one line per case and saves everything to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ARCHITECTURES = [
    "resnet50",
    "vit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
    "mobilenetv3_large_100",
    "convnext_tiny",
    "efficientnet_b0",
]
CASES = ["plain", "zero2", "zero3"]


def real_token_batches(window: int, batch: int, count: int, seed: int = 0) -> list[dict]:
    """``count`` batches of ``batch`` random windows (two noisy views each) from the tokens of real architectures."""
    import numpy as np
    import timm
    import torch

    import geosane
    from geosane.views import ViewConfig, cut_windows, make_views, window_starts

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    views = ViewConfig(window=window)
    models = []
    for name in ARCHITECTURES:
        tokens = geosane.tokenize(timm.create_model(name, pretrained=False).state_dict(), geosane.TokenizerConfig())
        scale = geosane.Scale.of(tokens.tokens, tokens.valid)
        models.append((tokens.tokens.numpy(), tokens.positions.numpy(), tokens.valid.numpy(), scale))
    batches = []
    for _ in range(count):
        parts = []
        for _ in range(batch):
            values, positions, valid, scale = models[rng.integers(len(models))]
            part = cut_windows(values, positions, valid, window_starts(len(values), views, rng)[:1], window)
            parts.append({**part, "mean": scale.mean.view(1).numpy(), "std": scale.std.view(1).numpy()})
        joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        batches.append({k: torch.from_numpy(v) for k, v in make_views(joined, views, rng).items()})
    return batches


def run_case(case: str, model_name: str, batch: int, steps: int, warmup: int) -> dict:
    """One case in this process: time ``steps`` optimizer steps after ``warmup``; peak memory; the losses."""
    import torch

    import geosane
    from geosane.autoencoder import num_parameters
    from geosane.autoencoder.losses import LossConfig, training_losses
    from geosane.train import build_engine

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    model_config = geosane.AutoencoderConfig.named(model_name, token_size=230)
    data = real_token_batches(model_config.window, batch, warmup + steps)
    loss_config = LossConfig()
    cuda = torch.cuda.is_available()  # without one, a smoke test of this script on the CPU (--model tiny)
    device = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    built = time.perf_counter()
    if case == "plain":
        torch.manual_seed(0)
        model = geosane.Autoencoder(model_config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
        parameters = num_parameters(model)

        def step(b: dict) -> float:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = training_losses(model, b, loss_config, bf16=False)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            return float(loss)
    else:
        config = geosane.TrainConfig(
            collection="-",
            model=model_name,
            zero_stage=int(case[-1]),
            bf16=True,
            batch_size=batch,
            steps=warmup + steps,
            lr=1e-4,
            use_gpu=cuda,
        )
        engine, _ = build_engine(config, model_config)
        parameters = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())

        def step(b: dict) -> float:
            loss = training_losses(engine, b, loss_config, bf16=True)["loss"]
            engine.backward(loss)
            engine.step()
            return float(loss)

    build_seconds = time.perf_counter() - built

    losses, began = [], None
    for i, b in enumerate(data):
        if i == warmup:
            sync()
            began = time.perf_counter()
        losses.append(step({k: v.to(device, non_blocking=True) for k, v in b.items()}))
    sync()
    seconds = (time.perf_counter() - began) / steps
    tokens = int(sum(int(b["valid"].gt(0).sum()) for b in data[warmup:])) / steps
    window_tokens = batch * model_config.window * 2  # both views go through encoder and decoder
    return {
        "case": case,
        "parameters": parameters,
        "batch_windows": batch,
        "seconds_per_step": round(seconds, 4),
        "real_tokens_per_s": round(tokens / seconds),
        "model_tflops": round(6 * parameters * window_tokens / seconds / 1e12, 1),  # 6·N·tokens, both views
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "build_seconds": round(build_seconds, 1),
        "losses": [round(x, 4) for x in losses],
    }


def deepspeed_estimates(parameters: int, largest_layer: int) -> dict:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, zero2_gpu = estimate_zero2_model_states_mem_needs(parameters, 1, 1, cpu_offload=False)
    _, zero3_gpu, _ = estimate_zero3_model_states_mem_needs(
        parameters, largest_layer, 1, 1, cpu_offload=False, cpu_offload_params=False
    )
    return {"zero2": round(zero2_gpu / 2**30, 2), "zero3": round(zero3_gpu / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="geosane", help="autoencoder size (tiny for a CPU smoke test)")
    parser.add_argument("--batch", type=int, default=8, help="windows per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--case", choices=CASES, help="run one case in this process and print its JSON")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_check.json"))
    args = parser.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.model, args.batch, args.steps, args.warmup)), flush=True)
        return

    import torch

    results = []
    for case in CASES:
        command = [
            sys.executable,
            __file__,
            "--case",
            case,
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            result = {"case": case, "error": done.stderr[-3000:]}
        else:
            result = json.loads(lines[-1][len("RESULT ") :])
        result["wall_seconds"] = round(time.perf_counter() - began, 1)
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "losses"}), flush=True)

    import geosane

    with torch.device("meta"):
        model = geosane.Autoencoder(geosane.AutoencoderConfig.named(args.model, token_size=230))
    parameters = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    timed = {r["case"]: r for r in results if "seconds_per_step" in r}
    summary = {
        "deepspeed_estimate_gib": deepspeed_estimates(parameters, largest),
        "overhead_over_plain": {
            c: round(timed[c]["seconds_per_step"] / timed["plain"]["seconds_per_step"], 3)
            for c in ("zero2", "zero3")
            if c in timed and "plain" in timed
        },
    }
    print(json.dumps(summary), flush=True)
    import deepspeed

    out = {
        "benchmark": "gpu_check",
        "config": vars(args) | {"token_size": 230, "architectures": ARCHITECTURES},
        "results": results,
        "summary": summary,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
