"""The autoencoder trained by Ray Train + DeepSpeed on two CPU workers, from a collection on S3 (moto).

One Ray session for the module; each test builds its own TorchTrainer.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import pytest
import timm
import torch

import geosane
from geosane import storage
from geosane.collection import Collection, sources
from geosane.errors import GeoSANEError
from geosane.tokenizer import TokenizerConfig
from geosane.train import Horizon, StepMeter, TrainConfig, fit_horizon, progress_line, run_training

MODELS = [
    "timm:test_resnet?num_classes=10&seed=0",
    "timm:test_resnet?num_classes=10&seed=1",
    "timm:test_efficientnet?num_classes=10&seed=0",
    "timm:test_efficientnet?in_chans=13&num_classes=10&seed=1",
    "timm:test_vit?num_classes=10&seed=0",
    "timm:test_convnext?num_classes=10&seed=0",
]


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):

    import ray

    # two train workers plus room for Ray Data's tasks beside them (the 2 cores are shared, not reserved)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def s3_collection(s3_server, ray_session) -> str:
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="geosane-train")
    url = "s3://geosane-train/collection"
    # small tokens, so that the tiny autoencoder's 16 latent values per token can hold what a token holds
    Collection(url).add((sources.load(u) for u in MODELS), TokenizerConfig(token_size=16), progress=False)
    return url


def config(collection: str, storage_root: Path, name: str, **overrides) -> TrainConfig:
    settings = dict(
        collection=collection,
        storage=str(storage_root),
        name=name,
        model="tiny",
        window=16,
        workers=2,
        steps=40,
        batch_size=8,
        lr=1e-2,
        checkpoint_every=10,
        eval_every=40,
        val_fraction=0.34,
        max_failures=0,
        # 60 steps measure that ZeRO training learns; the harder contrastive term of shifted views slows the first
        # steps of a tiny network (shifted views: tests/test_views.py, test_losses.py, and the committed small run)
        view_shift=0.0,
    )
    return TrainConfig(**{**settings, **overrides})


def raw_errors(
    autoencoder: geosane.Autoencoder, tokens: geosane.Tokens, train: list[geosane.Tokens]
) -> tuple[float, float]:
    """Raw MSE over real values of the model rebuilt through the autoencoder, and of the training models' mean token
    in its place (the baseline an autoencoder that learned nothing would reach)."""
    mask = tokens.mask
    rebuilt = autoencoder.decode(autoencoder.encode(tokens))
    mean_token = torch.cat([t.tokens[t.mask.all(1)] for t in train]).mean(0)
    return float(((rebuilt - tokens.tokens) ** 2)[mask].mean()), float(((mean_token - tokens.tokens) ** 2)[mask].mean())


def logged_steps_per_file(run: Path, tag: str) -> list[dict[int, float]]:
    """The scalars of ``tag`` in each TensorBoard events file of a run, by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    per_file = []
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        per_file.append({e.step: e.value for e in accumulator.Scalars(tag)})
    return per_file


def logged_steps(run: Path, tag: str) -> dict[int, float]:
    return {step: value for steps in logged_steps_per_file(run, tag) for step, value in steps.items()}


@pytest.fixture(scope="module")
def async_io() -> None:
    """DeepSpeed's async_io op for offload "nvme", built here once (minutes) rather than inside a training run.
    CI installs libaio and must run the test; elsewhere a machine without libaio skips it."""
    import os

    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("AsyncIOBuilder")
    if not builder.is_compatible(verbose=False) and not os.environ.get("CI"):
        pytest.skip("libaio is not installed (apt-get install libaio-dev)")
    builder.load()


