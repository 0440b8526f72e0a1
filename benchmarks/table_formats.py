"""Collections on a table format: Lance (what GeoSANE uses) against Delta Lake, and both against the first layout's
Parquet shards (a JSON manifest and one file per model and part, GeoSANE 0.1).

    .venv/bin/python benchmarks/table_formats.py [--processes 8] [--rounds 5] [--passes 2]

1. Concurrent writers, on file:// and on s3:// (moto's server on 127.0.0.1, which honours conditional puts):
   ``--processes`` processes each append one model at once, ``--rounds`` times, to a table created first; and the
   same processes racing to create a new table and append to it. Reported: rows kept of rows committed, and
   commits that raised. Lance is driven through ``geosane.Collection.add`` (creation as its own step, then an
   append commit); Delta through ``write_deltalake(mode="append")``, as its documentation shows.
2. Ray Data training input: tokens/s of the window pipeline (read -> windows -> two views) over the same 8 models as
   ``benchmarks/train.py``'s Ray Data figure, with its views (a pass holds 200 steps of 2 workers x 8 windows),
   first pass (with Ray Data's start-up) and later passes:
   ``read_parquet`` over the first layout's shards (as GeoSANE 0.1 read them), ``read_lance`` (``window_dataset``,
   GeoSANE now, with every model's tokens checked against their hash) and ``read_delta``.
   The readers take turns pass by pass; the later passes' median is reported.
3. One model's tokens by id (median of 20 reads) and reading the table as it was at an earlier version.
Figures are printed and saved to benchmarks/results/table-formats.json and table-formats.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from measure import free_port, save

MODELS = [
    f"timm:{arch}?num_classes=10&seed={seed}"
    for arch in ("test_resnet", "test_efficientnet", "test_vit", "test_convnext")
    for seed in (0, 1)
]
RESULTS = Path(__file__).parent / "results"


# ------------------------------------------------------------------------------ concurrent writers


def delta_options(url: str) -> dict[str, str] | None:
    if not url.startswith("s3://"):
        return None
    return {
        "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        "conditional_put": "etag",  # Delta's S3 commits without a lock service: the store's conditional puts
    }


def append_one(fmt: str, url: str, name: str, env: dict[str, str], start: float) -> str:
    """In a worker process: append one small model at ``start`` (all workers at once); "ok" or the error."""
    os.environ.update(env)
    import torch

    from geosane import Collection, ModelSource, TokenizerConfig

    torch.manual_seed(zlib.crc32(name.encode()))
    state = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    source = ModelSource(name=name, uri=f"memory:{name}", sha256="", state_dict=state)
    while time.time() < start:
        time.sleep(0.001)
    try:
        if fmt == "lance":
            Collection(url).add([source], TokenizerConfig(token_size=64), progress=False)
        else:
            from deltalake import write_deltalake

            write_deltalake(url, pa.table({"id": [name], "w": [state["w"].numpy().tobytes()]}), mode="append",
                            storage_options=delta_options(url))  # fmt: skip
        return "ok"
    except Exception as exc:  # measured, not handled: the figure is how often this happens
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def rows_kept(fmt: str, url: str) -> int:
    if fmt == "lance":
        from geosane import Collection

        return len(Collection(url).records())
    from deltalake import DeltaTable

    return DeltaTable(url, storage_options=delta_options(url)).to_pyarrow_table().num_rows


def concurrency(pool: Any, fmt: str, base: str, processes: int, rounds: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    out: dict[str, Any] = {}
    for case in ("table created first", "racing to create"):
        committed = kept = 0
        errors: list[str] = []
        for round_ in range(rounds):
            url = f"{base}/{fmt}-{case.split()[0]}-{round_}"
            if case == "table created first":  # one writer makes the table, then everyone appends at once
                result = pool.apply(append_one, (fmt, url, "first", env, 0.0))
                assert result == "ok", result
                before = 1
            else:
                before = 0
            start = time.time() + 1.5
            jobs = [(fmt, url, f"r{round_}p{p}", env, start) for p in range(processes)]
            results = pool.starmap(append_one, jobs)
            committed += sum(r == "ok" for r in results)
            errors += [r for r in results if r != "ok"]
            kept += rows_kept(fmt, url) - before
        out[case] = {
            "appends": processes * rounds,
            "reported_committed": committed,
            "rows_kept": kept,
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
        }
        print(f"  {fmt:5s} {case:20s}: {kept}/{committed} committed rows kept, {len(errors)} commits raised")
    return out


# ------------------------------------------------------------------------------ Ray Data training input


def parquet_windows(block: dict[str, np.ndarray], views: Any, seed: int, scales: dict[str, tuple[float, float]]):
    """GeoSANE 0.1's block function: rows of token shards, grouped by file, put back in token order, then windows."""
    from geosane.views import cut_windows, make_views, shifted_starts, window_starts

    out: dict[str, list[np.ndarray]] = {}
    for path in np.unique(block["path"]):
        rows = block["path"] == path
        order = np.argsort(block["index"][rows])
        raw = block["tokens"][rows]
        tokens = (np.stack(raw) if raw.dtype == object else raw)[order]
        positions = np.stack([block[c][rows][order] for c in ("index", "layer", "within")], axis=1)
        valid = block["valid"][rows][order]
        rng = np.random.default_rng([seed, len(tokens), int(time.time_ns() % 2**32)])
        starts = window_starts(len(tokens), views, rng)
        later = shifted_starts(starts, len(tokens), views, rng)
        windows = make_views(
            cut_windows(tokens, positions, valid, starts, views.window), views, rng,
            cut_windows(tokens, positions, valid, later, views.window),
        )  # fmt: skip
        mean, std = scales[str(path).rsplit("/", 1)[-1]]
        windows["mean"] = np.full(len(windows["tokens"]), mean, dtype=np.float32)
        windows["std"] = np.full(len(windows["tokens"]), std, dtype=np.float32)
        for key, value in windows.items():
            out.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in out.items()}


