"""``geosane``: one entry point, one thin subcommand per stage.

Every subcommand turns a :class:`GeoSANEError` into a one-line message on stderr and exit status 2, so
scripts and ``ray job submit`` see a clear failure instead of a traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import warnings
from dataclasses import asdict, fields, replace
from typing import Any, Sequence

from geosane.config import add_options, version_number
from geosane.errors import GeoSANEError
from geosane.storage import RedactingFilter, check_endpoint, redact, refuse_output_inside
from geosane.version import __version__

__all__ = ["build_parser", "main"]

log = logging.getLogger("geosane")


def cmd_collect(args: argparse.Namespace) -> None:
    """Tokenize models into a collection.

    Read models (files, directories, s3:// URLs, timm:NAME[?in_chans=..&num_classes=..&pretrained=FILE&seed=..],
    pretrained:NAME) and add their tokens to the collection at --out.
    """
    from geosane.collection import Collection, collect, parse_tags

    added, named = collect(
        args.sources,
        args.out,
        args.token_size,
        args.mode,
        parse_tags(args.tag),
        progress=not args.quiet,
        create_bucket=args.create_bucket,
        allow_nonfinite=args.allow_nonfinite,
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
    done = f"migrated {count} model(s) of {args.url}" if count else f"{args.url} is up to date; nothing migrated"
    print(f"{done} (version {collection.version}; a first layout's own files are left as they were)")


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
    from geosane.collection.formats import KEY_ORDER

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
    """Train a model zoo with Ray Tune into a collection.

    Every Tune trial trains one timm model on a real dataset and checkpoints it at the config's epochs; every
    checkpoint is added to the collection with its test metric. Re-running the same config resumes an
    interrupted zoo.
    """
    from geosane.zoo import ZooConfig, run_zoo

    config = ZooConfig.from_yaml(args.config)
    added = run_zoo(config, args.out, args.storage, args.data_root, progress=not args.quiet)
    print(f"zoo {config.name}: added {len(added)} checkpoint(s) to {args.out}")


def cmd_train(args: argparse.Namespace) -> None:
    """Train the weight autoencoder (Ray Train + DeepSpeed ZeRO).

    Train the autoencoder on a collection; usable unchanged as a `ray job submit` entrypoint. Re-running with
    the same --name resumes the run from its latest checkpoint. Options override --config.
    """
    from geosane.train import TrainConfig, run_training

    overrides = {name: getattr(args, name) for name in TRAIN_OPTIONS}
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
    """Generate task-ready weights for a prompt architecture.

    Tokenize and encode the prompt (or anchors from the collection), draw latents by kernel density around the
    anchors, decode into the prompt's weights, re-estimate BatchNorm on the target data, rank the candidates on
    its selection split and write the top k as safetensors with model cards (JSON, Markdown).
    """
    from geosane.autoencoder.registry import resolve
    from geosane.generation import GenerateConfig, generate, write_generated

    settings = {f.name: getattr(args, f.name) for f in fields(GenerateConfig)}  # every setting is an option
    refuse_output_inside(args.out, args.collection, args.autoencoder)
    where = {"collection": args.collection, "data_root": args.data_root}
    generated = generate(resolve(args.autoencoder), progress=not args.quiet, **where, **settings)
    for path, card in zip(write_generated(generated, args.out), [g.card for g in generated], strict=True):
        score = f"selection score {card.selection.score:.4f}" if card.selection else "not ranked: no target data"
        print(f"{path}: rank {card.rank}, candidate {card.candidate}, {score}")


def cmd_bench(args: argparse.Namespace) -> None:
    """Benchmark generated models against scratch, the prompt, pruning, distillation and specialists.

    Ray Tune experiments over task x initialization x learning rate x seed: each trial is scored before fine-tuning
    and probed frozen, then fine-tuned with the task's budget (a rate chosen at a grid's edge is tried one step past
    it). Writes a Parquet table of every trial and epoch, a Markdown summary with paired intervals and detectable
    differences, curves and TensorBoard logs. Tasks marked held_out are checked against the collection first.
    """
    from geosane.bench import BenchConfig, run_bench, verdict, write_results

    config = BenchConfig.from_yaml(args.config)
    name = args.name or config.name
    refuse_output_inside(args.out or args.storage, config.collection, config.autoencoder)
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
    print(f"\n{verdict(summary)}")
    print(f"\nwrote {out}: results.md, results.parquet, curves-*.png and tensorboard/")
    if info["failed"]:
        raise GeoSANEError(f"{len(info['failed'])} trial(s) failed; first: {info['failed'][0]}")


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve generation over HTTP (Ray Serve).

    POST /generate (generate's settings as JSON), GET /jobs/ID, GET /jobs/ID/FILE; identical requests are
    answered from storage. Runs until interrupted."""
    from geosane.serve import ServeConfig, serve

    config = ServeConfig(**{f.name: getattr(args, f.name) for f in fields(ServeConfig)})
    serve(replace(config, data=tuple(args.data or ()), prompt_weights=tuple(args.prompt_weights or ())))