# ZeRO-2 also trains in the two-node CI step (tests/test_cluster_jobs.py) and in `make demo`: slow here
@pytest.mark.parametrize("stage", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_trains_from_s3_under_zero(stage: int, s3_collection: str, tmp_path: Path, bucket: str) -> None:
    settings = config(s3_collection, tmp_path, f"zero{stage}", zero_stage=stage, steps=60, checkpoint_every=20)
    result = run_training(settings, progress=False)
    run = tmp_path / f"zero{stage}"
    assert int(result.metrics["step"]) == 60
    start, end = result.metrics["val_reconstruction_start"], result.metrics["val_reconstruction"]
    assert end < 0.6 * start, f"held-out reconstruction went from {start} to {end}"
    assert sorted(logged_steps(run, "loss")) == list(range(1, 61))
    # the typical step's reconstruction falls (medians: a window of BatchNorm weights, far from its model's mean, makes
    # a spike; the contrastive term of shifted views is meant to stay hard, so the total is not the measure). Ray
    # Data's streaming order changes which windows a step sees, so this is a loose trend check (ratios of 0.5-0.76
    # seen); the held-out reconstruction above, on fixed models, is the strict one
    losses = logged_steps(run, "reconstruction")
    assert statistics.median(losses[s] for s in range(51, 61)) < 0.85 * statistics.median(
        losses[s] for s in range(1, 11)
    )
    split = json.loads((run / "split.json").read_text())
    assert split["val"] and not set(split["val"]) & set(split["train"]), "validation holds out whole models"

    # the saved autoencoder, through the public API, is the one the loop validated at its last step
    collection = geosane.Collection(s3_collection)
    held_out = [collection.tokens(i) for i in split["val"]]
    autoencoder = geosane.Autoencoder.load(str(run))
    errors = [autoencoder.reconstruction_error(tokens) for tokens in held_out]
    assert sum(errors) / len(errors) == pytest.approx(end, rel=1e-5)
    assert autoencoder.info["step"] == 60 and autoencoder.info["train"]["zero_stage"] == stage
    # the last checkpoint's ZeRO shards, gathered, are the same weights; so are both copied to object storage
    at_step = geosane.Autoencoder.load(str(run), step=60)
    final = autoencoder.state_dict()
    assert all(torch.equal(at_step.state_dict()[k], v) for k, v in final.items())
    remote = f"{bucket}/runs/zero{stage}"
    fs, path = storage.filesystem(remote)
    fs.put(str(run) + "/", path + "/", recursive=True)
    assert all(torch.equal(geosane.Autoencoder.load(remote, step=60).state_dict()[k], v) for k, v in final.items())
    assert all(torch.equal(geosane.Autoencoder.load(remote).state_dict()[k], v) for k, v in final.items())
    with pytest.raises(GeoSANEError, match=r"no checkpoint of step 20 \(checkpoints kept: 40, 60\)"):
        geosane.Autoencoder.load(str(run), step=20)

    # held-out models come back closer than the mean token, and decode into state dicts that load strictly
    train = [collection.tokens(i) for i in split["train"]]
    for record, tokens in zip((collection.record(i) for i in split["val"]), held_out, strict=True):
        model_error, baseline_error = raw_errors(autoencoder, tokens, train)
        assert model_error < baseline_error, record.name
        rebuilt = geosane.detokenize(autoencoder.decode(autoencoder.encode(tokens)), tokens.layout, tokens.kept)
        timm.create_model(record.name, in_chans=record.in_chans, num_classes=10).load_state_dict(rebuilt, strict=True)
    unseen = timm.create_model("test_vit", in_chans=4, num_classes=5)
    tokens = geosane.tokenize(unseen.state_dict(), autoencoder.tokenizer)
    unseen.load_state_dict(
        geosane.detokenize(autoencoder.decode(autoencoder.encode(tokens)), tokens.layout, tokens.kept), strict=True
    )


OFFLOAD_PROBE = """
import json, os, sys
from pathlib import Path
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed, torch
from geosane.autoencoder import AutoencoderConfig
from geosane.autoencoder.losses import training_losses
from geosane.autoencoder.losses import LossConfig
from geosane.train import TrainConfig, build_engine, nvme_folder
deepspeed.init_distributed(dist_backend="gloo")
config = TrainConfig(collection="-", name="run", zero_stage=3, offload="nvme", nvme_path=sys.argv[1], steps=8,
                     batch_size=2, lr=3e-3)
engine, _ = build_engine(config, AutoencoderConfig(token_size=16, d_model=128, window=8))
tokens = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(0))
batch = {"tokens": tokens, "view1": tokens, "view2": tokens, "valid": torch.full((2, 8), 16),
         "positions": torch.arange(24).reshape(1, 8, 3).expand(2, 8, 3), "mean": torch.zeros(2), "std": torch.ones(2)}
losses, swapped = [], set()
for _ in range(config.steps):
    loss = training_losses(engine, batch, LossConfig(), bf16=False)["loss"]
    engine.backward(loss)
    engine.step()
    losses.append(float(loss))
    swapped |= {p.name for p in Path(nvme_folder(config)).rglob("*.swp")}
print(json.dumps({"losses": losses, "swap_files": sorted(swapped)}))
"""


def test_optimizer_states_offloaded_to_disk(async_io: None, tmp_path: Path) -> None:
    """ZeRO-Infinity: ZeRO-3 with the fp32 master weights and Adam moments in files, swapped in to step. One
    process, and a model of 0.9M parameters: DeepSpeed keeps groups under 1 MiB (as in `tiny`) in memory."""
    import socket
    import subprocess
    import sys

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    out = subprocess.run(
        [sys.executable, "-c", OFFLOAD_PROBE, str(tmp_path), port], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["swap_files"], "no optimizer state was written to the offload folder"
    assert result["losses"][-1] < 0.8 * result["losses"][0], result["losses"]


@pytest.mark.slow
def test_killed_worker_resumes_from_the_last_checkpoint(s3_collection: str, tmp_path: Path) -> None:
    import os
    import signal

    import psutil

    # the ConvNeXt family is held out of training and validation, and reported apart
    settings = config(s3_collection, tmp_path, "faulty", steps=60, max_failures=1, holdout={"family": ["convnext"]})
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=run_training(settings, progress=False)))
    thread.start()
    run = tmp_path / "faulty"
    deadline = time.time() + 300
    snapshot = run / "checkpoint_manager_snapshot.json"  # written once Ray Train has registered a checkpoint
    while not snapshot.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert snapshot.exists(), "no checkpoint was registered"
    workers = [
        p for p in psutil.process_iter(["cmdline"]) if "ray::RayTrainWorker" in " ".join(p.info["cmdline"] or [])
    ]
    assert len(workers) == 2, [w.info["cmdline"] for w in workers]
    os.kill(workers[-1].pid, signal.SIGKILL)
    thread.join(timeout=600)
    metrics = outcome["result"].metrics
    assert int(metrics["step"]) == 60
    collection = geosane.Collection(s3_collection)
    split = json.loads((run / "split.json").read_text())
    convnext = [r.id for r in collection.records() if r.family == "convnext"]
    assert split["held_out"] == convnext and not set(convnext) & set(split["train"] + split["val"])
    autoencoder = geosane.Autoencoder.load(str(run))
    error = autoencoder.reconstruction_error(collection.tokens(convnext[0]))
    assert metrics["held_out_reconstruction"] == pytest.approx(error, rel=1e-5)
    # each worker group writes its own TensorBoard file: the restarted group's steps continue after the
    # checkpoint it resumed from instead of starting again at 1
    firsts = sorted(min(steps) for steps in logged_steps_per_file(run, "loss"))
    assert len(firsts) == 2 and firsts[0] == 1
    assert firsts[1] > 1 and firsts[1] % settings.checkpoint_every == 1

    # re-running the finished run with the same name and settings reuses it: its final metrics, no new steps
    again = run_training(settings, progress=False)
    assert int(again.metrics["step"]) == 60