def interleaved_passes(datasets: dict[str, Any], count: int) -> dict[str, list[float]]:
    """Tokens/s of each pass over a streaming split of each dataset, as a Train worker reads it; the readers take
    turns pass by pass, so the machine's drift (10-15% from one minute to the next) falls on all of them alike."""
    iterators = {name: dataset.streaming_split(1)[0] for name, dataset in datasets.items()}
    rates: dict[str, list[float]] = {name: [] for name in datasets}
    for _ in range(count):
        for name, iterator in iterators.items():
            start, tokens = time.perf_counter(), 0
            for batch in iterator.iter_batches(batch_size=64, batch_format="numpy", prefetch_batches=4):
                tokens += int((batch["valid"] > 0).sum())
            rates[name].append(tokens / (time.perf_counter() - start))
    return rates


def over_all_passes(rates: list[float]) -> float:
    """Tokens/s over a run of these passes, start-up included (every pass holds the same number of tokens)."""
    return len(rates) / sum(1 / r for r in rates)


def ray_data_input(root: Path, count: int) -> dict[str, Any]:
    import ray
    import ray.data
    from deltalake import write_deltalake

    import geosane
    from geosane import Collection
    from geosane.collection.legacy import write_first_layout
    from geosane.train import STEPS_PER_PASS, window_dataset, windows_per_model_for
    from geosane.views import ViewConfig, WindowSource

    lance_url, legacy_url, delta_url = str(root / "lance"), str(root / "legacy"), str(root / "delta")
    geosane.collect(MODELS, lance_url, progress=False)
    collection = Collection(lance_url)
    records = collection.records()
    write_first_layout(legacy_url, {r.name + str(i): collection.export(r) for i, r in enumerate(records)})
    ids = [r.id for r in records]
    write_deltalake(delta_url, collection.dataset().to_table())
    # the views training uses (benchmarks/train.py: window 32, 2 workers x batch 8): a pass holds 200 steps' windows
    views = ViewConfig(window=32, noise=0.1, shift=0.25)
    views = replace(views, windows_per_model=windows_per_model_for(lance_url, ids, views, STEPS_PER_PASS * 16))
    scales = {f"{r.id}.parquet": (r.token_mean, r.token_std) for r in records}
    delta_models = {r.id: WindowSource(r.token_mean, r.token_std, r.mode, [], []) for r in records}

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().use_datasource_v2 = False  # as GeoSANE 0.1 read its shards
    from geosane.views import model_windows

    datasets = {
        "parquet shards (0.1)": lambda: ray.data.read_parquet(
            [str(Path(legacy_url) / "shards" / f"{i}.parquet") for i in ids],
            include_paths=True,
            override_num_blocks=len(ids),
        ).map_batches(
            parquet_windows,
            batch_size=None,
            batch_format="numpy",
            fn_kwargs={"views": views, "seed": 0, "scales": scales},
        ),
        "lance (read_lance)": lambda: window_dataset(lance_url, ids, views),
        "delta (read_delta)": lambda: ray.data.read_delta(delta_url).map_batches(
            model_windows,
            batch_size=None,
            batch_format="numpy",
            fn_kwargs={"views": views, "seed": 0, "models": delta_models},
        ),
    }
    out: dict[str, Any] = {}
    try:
        for name, rates in interleaved_passes({name: make() for name, make in datasets.items()}, count).items():
            later = statistics.median(rates[1:])
            out[name] = {
                "first_pass_tokens_per_s": round(rates[0]),
                "later_passes_tokens_per_s": round(later),
                "all_passes_tokens_per_s": round(over_all_passes(rates)),
                "later_passes": [round(r) for r in rates[1:]],
            }
            print(
                f"  {name:22s}: first pass {rates[0]:9,.0f} tokens/s, later passes (median) {later:9,.0f}, "
                f"all {len(rates)} passes {over_all_passes(rates):9,.0f}"
            )
    finally:
        ray.shutdown()
    out["read_one_model"] = one_model(lance_url, legacy_url, delta_url, records[3].id)
    return out


