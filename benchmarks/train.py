"""Training throughput and memory: Ray Train + DeepSpeed against plain PyTorch, Ray Data against pyarrow,
and the largest autoencoder each ZeRO stage can train on this machine.

    .venv/bin/python benchmarks/train.py [--collection URL] [--steps 200] [--memory]

1. Steady-state tokens/s of the Ray Train + DeepSpeed loop (2 workers, ZeRO-0 and ZeRO-2) against two
   single-process PyTorch loops (2 threads) at the same global batch (aim: overhead at most 1.2x): one cycles
   windows made before its clock starts (the model's compute alone), the other is a plain training script that
   reads the shards and makes fresh windows and views every pass, as the Ray loop does. Start-up (Ray, the
   workers, the first batch) is reported apart: it is paid once per run.
2. Ray Data input throughput (read_lance -> windows -> views) against reading the same models in one process,
   for the first pass (with Ray Data's start-up) and a second pass.
3. With --memory: per ZeRO stage (2 workers, bf16), and for ZeRO-3 with the optimizer states offloaded to disk
   (offload "nvme"; needs libaio), DeepSpeed's estimate of model-state memory for a ladder of autoencoder sizes,
   and for the largest size the estimate says fits this machine, the measured peak memory of completing
   training steps. Sizes the estimate rules out are not run (an out-of-memory run can take the
   machine down).
Figures are printed and saved to benchmarks/results/train.json (and train-memory.json with --memory).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import psutil
import torch

import geosane
from geosane.autoencoder.losses import LossConfig, training_losses
from geosane.train import (
    build_engine,
    parameter_groups,
    remove_offload_files,
    split_models,
    training_views,
    window_dataset,
)
from geosane.views import ViewConfig, cut_windows, make_views, window_starts

MODELS = [
    f"timm:{arch}?num_classes=10&seed={seed}"
    for arch in ("test_resnet", "test_efficientnet", "test_vit", "test_convnext")
    for seed in (0, 1)
]
RESULTS = Path(__file__).parent / "results"
REPEATS = 2  # runs of every training loop in the throughput comparison


def build_collection(url: str) -> None:
    if not geosane.Collection(url).exists():
        geosane.collect(MODELS, url, progress=False)


# ------------------------------------------------------------------------------ input throughput


def pyarrow_views(collection: geosane.Collection, ids: list[str], views: ViewConfig, rng: np.random.Generator):
    """One pass in one process: read each model's tokens from the collection, cut its windows and their two views."""
    for record in (collection.record(i) for i in ids):
        tokens = collection.tokens(record)
        values, positions, valid = tokens.tokens.numpy(), tokens.positions.numpy(), tokens.valid.numpy()
        windows = cut_windows(values, positions, valid, window_starts(len(values), views, rng), views.window)
        scale, count = collection.scale(record), len(windows["tokens"])
        yield {
            **make_views(windows, views, rng),
            "mean": np.full(count, float(scale.mean), dtype=np.float32),
            "std": np.full(count, float(scale.std), dtype=np.float32),
        }


def pyarrow_windows(collection: geosane.Collection, ids: list[str], views: ViewConfig) -> tuple[int, float]:
    """Tokens per second of reading the shards with pyarrow and cutting the same windows in one process."""
    start = time.perf_counter()
    tokens = sum(int((w["valid"] > 0).sum()) for w in pyarrow_views(collection, ids, views, np.random.default_rng(0)))
    return tokens, time.perf_counter() - start


def pyarrow_batches(collection: geosane.Collection, ids: list[str], views: ViewConfig, batch: int):
    """What a single-process training script does: every pass reads the shards, shuffles the windows of all
    models together, and cuts them into batches, on and on."""
    rng = np.random.default_rng(0)
    while True:
        parts = list(pyarrow_views(collection, ids, views, rng))
        windows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = rng.permutation(len(windows["tokens"]))
        for first in range(0, len(order) - batch + 1, batch):
            yield {k: torch.from_numpy(v[order[first : first + batch]]) for k, v in windows.items()}