@pytest.mark.slow
def test_corrupt_or_mismatched_checkpoint_is_refused(s3_collection: str, tmp_path: Path) -> None:
    settings = config(s3_collection, tmp_path, "fragile", steps=10)
    run_training(settings, progress=False)
    with pytest.raises(GeoSANEError, match="was started with"):
        run_training(config(s3_collection, tmp_path, "fragile", steps=20, zero_stage=3), progress=False)
    checkpoint = sorted(p for p in (tmp_path / "fragile").glob("checkpoint_*") if p.is_dir())[-1]
    shard = next(checkpoint.rglob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(GeoSANEError, match="is corrupt"):
        run_training(config(s3_collection, tmp_path, "fragile", steps=20), progress=False)


def test_a_refused_resume_changes_nothing_and_starts_no_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run remembers its collection, the version it read and its settings; a resume that asks for others is
    refused before Ray starts, and the run's files stay as they were."""
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the refusal")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_ray)
    from geosane.collection.legacy import write_first_layout
    from geosane.train import SPLIT, training_plan

    urls = {}
    for name in ("one", "two"):
        urls[name] = str(tmp_path / name)
        geosane.collect([f"timm:test_vit?num_classes=3&seed={s}" for s in (0, 1)], urls[name], 64, progress=False)
    first = config(urls["one"], tmp_path, "run")
    plan = training_plan(first, str(tmp_path / "run"))
    assert plan["collection_version"] == Collection(urls["one"]).version
    assert sorted(plan["train"] + plan["val"]) == sorted(r.id for r in Collection(urls["one"]).records())
    storage.write_bytes(str(tmp_path / "run" / SPLIT), json.dumps(plan).encode())
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*")}
    geosane.collect(["timm:test_vit?num_classes=3&seed=2"], urls["one"], progress=False)  # a later commit
    assert training_plan(first, str(tmp_path / "run")) == plan, "a resume reads what the run read"
    for settings, message in (
        (config(urls["two"], tmp_path, "run"), r"trains on .*one, not .*two; use another --name"),
        (config(urls["one"], tmp_path, "run", zero_stage=3), "was started with .* this run has"),
    ):
        with pytest.raises(GeoSANEError, match=message):
            run_training(settings, progress=False)
        assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*")} == before
    write_first_layout(str(tmp_path / "old"), {"a": timm.create_model("test_vit").state_dict()})
    with pytest.raises(GeoSANEError, match="training reads collections in the table format; .* migrate"):
        run_training(config(str(tmp_path / "old"), tmp_path, "new"), progress=False)
    assert not (tmp_path / "new").exists()


def test_step_meter_keeps_start_up_apart_from_the_steady_state(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.0, 0.0, 9.0, 10.0, 10.5, 11.0])
    monkeypatch.setattr("geosane.train.loop.time.perf_counter", lambda: next(clock))
    meter = StepMeter()  # t=0
    meter.fetching(), meter.fetched()  # the first batch arrives at once (0 -> 0) ...
    meter.tokens = 100
    first = meter.step_done()  # ... but the step ends at t=9: start-up
    meter.next_step()  # t=10, after a checkpoint
    meter.fetched()  # waited 10 -> 10.5
    meter.tokens = 200
    second = meter.step_done()  # t=11
    assert first["startup_seconds"] == 9.0 and first["tokens_per_s"] == 0.0
    assert second["step_seconds"] == 1.0 and second["step_data_wait_seconds"] == 0.5
    assert second["tokens_per_s"] == 200 / 2.0  # since the end of the first step, checkpoint time included
    assert second["data_wait_fraction"] == 0.5 / 2.0 and second["startup_seconds"] == 9.0


