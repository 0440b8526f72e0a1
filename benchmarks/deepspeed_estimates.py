"""DeepSpeed's estimates of model-state memory for the autoencoder sizes on 8, 16 and 64 GPUs (8 per node).

    .venv/bin/python benchmarks/deepspeed_estimates.py

For each named size (``geosane.autoencoder.SIZES``; tokens of 230 values) the autoencoder is built on the meta
device (no memory), its parameters and largest layer counted, and DeepSpeed's own estimators asked what ZeRO-2 and
ZeRO-3 need per GPU and per node's CPU memory, with and without offload. These are the figures behind the scaling
table in ``cluster/README.md``; the measured ones are ``train-memory.json`` (CPU) and ``gpu_check.json`` (H200).
"""

from __future__ import annotations

import argparse

import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from geosane.autoencoder import SIZES, Autoencoder, AutoencoderConfig

from measure import save

GIB = 1024**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--out", default="benchmarks/results/deepspeed-estimates.json")
    args = parser.parse_args()
    rows = []
    for size in SIZES:
        config = AutoencoderConfig.named(size)
        with torch.device("meta"):
            model = Autoencoder(config, {})
        total = sum(p.numel() for p in model.parameters())
        largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
        for gpus in args.gpus:
            nodes, per_node = max(1, gpus // 8), min(gpus, 8)
            for offload in ("none", "cpu"):
                cpu2, gpu2 = estimate_zero2_model_states_mem_needs(
                    total, per_node, nodes, cpu_offload=offload == "cpu", additional_buffer_factor=1.5
                )
                cpu3, gpu3, _ = estimate_zero3_model_states_mem_needs(
                    total,
                    largest,
                    per_node,
                    nodes,
                    cpu_offload=offload == "cpu",
                    cpu_offload_params=offload == "cpu",
                    zero_init=True,
                    additional_buffer_factor=1.5,
                )
                row = {
                    "size": size,
                    "parameters": total,
                    "largest_layer": largest,
                    "gpus": gpus,
                    "nodes": nodes,
                    "offload": offload,
                    "zero2_gib_per_gpu": round(gpu2 / GIB, 2),
                    "zero2_gib_cpu_per_node": round(cpu2 / GIB, 2),
                    "zero3_gib_per_gpu": round(gpu3 / GIB, 2),
                    "zero3_gib_cpu_per_node": round(cpu3 / GIB, 2),
                }
                rows.append(row)
                print(
                    f"{size:8s} {total / 1e6:8.1f}M  {gpus:3d} GPUs  offload {offload:4s}  "
                    f"ZeRO-2 {row['zero2_gib_per_gpu']:6.2f} GiB/GPU {row['zero2_gib_cpu_per_node']:7.2f} GiB CPU  "
                    f"ZeRO-3 {row['zero3_gib_per_gpu']:6.2f} GiB/GPU {row['zero3_gib_cpu_per_node']:7.2f} GiB CPU"
                )
    save({"benchmark": "deepspeed-estimates", "config": vars(args), "results": rows}, args.out)


if __name__ == "__main__":
    main()