def cmd_embed(args: argparse.Namespace) -> None:
    """Embed a collection's models and check what the latent space knows.

    One embedding per collection model, a UMAP plot coloured by architecture, task and modality, and the
    k-nearest-neighbour accuracy of those labels against shuffled labels.
    """
    from geosane.autoencoder import Autoencoder
    from geosane.autoencoder.registry import resolve
    from geosane.collection import Collection
    from geosane.embed import embed_collection, write_embeddings

    refuse_output_inside(args.out, args.collection, args.autoencoder)
    url = resolve(args.autoencoder)
    autoencoder = Autoencoder.load(url)
    collection = args.collection or autoencoder.anchors
    if not collection:
        raise GeoSANEError(f"{url} names no collection: give --collection URL")
    embeddings = embed_collection(autoencoder, Collection(collection), progress=not args.quiet)
    info = {"autoencoder": url, "collection": collection}
    results = write_embeddings(embeddings, args.out, info)
    rows = [
        (label, f"{r['knn_accuracy']:.3f}", f"{r['shuffled_accuracy']:.3f}", str(r["k"]))
        for label, r in results.items()
    ]
    print_table(("label", "kNN accuracy", "shuffled labels", "k"), rows)
    print(f"\nwrote {args.out}/umap.png, knn.json and embeddings.npz ({len(embeddings.ids)} models)")


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell.

    Args:
        header: column names.
        rows: rows of cells.
    """
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


DATA_ROOT = "data root (default: $GEOSANE_DATA, then ../shared/data)"


def subcommand(commands: Any, command: Any) -> argparse.ArgumentParser:
    """A subcommand's parser, named after its function (``cmd_train``: ``train``), its help the docstring's first line
    and its description the rest, so that what a command does is written once, beside what it does.

    Args:
        commands: the subparsers of ``geosane``.
        command: the function that runs the subcommand.

    Returns:
        The subcommand's parser, which runs ``command``.
    """
    summary, _, description = inspect.cleandoc(command.__doc__ or "").partition("\n\n")
    parser = commands.add_parser(
        command.__name__.removeprefix("cmd_"),
        help=summary[:1].lower() + summary[1:].rstrip("."),
        description=" ".join(description.split()) or summary,
    )
    parser.set_defaults(func=command)
    return parser


def add_collect(commands: Any) -> None:
    from geosane.tokenizer import TokenizerConfig

    collect = subcommand(commands, cmd_collect)
    collect.add_argument("sources", nargs="+", metavar="SOURCE")
    collect.add_argument("--out", required=True, metavar="URL", help="collection root (path, file://, s3://)")
    # a collection keeps the token language it was created with: these only set a new one's
    add_options(collect, TokenizerConfig, ["token_size", "mode"], keep_config=True)
    collect.add_argument(
        "--create-bucket", action="store_true", help="create the --out s3:// bucket if it does not exist"
    )
    collect.add_argument(
        "--allow-nonfinite", action="store_true", help="keep models with NaN or infinite weights (refused by default)"
    )
    collect.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata for every model of this call; family, task, modality, bands, in_chans, num_classes, "
        "licence and name set manifest columns, other keys are free-form tags (repeatable)",
    )


def add_zoo(commands: Any) -> None:
    zoo = subcommand(commands, cmd_zoo)
    zoo.add_argument("--config", required=True, metavar="FILE.yaml", help="zoo config, e.g. sweeps/zoo-small.yaml")
    zoo.add_argument("--out", required=True, metavar="URL", help="collection root")
    zoo.add_argument("--storage", default="runs", metavar="PATH|URL", help="Tune experiment storage (default: runs)")
    zoo.add_argument("--data-root", default=None, help=DATA_ROOT)


#: What ``geosane train`` offers of :class:`~geosane.train.TrainConfig`; a ``--config`` file sets the rest.
TRAIN_OPTIONS = (
    "collection",
    "storage",
    "name",
    "model",
    "workers",
    "zero_stage",
    "bf16",
    "offload",
    "steps",
    "budget_minutes",
    "use_gpu",
)


def add_train(commands: Any) -> None:
    from geosane.train import TrainConfig

    train = subcommand(commands, cmd_train)
    train.add_argument(
        "--config", default=None, metavar="FILE.yaml", help="settings, e.g. sweeps/train-tiny.yaml; flags override them"
    )
    add_options(
        train,
        TrainConfig,
        TRAIN_OPTIONS,
        keep_config=True,
        flags={
            "collection": {"required": True},
            "offload": {"nargs": "?", "const": "cpu"},
            "use_gpu": {"flag": "--gpu"},
        },
    )


AUTOENCODER_HELP = "a trained autoencoder: a run, its final/, or a shipped one (default: geosane:small)"


def add_generate(commands: Any) -> None:
    from geosane.generation import GenerateConfig

    generate = subcommand(commands, cmd_generate)
    generate.add_argument("--autoencoder", default=None, metavar="URL", help=AUTOENCODER_HELP)
    add_options(generate, GenerateConfig, [f.name for f in fields(GenerateConfig)])
    generate.add_argument("--collection", metavar="URL", help="where query anchors come from (default: its own)")
    generate.add_argument("--data-root", metavar="DIR", help=DATA_ROOT)
    generate.add_argument("--out", required=True, metavar="DIR")


def add_bench(commands: Any) -> None:
    bench = subcommand(commands, cmd_bench)
    bench.add_argument("--config", required=True, metavar="FILE.yaml", help="sweep, e.g. sweeps/bench-small.yaml")
    bench.add_argument("--storage", default="runs", metavar="PATH|URL", help="Tune experiment storage (default: runs)")
    bench.add_argument("--name", default=None, help="experiment name (default: the config's name)")
    bench.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials stay")
    bench.add_argument("--out", default=None, metavar="DIR", help="results folder (default: STORAGE/NAME-results)")


def add_serve(commands: Any) -> None:
    from geosane.serve import ServeConfig

    lists = {"action": "append", "default": None}  # repeated: --data a=npz:A --data b=imagefolder:B
    flags = {"data": lists, "prompt_weights": lists}
    add_options(subcommand(commands, cmd_serve), ServeConfig, [f.name for f in fields(ServeConfig)], flags=flags)


def add_embed(commands: Any) -> None:
    embed = subcommand(commands, cmd_embed)
    embed.add_argument("--autoencoder", default=None, metavar="URL", help=AUTOENCODER_HELP)
    embed.add_argument(
        "--collection", default=None, metavar="URL", help="the models to embed (default: the autoencoder's collection)"
    )
    embed.add_argument("--out", required=True, metavar="DIR")


def add_collection(commands: Any) -> None:
    collection = commands.add_parser("collection", help="inspect and export a collection")
    actions = collection.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, func: Any, text: str, model: bool = False, version: str | None = None) -> Any:
        parser = actions.add_parser(name, help=text)
        parser.add_argument("url", metavar="URL")
        if model:
            parser.add_argument("id", metavar="ID", help="model id, unique id prefix or unique name")
        if version:
            parser.add_argument(
                "--version", type=version_number, default=None, metavar="N", help=f"{version} (default latest)"
            )
        parser.set_defaults(func=func)
        return parser

    action("ls", cmd_ls, "list the models in a collection", version="as it was at version N")
    action("versions", cmd_versions, "every commit of a collection: version, time, models")
    action("verify", cmd_verify, "read every model back and check it against its hashes", version="check version N")
    action("migrate", cmd_migrate, "convert a collection in the first layout (manifest.json + shards) into a table")
    action("show", cmd_show, "one model's manifest record and kept tensors", model=True)
    export = action(
        "export", cmd_export, "rebuild a model's state dict as safetensors", True, version="as it was at version N"
    )
    export.add_argument("--out", required=True, metavar="FILE.safetensors")
    stats = action("stats", cmd_stats, "counts by architecture, task, modality and parameters, with a PNG")
    stats.add_argument("--png", default=None, metavar="FILE.png", help="pie charts (default collection-stats.png)")


def build_parser() -> argparse.ArgumentParser:
    """``geosane``'s parser: global options, then one subcommand per stage, in the order data flows."""
    parser = argparse.ArgumentParser(
        prog="geosane",
        description="Learn from the weights of remote-sensing models and generate new ones.",
    )
    parser.add_argument("--version", action="version", version=f"geosane {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_collect, add_zoo, add_train, add_generate, add_bench, add_embed, add_serve, add_collection):
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``geosane`` with ``argv`` (default: the command line); returns the exit status (2: a GeoSANEError)."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    if not args.verbose:  # Ray's own tables, progress and info logs only when asked for (-v)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy output, silent at verbosity 0
        os.environ.setdefault("RAY_LOGGER_LEVEL", "error")
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        warnings.filterwarnings("ignore", message="lance is not fork-safe")  # GeoSANE's pools use spawn
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:  # no credential in any log line, whoever logs it
        handler.addFilter(RedactingFilter())
    try:
        check_endpoint()
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