def test_offload_settings_reach_deepspeed_and_bad_ones_are_refused(tmp_path: Path) -> None:
    from geosane.train import deepspeed_config

    nvme = TrainConfig(collection="c", name="run", zero_stage=3, offload="nvme", nvme_path=str(tmp_path))
    nvme.validate()
    zero = deepspeed_config(nvme)["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "nvme"
    assert zero["offload_optimizer"]["nvme_path"] == str(tmp_path / "run"), "each run swaps in its own folder"
    assert zero["sub_group_size"] < nvme.workers * 10**8, "states come into memory a small group at a time"
    assert deepspeed_config(TrainConfig(collection="c", offload="cpu"))["zero_optimization"]["offload_optimizer"] == {
        "device": "cpu"
    }
    assert "offload_optimizer" not in deepspeed_config(TrainConfig(collection="c"))["zero_optimization"]
    with pytest.raises(GeoSANEError, match="offload 'nvme' needs zero_stage 3, got 2"):
        TrainConfig(collection="c", zero_stage=2, offload="nvme").validate()
    with pytest.raises(GeoSANEError, match="offload must be one of .*got 'disk'"):
        TrainConfig(collection="c", offload="disk").validate()


MALLOC_PROBE = """
import ctypes, sys
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
from geosane.train import return_large_blocks_to_the_os
libc.free(ctypes.c_void_p(libc.malloc(16 << 20)))  # glibc now serves blocks under 16 MiB from its heap
if sys.argv[1] == "on":
    return_large_blocks_to_the_os()
before = libc.mallinfo2().hblks
libc.malloc(8 << 20)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.parametrize("setting, mapped", [("off", 0), ("on", 1)])
def test_large_blocks_get_their_own_mapping(setting: str, mapped: int) -> None:
    """After a large free glibc keeps 8 MiB blocks in its heap, where freed memory stays with the process; with
    the setting every block of 4 MiB or more is its own mmap, given back to the OS when freed."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MALLOC_PROBE, setting], capture_output=True, text=True, check=True)
    assert int(out.stdout) == mapped


def test_one_cycle_horizon_and_fitting_it_to_a_budget() -> None:
    """Warm-up over the first tenth, peak, cosine to zero; a wall-clock budget fits the length to the time left,
    counting the validations the remaining steps bring, never beyond ``steps``."""
    horizon = Horizon(100)
    factors = [horizon(s) for s in range(101)]
    assert factors[0] == pytest.approx(0.04) and factors[10] == pytest.approx(1.0) and factors[100] == 0.0
    assert factors.index(max(factors)) == 10 and all(a >= b for a, b in zip(factors[10:-1], factors[11:], strict=True))

    settings = TrainConfig(collection="c", steps=10_000, budget_minutes=1.0, eval_every=100)
    # 20 steps took 10 s, a validation 2 s, and 12 s of the minute are gone: 48 s at 0.5 s a step plus 2 s a validation
    # every 100 steps (0.52 s a step) hold 92 more steps
    fit_horizon(horizon, settings, step=21, timed_steps=20, timed_seconds=10.0, validation_seconds=2.0,
                elapsed=12.0, device="cpu")  # fmt: skip
    assert horizon.total == 21 + 92 and horizon.fitted
    fit_horizon(horizon, TrainConfig(collection="c", steps=50, budget_minutes=60), 21, 20, 10.0, 2.0, 12.0, "cpu")
    assert horizon.total == 50  # the budget would allow far more: steps caps it
    metrics = {"step": 120, "loss": 0.5, "reconstruction": 0.4, "val_reconstruction": 0.3, "tokens_per_s": 2345.0}
    line = progress_line(metrics, 1450, elapsed=90.0, seconds_per_step=0.6)
    assert line.startswith("step 120/1450  loss 0.5000") and "val 0.3000" in line and "2,345 tokens/s" in line
    assert line.endswith("1.5 min, 13.3 left")  # 1,330 steps to go at 0.6 s


def _fit_on_rank(rank: int, init: str, results: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    horizon = Horizon(100)
    settings = TrainConfig(collection="c", steps=10_000, budget_minutes=1.0, eval_every=100)
    # the ranks' clocks disagree a little: each alone would end the run at another step
    fit_horizon(horizon, settings, 21, 20, 10.0 + rank, 2.0, 12.0 + 3 * rank, device="cpu")
    Path(results, f"{rank}").write_text(str(horizon.total))
    dist.destroy_process_group()


def test_every_rank_fits_the_same_horizon(tmp_path: Path) -> None:
    """A rank that ends one step before the others leaves them waiting in a collective for ever: the fit takes every
    rank's slowest figures."""
    import torch.multiprocessing as mp

    mp.spawn(_fit_on_rank, args=(f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2)
    totals = {(tmp_path / str(rank)).read_text() for rank in (0, 1)}
    assert totals == {str(21 + int(45 / (0.55 + 0.02)))}  # 45 s left at 0.55 s a step, both ranks