def ray_data_passes(url: str, ids: list[str], views: ViewConfig, passes: int = 2) -> list[tuple[int, float]]:
    """(tokens, seconds) of each pass over a streaming split of the window dataset, as a Train worker reads it."""
    iterator = window_dataset(url, ids, views).streaming_split(1)[0]
    out = []
    for _ in range(passes):
        start, tokens = time.perf_counter(), 0
        for batch in iterator.iter_batches(batch_size=64, batch_format="numpy", prefetch_batches=4):
            tokens += int((batch["valid"] > 0).sum())
        out.append((tokens, time.perf_counter() - start))
    return out


# ------------------------------------------------------------------------------ training throughput


def plain_pytorch(batches, model_config: geosane.AutoencoderConfig, steps: int) -> tuple[float, float]:
    """The same model, loss and optimizer in one process: (steady tokens/s, first step's seconds)."""
    torch.manual_seed(0)
    model = geosane.Autoencoder(model_config)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps)
    loss_config = LossConfig()
    tokens, began, first = 0, time.perf_counter(), 0.0
    for done, b in zip(range(steps), batches, strict=False):  # batches never end
        loss = training_losses(model, b, loss_config, bf16=False)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if done == 0:
            first, began = time.perf_counter() - began, time.perf_counter()
        else:
            tokens += int(b["valid"].gt(0).sum())
    return tokens / (time.perf_counter() - began), first


def throughput(args: argparse.Namespace, url: str) -> dict:
    collection = geosane.Collection(url)
    split = split_models(collection.records(), 0.25, 0)
    model_config = geosane.AutoencoderConfig.named(
        args.model, window=args.window, token_size=collection.records()[0].token_size
    )
    # the windows and views that training uses for this run
    views = training_views(run_config(args, url, stage=0, storage=""), model_config, split.train)

    results: dict = {}
    tokens, seconds = pyarrow_windows(collection, split.train, views)
    results["pyarrow_tokens_per_s"] = round(tokens / seconds)
    (first_tokens, first_seconds), (tokens, seconds) = ray_data_passes(url, split.train, views)
    results["ray_data_first_pass_tokens_per_s"] = round(first_tokens / first_seconds)
    results["ray_data_tokens_per_s"] = round(tokens / seconds)
    results["ray_data_over_pyarrow"] = round(results["ray_data_tokens_per_s"] / results["pyarrow_tokens_per_s"], 3)

    torch.set_num_threads(2)  # the plain loops get both cores, as the two workers do together
    # (a) windows made once, before the clock starts, and cycled: the model's compute alone; (b) a single-process
    # training script that reads the shards and makes fresh windows and views every pass. This machine's speed
    # varies by 10-15% from one minute to the next, so every loop runs REPEATS times, interleaved, and the
    # overhead is taken against the fastest plain run and the fastest Ray run.
    in_memory = list(
        window_dataset(url, split.train, views).iter_torch_batches(batch_size=2 * args.batch, drop_last=True)
    )
    plain: dict[str, list[float]] = {"in_memory": [], "reading": [], "first_step_seconds": []}
    ray_runs: dict[int, list[dict]] = {0: [], 2: []}
    for _ in range(REPEATS):
        tokens_per_s, first = plain_pytorch(itertools.cycle(in_memory), model_config, args.steps)
        plain["in_memory"].append(round(tokens_per_s))
        plain["first_step_seconds"].append(round(first, 2))
        tokens_per_s, _ = plain_pytorch(
            pyarrow_batches(collection, split.train, views, 2 * args.batch), model_config, args.steps
        )
        plain["reading"].append(round(tokens_per_s))
        for stage in ray_runs:
            ray_runs[stage].append(ray_train_run(args, url, stage))
    best_plain = max(plain["in_memory"] + plain["reading"])
    results["plain_pytorch_tokens_per_s"] = plain
    results["plain_pytorch_best_tokens_per_s"] = best_plain
    for stage, runs in ray_runs.items():
        best = max(runs, key=lambda r: r["tokens_per_s"])
        results[f"zero{stage}"] = {
            "runs": runs,
            "best_tokens_per_s": best["tokens_per_s"],
            "overhead_best_plain_over_best_ray": round(best_plain / best["tokens_per_s"], 3),
        }
    return results