def one_model(lance_url: str, legacy_url: str, delta_url: str, model: str) -> dict[str, Any]:
    """Median milliseconds to read one model's tokens by id, and to open an earlier version."""
    from deltalake import DeltaTable

    from geosane import Collection

    def median_ms(read) -> float:
        times = []
        for _ in range(20):
            start = time.perf_counter()
            read()
            times.append(time.perf_counter() - start)
        return round(1000 * statistics.median(times), 2)

    out = {
        "lance_ms": median_ms(lambda: Collection(lance_url).tokens(model)),
        "parquet_shards_ms": median_ms(lambda: Collection(legacy_url).tokens(model)),
        "delta_ms": median_ms(
            lambda: DeltaTable(delta_url).to_pyarrow_table(columns=["tokens", "valid"], filters=[("id", "=", model)])
        ),
        "lance_version_1_ms": median_ms(lambda: Collection(lance_url, version=1).records()),
        "delta_version_0_ms": median_ms(lambda: DeltaTable(delta_url, version=0).to_pyarrow_table(columns=["id"])),
    }
    print(
        f"  one model by id: lance {out['lance_ms']} ms, parquet shards {out['parquet_shards_ms']} ms, "
        f"delta {out['delta_ms']} ms; an earlier version: lance {out['lance_version_1_ms']} ms, "
        f"delta {out['delta_version_0_ms']} ms"
    )
    return out


# ------------------------------------------------------------------------------ main


def start_moto() -> Any:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="benchmark",
        AWS_SECRET_ACCESS_KEY="benchmark",
        AWS_DEFAULT_REGION="us-east-1",
    )
    boto3.client("s3").create_bucket(Bucket="table-formats")
    return server


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Collections on a table format", "", "## Concurrent writers", ""]
    lines += ["| store | format | case | rows kept / committed | commits that raised | first error |"]
    lines += ["|---|---|---|---|---|---|"]
    for store, formats in result["concurrency"].items():
        for fmt, cases in formats.items():
            for case, c in cases.items():
                error = (c["first_error"] or "").replace("|", "/")[:90]
                lines.append(
                    f"| {store} | {fmt} | {case} | {c['rows_kept']} / {c['reported_committed']} "
                    f"(of {c['appends']}) | {c['errors']} | {error} |"
                )
    passes = result["config"]["passes"]
    lines += ["", "## Ray Data training input (tokens/s)", ""]
    lines += [f"| reader | first pass | later passes (median) | all {passes} passes |", "|---|---|---|---|"]
    for name, r in result["ray_data"].items():
        if name != "read_one_model":
            lines.append(
                f"| {name} | {r['first_pass_tokens_per_s']:,} | {r['later_passes_tokens_per_s']:,} "
                f"| {r['all_passes_tokens_per_s']:,} |"
            )
    one = result["ray_data"]["read_one_model"]
    lines += ["", "## One model by id, and an earlier version (median ms)", ""]
    lines += [f"- {k}: {v}" for k, v in one.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--passes", type=int, default=7, help="Ray Data passes per reader (the first is reported apart)"
    )
    args = parser.parse_args()
    server = start_moto()
    result: dict[str, Any] = {"benchmark": "table-formats", "config": vars(args), "concurrency": {}}
    with tempfile.TemporaryDirectory() as tmp, multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        for store, base in (("file://", f"file://{tmp}/c"), ("s3:// (moto)", "s3://table-formats/c")):
            print(f"{store}: {args.processes} processes x {args.rounds} rounds")
            result["concurrency"][store] = {
                fmt: concurrency(pool, fmt, base, args.processes, args.rounds) for fmt in ("lance", "delta")
            }
        print("Ray Data training input (8 models, window 32):")
        result["ray_data"] = ray_data_input(Path(tmp) / "read", args.passes)
    server.stop()
    save(result, RESULTS / "table-formats.json")
    (RESULTS / "table-formats.md").write_text(markdown(result))
    print(f"saved {RESULTS / 'table-formats.json'} and .md")


if __name__ == "__main__":
    main()
