"""``geosane``: one entry point, one thin subcommand per stage.

Every subcommand turns a :class:`GeoSANEError` into a one-line message on stderr and exit status 2, so
scripts and ``ray job submit`` see a clear failure instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from dataclasses import asdict
from typing import Sequence

from geosane.errors import GeoSANEError
from geosane.storage import redact
from geosane.version import __version__

log = logging.getLogger("geosane")


def cmd_collect(args: argparse.Namespace) -> None:
    from geosane.collection import Collection, collect, parse_tags

    added, named = collect(
        args.sources,
        args.out,
        args.token_size,
        args.mode,
        parse_tags(args.tag),
        progress=not args.quiet,
        create_bucket=args.create_bucket,
    )
    skipped = named - len(added)
    version = Collection(args.out).version
    print(
        f"added {len(added)} model(s) to {args.out} (now at version {version})"
        + (f", {skipped} already there" if skipped else "")
    )


def cmd_ls(args: argparse.Namespace) -> None:
    from geosane.collection import Collection

    collection = Collection(args.url, args.version)
    records = collection.records()
    rows = [
        (r.id, r.name, r.family, r.task, r.modality, str(r.in_chans or "-"), f"{r.num_params:,}", f"{r.num_tokens:,}")
        for r in records
    ]
    header = ("id", "name", "family", "task", "modality", "in_chans", "params", "tokens")
    print_table(header, rows)
    total = sum(r.num_params for r in records)
    at = f" at version {collection.version}" if collection.version is not None else " (first layout, read only)"
    print(f"\n{len(records)} model(s), {total:,} parameters{at}")


def cmd_versions(args: argparse.Namespace) -> None:
    from geosane.collection import Collection

    versions = Collection(args.url).versions()
    if not versions:
        raise GeoSANEError(
            f"{args.url}: a collection in the first layout has no versions; `geosane collection migrate`"
        )
    print_table(
        ("version", "time (UTC)", "models"), [(str(v["version"]), v["time"], str(v["models"])) for v in versions]
    )


def cmd_verify(args: argparse.Namespace) -> None:
    from geosane.collection import Collection

    collection = Collection(args.url, args.version)
    problems = collection.verify(progress=not args.quiet)
    for problem in problems:
        print(problem)
    if problems:
        raise GeoSANEError(f"{args.url}: {len(problems)} bad model(s)")
    print(f"{args.url}: every model of version {collection.version} reads back as it was written")


def cmd_migrate(args: argparse.Namespace) -> None:
    from geosane.collection import Collection

    collection = Collection(args.url)
    count = collection.migrate(progress=not args.quiet)
    print(
        f"migrated {count} model(s) of {args.url} into its table (version {collection.version}); "
        "the first layout's files (manifest.json, shards/, layouts/, kept/) were left as they were"
    )


def cmd_show(args: argparse.Namespace) -> None:
    from geosane.collection import Collection

    collection = Collection(args.url)
    record = collection.record(args.id)
    layout = collection.layout(record)
    info = asdict(record)
    info["layers"] = len(layout.layers)
    info["kept"] = {entry.name: entry.reason for entry in layout.kept}
    print(json.dumps(info, indent=2))


def cmd_export(args: argparse.Namespace) -> None:
    from safetensors.torch import save

    from geosane import storage
    from geosane.collection import Collection
    from geosane.sources import KEY_ORDER

    out = storage.absolute(args.out)
    if storage.within(out, args.url):
        raise GeoSANEError(f"--out {args.out} is inside the collection {args.url}; write the model elsewhere")
    if storage.is_dir(out):
        raise GeoSANEError(
            f"--out {args.out} is a directory; give a file name, e.g. {args.out.rstrip('/')}/model.safetensors"
        )
    collection = Collection(args.url, args.version)
    record = collection.record(args.id)
    state_dict = collection.export(record)
    metadata = {"geosane_id": record.id, "name": record.name, KEY_ORDER: json.dumps(list(state_dict))}
    storage.write_bytes(out, save(state_dict, metadata=metadata))
    print(f"wrote {len(state_dict)} tensors of {record.name} ({record.id}) to {out}")


def cmd_stats(args: argparse.Namespace) -> None:
    from geosane.collection import Collection
    from geosane.plots import collection_stats, plot_make_up

    records = Collection(args.url).records()
    stats = collection_stats(records)
    for name, counts in stats.items():
        print(f"\n{name}:")
        print_table(
            ("", "count" if "parameters" not in name else "parameters"), [(k, f"{v:,}") for k, v in counts.items()]
        )
    png = args.png or "collection-stats.png"
    plot_make_up(stats, f"{args.url}: {len(records)} models", png)
    print(f"\nwrote {png}")


def cmd_zoo(args: argparse.Namespace) -> None:
    from geosane.zoo import ZooConfig, run_zoo

    config = ZooConfig.from_yaml(args.config)
    added = run_zoo(config, args.out, args.storage, args.data_root, progress=not args.quiet)
    print(f"zoo {config.name}: added {len(added)} checkpoint(s) to {args.out}")


def cmd_train(args: argparse.Namespace) -> None:
    from geosane.train import TrainConfig, run_training

    overrides = {
        "collection": args.collection,
        "storage": args.storage,
        "name": args.name,
        "model": args.model,
        "workers": args.workers,
        "zero_stage": args.zero_stage,
        "bf16": args.bf16,
        "offload": args.offload,
        "steps": args.steps,
        "budget_minutes": args.budget_minutes,
        "use_gpu": args.gpu,
    }
    config = (
        TrainConfig.from_yaml(args.config, **overrides)
        if args.config
        else TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    )
    result = run_training(config, progress=not args.quiet)
    metrics = result.metrics or {}
    print(
        f"run {config.name}: step {metrics.get('step')}, val reconstruction {metrics.get('val_reconstruction')}; "
        f"final model in {config.storage}/{config.name}/final"
    )


def cmd_generate(args: argparse.Namespace) -> None:
    from geosane.generation import generate, write_generated

    generated = generate(
        args.autoencoder,
        args.prompt,
        progress=not args.quiet,
        task=args.task,
        prompt_weights=args.prompt_weights,
        anchors=args.anchors,
        collection=args.collection,
        sampling=args.sampling,
        bandwidth=args.bandwidth,
        candidates=args.candidates,
        top_k=args.top_k,
        data=args.data,
        data_root=args.data_root,
        seed=args.seed,
    )
    for path, item in zip(write_generated(generated, args.out), generated, strict=True):
        selection = item.card["selection"]
        score = f"selection score {selection['score']:.4f}" if isinstance(selection, dict) else selection
        print(f"{path}: rank {item.card['rank']}, candidate {item.card['candidate']}, {score}")


def cmd_bench(args: argparse.Namespace) -> None:
    from geosane.bench import BenchConfig, run_bench, write_results

    config = BenchConfig.from_yaml(args.config)
    name = args.name or config.name
    results = run_bench(config, args.storage, name, resume=args.resume, progress=not args.quiet)
    out = args.out or f"{args.storage.rstrip('/')}/{name}-results"
    info = write_results(results, config, out, name)
    summary = info["summary"]
    rows = [
        (
            r["task"],
            r["initialization"],
            f"{r['parameters']:,}",
            r["metric"],
            f"{r['epoch_0_mean']:.3f}",
            f"{r['final_mean']:.3f} ± {r['final_std']:.3f}",
        )
        for _, r in summary.iterrows()
    ]
    print_table(
        ("task", "initialization", "params", "metric", "epoch 0", f"final (mean ± std, {len(config.seeds)} seeds)"),
        rows,
    )
    print(f"\nwrote {out}: results.md, results.parquet, curves-*.png and tensorboard/")
    if info["failed"]:
        raise GeoSANEError(f"{len(info['failed'])} trial(s) failed; first: {info['failed'][0]}")


def cmd_embed(args: argparse.Namespace) -> None:
    from geosane.autoencoder import Autoencoder
    from geosane.collection import Collection
    from geosane.embed import embed_collection, write_embeddings

    autoencoder = Autoencoder.load(args.autoencoder)
    embeddings = embed_collection(autoencoder, Collection(args.collection), progress=not args.quiet)
    info = {"autoencoder": args.autoencoder, "collection": args.collection}
    results = write_embeddings(embeddings, args.out, info)
    rows = [
        (label, f"{r['knn_accuracy']:.3f}", f"{r['shuffled_accuracy']:.3f}", str(r["k"]))
        for label, r in results.items()
    ]
    print_table(("label", "kNN accuracy", "shuffled labels", "k"), rows)
    print(f"\nwrote {args.out}/umap.png, knn.json and embeddings.npz ({len(embeddings.ids)} models)")


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geosane",
        description="Learn from the weights of remote-sensing models and generate new ones.",
    )
    parser.add_argument("--version", action="version", version=f"geosane {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    collect = commands.add_parser(
        "collect",
        help="tokenize models into a collection",
        description="Read models (files, directories, s3:// URLs, timm:NAME[?in_chans=..&num_classes=..&"
        "pretrained=FILE&seed=..]) and add their tokens to the collection at --out.",
    )
    collect.add_argument("sources", nargs="+", metavar="SOURCE")
    collect.add_argument("--out", required=True, metavar="URL", help="collection root (path, file://, s3://)")
    collect.add_argument(
        "--token-size", type=int, default=None, help="values per token (default 230, or the collection's)"
    )
    collect.add_argument(
        "--mode", choices=["dense", "per-channel"], default=None, help="how matrices are cut (default dense)"
    )
    collect.add_argument(
        "--create-bucket", action="store_true", help="create the --out s3:// bucket if it does not exist"
    )
    collect.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata for every model of this call; family, task, modality, bands, in_chans, num_classes, "
        "licence and name set manifest columns, other keys are free-form tags (repeatable)",
    )
    collect.set_defaults(func=cmd_collect)

    zoo = commands.add_parser(
        "zoo",
        help="train a model zoo with Ray Tune into a collection",
        description="Every Tune trial trains one timm model on a real dataset and checkpoints it at the "
        "config's epochs; every checkpoint is added to the collection with its test metric. Re-running the "
        "same config resumes an interrupted zoo.",
    )
    zoo.add_argument("--config", required=True, metavar="FILE.yaml", help="zoo config, e.g. sweeps/zoo-small.yaml")
    zoo.add_argument("--out", required=True, metavar="URL", help="collection root")
    zoo.add_argument("--storage", default="runs", metavar="PATH|URL", help="Tune experiment storage (default: runs)")
    zoo.add_argument("--data-root", default=None, help="data root (default: $GEOSANE_DATA, then ../shared/data)")
    zoo.set_defaults(func=cmd_zoo)

    train = commands.add_parser(
        "train",
        help="train the weight autoencoder (Ray Train + DeepSpeed ZeRO)",
        description="Train the autoencoder on a collection; usable unchanged as a `ray job submit` entrypoint. "
        "Re-running with the same --name resumes the run from its latest checkpoint.",
    )
    train.add_argument("--collection", required=True, metavar="URL")
    train.add_argument("--storage", default=None, metavar="URL", help="run storage (default: runs)")
    train.add_argument("--name", default=None, help="run name (default: autoencoder)")
    train.add_argument(
        "--config", default=None, metavar="FILE.yaml", help="settings, e.g. sweeps/train-tiny.yaml; flags override them"
    )
    train.add_argument("--model", default=None, metavar="SIZE", help="tiny, small, base or geosane (default tiny)")
    train.add_argument("--workers", type=int, default=None)
    train.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=None)
    train.add_argument("--bf16", action="store_true", default=None)
    train.add_argument(
        "--offload",
        nargs="?",
        const="cpu",
        choices=["none", "cpu", "nvme"],
        default=None,
        help="optimizer states to CPU memory (--offload) or to files on a local disk (--offload nvme, "
        "ZeRO-3 only; needs libaio)",
    )
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--budget-minutes", type=float, default=None, help="fit the schedule to this wall-clock budget")
    train.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker")
    train.set_defaults(func=cmd_train)

    generate = commands.add_parser(
        "generate",
        help="generate task-ready weights for a prompt architecture",
        description="Tokenize and encode the prompt (or anchors from the collection), draw latents by kernel density "
        "around the anchors, decode into the prompt's weights, re-estimate BatchNorm on the target data, rank the "
        "candidates on its selection split and write the top k as safetensors with model cards (JSON, Markdown).",
    )
    generate.add_argument("--autoencoder", required=True, metavar="URL", help="a trained autoencoder (a run or final/)")
    generate.add_argument(
        "--prompt", required=True, metavar="timm:NAME[?in_chans=C&num_classes=K]", help="the architecture to generate"
    )
    generate.add_argument("--task", choices=["classification", "segmentation", "detection"], default="classification")
    generate.add_argument("--prompt-weights", default=None, metavar="FILE", help="local weights for the prompt")
    generate.add_argument(
        "--anchors",
        default="prompt",
        metavar="prompt|QUERY",
        help="sample around the prompt itself (default) or collection models matching KEY=VALUE[,KEY=VALUE] "
        "(family, task, modality, name, in_chans, num_classes or a tag such as dataset or arch)",
    )
    generate.add_argument(
        "--collection", default=None, metavar="URL", help="anchors' collection (default: the autoencoder's)"
    )
    generate.add_argument("--sampling", choices=["joint", "token", "individual"], default="joint")
    generate.add_argument(
        "--bandwidth", type=float, default=0.05, help="kernel width, in latent spreads (default 0.05)"
    )
    generate.add_argument("--candidates", type=int, default=4, help="candidates generated and ranked (default 4)")
    generate.add_argument("--top-k", type=int, default=1, help="candidates written (default 1)")
    generate.add_argument("--data", default=None, metavar="DATASET", help="target dataset (BatchNorm and ranking)")
    generate.add_argument("--data-root", default=None, help="data root (default: $GEOSANE_DATA, then ../shared/data)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--out", required=True, metavar="DIR")
    generate.set_defaults(func=cmd_generate)

    bench = commands.add_parser(
        "bench",
        help="benchmark generated models against scratch, the prompt, pruning, distillation and specialists",
        description="One Ray Tune experiment over task x initialization x seed: every trial builds its model, scores "
        "it before fine-tuning (epoch 0), fine-tunes it with the task's budget and reports after every epoch. "
        "Writes a Parquet table of every trial and epoch, a Markdown summary, convergence curves and TensorBoard "
        "logs. Tasks marked held_out are checked against the collection first.",
    )
    bench.add_argument("--config", required=True, metavar="FILE.yaml", help="sweep, e.g. sweeps/bench-small.yaml")
    bench.add_argument("--storage", default="runs", metavar="PATH|URL", help="Tune experiment storage (default: runs)")
    bench.add_argument("--name", default=None, help="experiment name (default: the config's name)")
    bench.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials stay")
    bench.add_argument("--out", default=None, metavar="DIR", help="results folder (default: STORAGE/NAME-results)")
    bench.set_defaults(func=cmd_bench)

    embed = commands.add_parser(
        "embed",
        help="embed a collection's models and check what the latent space knows",
        description="One embedding per collection model, a UMAP plot coloured by architecture, task and modality, "
        "and the k-nearest-neighbour accuracy of those labels against shuffled labels.",
    )
    embed.add_argument("--autoencoder", required=True, metavar="URL")
    embed.add_argument("--collection", required=True, metavar="URL")
    embed.add_argument("--out", required=True, metavar="DIR")
    embed.set_defaults(func=cmd_embed)

    collection = commands.add_parser("collection", help="inspect and export a collection")
    actions = collection.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", help="list the models in a collection")
    ls.add_argument("url", metavar="URL")
    ls.add_argument("--version", type=int, default=None, metavar="N", help="as it was at version N (default latest)")
    ls.set_defaults(func=cmd_ls)
    versions = actions.add_parser("versions", help="every commit of a collection: version, time, models")
    versions.add_argument("url", metavar="URL")
    versions.set_defaults(func=cmd_versions)
    verify = actions.add_parser(
        "verify", help="read every model back and check it against its hashes; lists every bad model"
    )
    verify.add_argument("url", metavar="URL")
    verify.add_argument("--version", type=int, default=None, metavar="N", help="check version N (default latest)")
    verify.set_defaults(func=cmd_verify)
    migrate = actions.add_parser(
        "migrate", help="convert a collection in the first layout (manifest.json + shards) into the table format"
    )
    migrate.add_argument("url", metavar="URL")
    migrate.set_defaults(func=cmd_migrate)
    show = actions.add_parser("show", help="one model's manifest record and kept tensors")
    show.add_argument("url", metavar="URL")
    show.add_argument("id", metavar="ID", help="model id, unique id prefix or unique name")
    show.set_defaults(func=cmd_show)
    export = actions.add_parser("export", help="rebuild a model's state dict as safetensors")
    export.add_argument("url", metavar="URL")
    export.add_argument("id", metavar="ID", help="model id, unique id prefix or unique name")
    export.add_argument("--out", required=True, metavar="FILE.safetensors")
    export.add_argument(
        "--version", type=int, default=None, metavar="N", help="as it was at version N (default latest)"
    )
    export.set_defaults(func=cmd_export)
    stats = actions.add_parser("stats", help="counts by architecture, task, modality and parameters, with a PNG")
    stats.add_argument("url", metavar="URL")
    stats.add_argument("--png", default=None, metavar="FILE.png", help="pie charts (default collection-stats.png)")
    stats.set_defaults(func=cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    if not args.verbose:  # Ray's own tables, progress and info logs only when asked for (-v)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy output, silent at verbosity 0
        os.environ.setdefault("RAY_LOGGER_LEVEL", "error")
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        warnings.filterwarnings("ignore", message="lance is not fork-safe")  # GeoSANE's pools use spawn
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        args.func(args)
    except GeoSANEError as exc:
        print(f"geosane: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geosane: interrupted; the collection was left as it was", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