def run_config(args: argparse.Namespace, url: str, stage: int, storage: str) -> geosane.TrainConfig:
    """The settings of the benchmark's training runs (2 workers, ZeRO ``stage``)."""
    return geosane.TrainConfig(
        collection=url,
        storage=storage,
        name=f"bench-zero{stage}",
        model=args.model,
        window=args.window,
        workers=2,
        zero_stage=stage,
        steps=args.steps,
        batch_size=args.batch,
        checkpoint_every=args.steps,
        eval_every=args.steps,
        val_fraction=0.25,
        max_failures=0,
    )


def ray_train_run(args: argparse.Namespace, url: str, stage: int) -> dict:
    """One run of the real training loop (2 workers, ZeRO ``stage``); its own steady-state figures."""
    with tempfile.TemporaryDirectory() as runs:
        began = time.perf_counter()
        metrics = geosane.run_training(run_config(args, url, stage, runs), progress=False).metrics
    return {
        "tokens_per_s": round(metrics["tokens_per_s"]),
        "data_wait_fraction": round(metrics["data_wait_fraction"], 3),
        "startup_seconds": round(metrics["startup_seconds"], 1),
        "fit_seconds": round(time.perf_counter() - began, 1),
    }


# ------------------------------------------------------------------------------ memory


#: Sizes from tiny to the published one; geosane-N are the geosane width with N encoder and N decoder blocks.
LADDER = {
    "tiny": geosane.AutoencoderConfig.named("tiny"),
    "base": geosane.AutoencoderConfig.named("base"),
    **{
        f"geosane-{n}": geosane.AutoencoderConfig.named("geosane", encoder_blocks=n, decoder_blocks=n)
        for n in (4, 8, 12)
    },
    "geosane": geosane.AutoencoderConfig.named("geosane"),
}
MEMORY_WINDOW = 16  # windows of 16 tokens, 1 per worker: activations stay small, model states dominate


def model_sizes(config: geosane.AutoencoderConfig) -> tuple[int, int]:
    """(parameters, parameters of the largest module) without allocating: DeepSpeed's estimators take these."""
    with torch.device("meta"):
        model = geosane.Autoencoder(config)
    return (
        sum(p.numel() for p in model.parameters()),
        max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
    )


def estimate_bytes(stage: int, offload: str, parameters: int, largest: int, workers: int) -> tuple[int, str]:
    """Model-state bytes on this host, and where the figure comes from.

    On a machine without GPUs a worker's "GPU memory" is host memory too, so DeepSpeed's device share (per worker)
    and host share add up. The host share without offload is the model as each worker builds it before DeepSpeed
    converts it (fp32, then bf16 copies and flat fp32 buffers): it is live beside the device share while the
    engine starts. Offload "nvme" moves the fp32 master weights and Adam moments (12 bytes a parameter) to files.
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 3:
        host, device, _ = estimate_zero3_model_states_mem_needs(
            parameters, largest, workers, 1, cpu_offload=False, cpu_offload_params=False, zero_init=True
        )
        if offload == "nvme":
            return (
                host + workers * device - 12 * parameters,
                "deepspeed estimate_zero3_model_states_mem_needs less the optimizer states kept in files",
            )
        return host + workers * device, "deepspeed estimate_zero3_model_states_mem_needs"
    host, device = estimate_zero2_model_states_mem_needs(parameters, workers, 1, cpu_offload=False)
    if stage == 2:
        return host + workers * device, "deepspeed estimate_zero2_model_states_mem_needs"
    # DeepSpeed has no estimator for stages 0 and 1: its stage-2 count, with the fp32 master weights, gradients
    # and Adam moments (16 bytes a parameter) whole on every worker at stage 0 (BF16_Optimizer) and the gradients
    # (2 bytes) whole at stage 1
    split = 16 * parameters // workers
    extra = 16 * parameters - split if stage == 0 else 2 * parameters - 2 * parameters // workers
    return host + workers * (device + extra), "DeepSpeed's stage-2 estimator plus what stages 0/1 do not split"


def memory_probe_loop(loop_config: dict) -> None:
    """On every worker: build the engine exactly as training does, run two steps on random tokens, report the
    peak resident memory of every rank."""
    import resource

    import ray.train
    import torch.distributed as dist

    torch.set_num_threads(1)
    config = geosane.TrainConfig(**loop_config["train"])
    model_config = geosane.AutoencoderConfig(**loop_config["model"])
    engine, _ = build_engine(config, model_config)
    generator = torch.Generator().manual_seed(ray.train.get_context().get_world_rank())
    losses = []
    for _ in range(config.steps):
        tokens = torch.randn(config.batch_size, model_config.window, model_config.token_size, generator=generator)
        batch = {
            "tokens": tokens,
            "view1": tokens * 1.1,
            "view2": tokens * 0.9,
            "valid": torch.full(tokens.shape[:2], model_config.token_size),
            "positions": torch.randint(0, 1000, (*tokens.shape[:2], 3), generator=generator),
            "mean": torch.zeros(len(tokens)),  # random tokens: a model of mean 0 and std 1
            "std": torch.ones(len(tokens)),
        }
        loss = training_losses(engine, batch, LossConfig(), config.bf16)["loss"]
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    peaks = [None] * dist.get_world_size()
    dist.all_gather_object(peaks, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    # Ray Train keeps the metrics of reported checkpoints: rank 0 reports a small one
    with tempfile.TemporaryDirectory() as folder:
        rank0 = ray.train.get_context().get_world_rank() == 0
        ray.train.report(
            {"peak_rss_bytes": peaks, "losses": losses},
            checkpoint=ray.train.Checkpoint.from_directory(folder) if rank0 else None,
        )
    remove_offload_files(config)


def train_workers_rss() -> int:
    return sum(
        p.info["memory_info"].rss
        for p in psutil.process_iter(["cmdline", "memory_info"])
        if p.info["cmdline"] and "RayTrainWorker" in " ".join(p.info["cmdline"])
    )


def probe(stage: int, name: str, offload: str = "none") -> dict:
    """Two bf16 training steps of ``name`` under ``stage`` with 2 workers; the measured peaks."""
    import ray.train
    from ray.train.torch import TorchTrainer

    config = geosane.TrainConfig(
        collection="-",
        name=f"memory-{stage}-{offload}-{name}",
        model=name,
        zero_stage=stage,
        bf16=True,
        offload=offload,
        batch_size=1,
        steps=2,
        workers=2,
    )
    model_config = replace(LADDER[name], window=MEMORY_WINDOW)
    polled, done = [0], threading.Event()

    def poll() -> None:  # the workers' summed resident memory, every 0.2 s
        while not done.wait(0.2):
            polled[0] = max(polled[0], train_workers_rss())

    # a fresh Ray session per probe: after Ray's memory monitor kills a worker, the next trainer in the same
    # session was seen to wait forever
    import ray

    ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    threading.Thread(target=poll, daemon=True).start()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as runs:
        trainer = TorchTrainer(
            memory_probe_loop,
            train_loop_config={"train": asdict(config), "model": asdict(model_config)},
            scaling_config=ray.train.ScalingConfig(num_workers=2),
            run_config=ray.train.RunConfig(
                name=config.name, storage_path=runs, failure_config=ray.train.FailureConfig(max_failures=0)
            ),
        )
        try:
            metrics = trainer.fit().metrics
        except Exception as exc:  # noqa: BLE001  (recorded: a size that does not complete is a result)
            done.set()
            return {"completed": False, "error": str(exc)[-500:], "seconds": round(time.perf_counter() - began)}
    done.set()
    return {
        "completed": True,
        "peak_rss_gib_per_worker": [round(b / 2**30, 2) for b in metrics["peak_rss_bytes"]],
        "peak_rss_gib_total": round(sum(metrics["peak_rss_bytes"]) / 2**30, 2),
        "polled_peak_gib_total": round(polled[0] / 2**30, 2),
        "losses": [round(x, 4) for x in metrics["losses"]],
        "seconds": round(time.perf_counter() - began),
    }


def memory(args: argparse.Namespace, save) -> dict:
    """The ladder; ``save`` writes what is known so far after every probe (a killed run keeps its results)."""
    available = psutil.virtual_memory().available
    baseline = probe(2, "tiny")  # the runtime itself (torch, DeepSpeed, Ray) in two workers
    runtime = sum(baseline.get("peak_rss_gib_per_worker", [1.5, 1.5])) * 2**30
    budget = args.memory_fraction * available
    table, runs, attempts = [], {}, []  # every probe run; per row, the largest that completed
    # offload "nvme" runs for real here (its states go to disk); offload to CPU would only move states within the
    # same memory on a machine without GPUs, so it is not on the ladder
    for stage, offload in ((0, "none"), (1, "none"), (2, "none"), (3, "none"), (3, "nvme")):
        fitting = []
        for name, config in LADDER.items():
            parameters, largest = model_sizes(replace(config, window=MEMORY_WINDOW, token_size=230))
            states, source = estimate_bytes(stage, offload, parameters, largest, 2)
            fits = states + runtime <= budget
            table.append(
                {
                    "stage": stage,
                    "offload": offload,
                    "model": name,
                    "parameters": parameters,
                    "estimate_gib": round(states / 2**30, 2),
                    "estimate_with_runtime_gib": round((states + runtime) / 2**30, 2),
                    "fits": fits,
                    "source": source,
                }
            )
            fitting += [name] if fits else []
        # run the largest size the estimate admits; if it does not complete, the next smaller
        key = f"zero{stage}" + ("-nvme" if offload == "nvme" else "")
        for name in reversed(fitting):
            print(f"{key}: {name} ...", flush=True)
            attempt = {"stage": stage, "offload": offload, "model": name, **probe(stage, name, offload)}
            attempts.append(attempt)
            print(f"  {json.dumps(attempt)}", flush=True)
            if attempt["completed"]:
                runs[key] = attempt
            save(
                {
                    "available_gib": round(available / 2**30, 2),
                    "runtime_baseline": baseline,
                    "estimates": table,
                    "largest_completed": runs,
                    "probes": attempts,
                    "finished": False,
                }
            )
            if attempt["completed"]:
                break
    return {
        "available_gib": round(available / 2**30, 2),
        "budget_gib": round(budget / 2**30, 2),
        "runtime_baseline": baseline,
        "estimates": table,
        "largest_completed": runs,
        "probes": attempts,
        "finished": True,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", default=None, help="collection URL (default: 8 timm test models, built once)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="windows per worker; the plain loop uses 2x")
    parser.add_argument("--memory", action="store_true", help="only the memory ladder (about 45 min)")
    parser.add_argument(
        "--memory-fraction",
        type=float,
        default=0.85,
        help="run sizes whose estimate plus the runtime stays under this share of available memory",
    )
    args = parser.parse_args()

    import ray

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(geosane.train.extensions_dir()))
    out = RESULTS / ("train-memory.json" if args.memory else "train.json")

    def save(results: dict) -> None:
        record = {
            "benchmark": out.stem,
            "config": vars(args) | {"workers": 2, "global_batch": 2 * args.batch},
            "results": results,
            "notes": "tokens/s counts real tokens of training windows. The Ray figures are the loop's own "
            "steady-state tokens_per_s (both workers' tokens from the end of the first step to the last, "
            "data wait, reports and pass restarts included); start-up is reported apart.",
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            },
            "versions": geosane.software_versions() | {"ray": ray.__version__},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")

    if args.memory:  # each probe starts its own Ray session
        results = memory(args, save)
    else:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # 2 workers + room for Ray Data
        url = args.collection or str(Path(tempfile.gettempdir()) / "geosane-bench-collection")
        build_collection(url)
        results = throughput(args, url)
    ray.shutdown()
    print(json.dumps(results, indent=1))
    save(results)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
