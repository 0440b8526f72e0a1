"""Write a shipped autoencoder from a training run, or rebuild one from its card and check it.

    # the package's geosane:small, from the heterogeneous run (sweeps/train-hetero.yaml on out/hetero)
    .venv/bin/python benchmarks/ship_autoencoder.py build --run out/runs/hetero --name small
    # rebuild it from its card (zoo, collect, train: about 80 minutes on 2 cores) and check the figures
    .venv/bin/python benchmarks/ship_autoencoder.py rebuild --name small --work out/rebuild
    # only the check, on a run made already
    .venv/bin/python benchmarks/ship_autoencoder.py rebuild --name small --run out/runs/hetero

``build`` writes ``geosane/autoencoder/shipped/NAME/`` (see ``geosane.autoencoder.registry``):

* the run's final weights (float32) and settings, with local paths made relative;
* ``anchors/``: a small collection, in half precision, of one zoo model per dataset and family (CoAtNet, the largest,
  is left out to stay within 30 MB). For each, the last checkpoint of the lineage with the lowest seed is taken, so
  nothing is chosen by a test score;
* ``card.json`` and ``CARD.md``:
  - every model the autoencoder learned (records, part: train / val / held out);
  - licences and the terms that follow from them;
  - the training config and commands;
  - the reconstruction of every anchor in float32 and float16;
  - the datasets and classes it trained on;
  - a reference error that the tests reproduce;
  - software versions and the SHA-256 of every file.

The folder is written beside its place and moved in at the end, so a failed build leaves the shipped one as it was.

``rebuild`` runs the card's commands, then compares the new run with the card:

* validation reconstruction;
* held-out reconstruction;
* each anchor's error.

The training is budget-fitted, so a rebuild is not bit-identical. It passes when each figure is within
``--tolerance`` (relative) of the card's, or better. Saved to ``benchmarks/results/rebuild-NAME.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch

import geosane
from geosane.autoencoder import registry
from geosane.datasets import parse_dataset

from measure import save

ROOT = Path(__file__).resolve().parents[1]
LICENCE_TERMS = (
    "The shipped weights were learned from models under the MIT and Apache-2.0 licences (listed per model below); "
    "both permit use, modification and redistribution, with their copyright and licence notices kept. The shipped "
    "autoencoder and anchors are distributed under the MIT licence of GeoSANE. Apache-2.0 models "
    "(ukis-csmask, Dynamic World) also ask that changes be stated: the autoencoder does not contain their weights, "
    "only what it learned from their tokens, and no anchor is an Apache-2.0 model."
)


def relative(value: object) -> object:
    """Local paths under the project made relative, recursively: a card says nothing about this machine."""
    if isinstance(value, str):
        return value.replace(str(ROOT) + "/", "")
    if isinstance(value, dict):
        return {k: relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [relative(v) for v in value]
    return value


def part_of(split: dict) -> dict[str, str]:
    """Model id -> the part of the run it was in (train, val, held out)."""
    parts = {i: "train" for i in split["train"]}
    parts.update({i: "val" for i in split["val"]})
    parts.update({i: "held out" for i in split.get("held_out", [])})
    return parts


def choose_anchors(records: list[geosane.ModelRecord], skip: list[str]) -> list[geosane.ModelRecord]:
    """One zoo model per dataset and family (but the ``skip`` families): the lowest seed's lineage, its last
    checkpoint (no test score read)."""
    chosen: dict[tuple[str, str], geosane.ModelRecord] = {}
    for record in records:
        if "zoo" not in record.tags or record.family in skip:
            continue
        key = (record.tags["dataset"], record.family)
        order = (int(record.tags["seed"]), -int(record.tags["epoch"]))
        if key not in chosen or order < (int(chosen[key].tags["seed"]), -int(chosen[key].tags["epoch"])):
            chosen[key] = record
    return [chosen[k] for k in sorted(chosen)]


def half(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors in float16, the rest as they are."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}


def write_anchors(collection: geosane.Collection, chosen: list, autoencoder, url: str) -> geosane.Collection:
    """The chosen models in half precision, as a collection of their own (tags say where each came from)."""
    fields = ("family", "task", "in_chans", "num_classes", "licence", "modality", "bands", "metrics")
    sources = (
        geosane.ModelSource(
            name=r.name,
            uri=r.source,
            sha256=r.source_sha256,
            state_dict=half(collection.export(r)),
            tags={**r.tags, "shipped_from": r.id, "precision": "float16"},
            **{f: getattr(r, f) for f in fields},
        )
        for r in chosen
    )
    anchors = geosane.Collection(url)
    anchors.add(sources, autoencoder.tokenizer, total=len(chosen))
    return anchors


def reconstruction(autoencoder, collection, anchors, chosen: list, parts: dict[str, str]) -> list[dict]:
    """Each anchor's normalized reconstruction error, from its float32 original and from its shipped float16 copy."""
    by_origin = {r.tags["shipped_from"]: r for r in anchors.records()}
    rows = []
    for record in chosen:
        shipped = by_origin[record.id]
        rows.append(
            {
                "name": record.name,
                "family": record.family,
                "dataset": record.tags["dataset"],
                "part": parts.get(record.id, "not in the run"),
                "id": shipped.id,
                "float32_error": autoencoder.reconstruction_error(collection.tokens(record)),
                "float16_error": autoencoder.reconstruction_error(anchors.tokens(shipped)),
            }
        )
    return rows


def datasets_learned(records: list[geosane.ModelRecord]) -> list[dict]:
    """Every dataset (with options) the collection's models trained on, and the classes that makes them know."""
    specs = sorted({r.tags["dataset"] for r in records if "dataset" in r.tags})
    out = []
    for spec in specs:
        name, options = parse_dataset(spec)
        dataset = geosane.datasets.get(spec)
        out.append(
            {
                "dataset": spec,
                "options": options,
                "classes": list(dataset.classes),
                "models": sum(r.tags.get("dataset") == spec for r in records),
            }
        )
    return out


def card_markdown(card: dict) -> str:
    """The card for people."""
    train, recon = card["training"], card["reconstruction"]
    lines = [
        f"# {card['url']}: {card['summary']}",
        "",
        f"- autoencoder: `{card['autoencoder']['size']}` ({card['autoencoder']['parameters']:,} parameters), "
        f"step {train['step']}, validation reconstruction {train['metrics']['val_reconstruction']:.3f}, held-out "
        f"families {train['metrics'].get('held_out_reconstruction', float('nan')):.3f}",
        f"- learned: {len(card['collection']['models'])} models of `{card['collection']['url']}` (version "
        f"{card['collection']['version']}); held out of training: {json.dumps(train['config'].get('holdout', {}))}",
        f"- anchors: {len(recon['anchors'])} zoo models in float16 ({card['anchors']['rule']})",
        "",
        "## How it was made",
        "",
        *[f"    {command}" for command in card["commands"]],
        "",
        "## Licences",
        "",
        ", ".join(f"{k}: {v} models" for k, v in card["licences"]["models"].items()),
        "",
        card["licences"]["terms"],
        "",
        "## Reconstruction of the anchors (normalized error)",
        "",
        "| anchor | family | dataset | part | float32 | float16 |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['name']} | {r['family']} | {r['dataset']} | {r['part']} | {r['float32_error']:.4f} | "
            f"{r['float16_error']:.4f} |"
            for r in recon["anchors"]
        ],
        "",
        f"Reference (reproduced by the tests to a relative 1e-5): {card['reference']['name']} "
        f"({card['reference']['part']}), error {card['reference']['normalized_error']:.6f}.",
        "",
        "## Datasets it learned from (bench tasks on other classes or scenes are held out)",
        "",
        *[f"- `{d['dataset']}`: {d['models']} models; classes {', '.join(d['classes'])}" for d in card["datasets"]],
        "",
        f"Software: {json.dumps(card['software'])}",
        "",
    ]
    return "\n".join(lines)


def build(run: str, name: str, skip: list[str], max_mb: float) -> Path:
    """Write ``shipped/NAME`` from a training run; returns the folder."""
    autoencoder = geosane.Autoencoder.load(run)
    info = autoencoder.info
    split = json.loads(Path(run, "split.json").read_text())
    collection = geosane.Collection(split["collection"], split["collection_version"])
    records = collection.records()
    parts = part_of(split)
    chosen = choose_anchors(records, skip)
    target = registry.SHIPPED / name
    staging = target.with_name(f".{name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    autoencoder.info = relative(info)  # type: ignore[assignment]
    autoencoder.save(str(staging))
    anchors = write_anchors(collection, chosen, autoencoder, str(staging / registry.ANCHORS))
    rows = reconstruction(autoencoder, collection, anchors, chosen, parts)
    held_out = next(r for r in rows if r["part"] == "held out")  # the tests reproduce this one's error
    reference = {k: held_out[k] for k in ("name", "id", "part")} | {"normalized_error": held_out["float16_error"]}
    train = info["train"]
    licences = {k: sum(r.licence == k for r in records) for k in sorted({r.licence for r in records})}
    card = {
        "url": registry.PREFIX + name,
        "summary": "a weight autoencoder over seven timm families and the real remote-sensing models",
        "autoencoder": {
            "size": train["model"],
            "settings": json.loads(Path(staging, "config.json").read_text())["autoencoder"],
            "parameters": sum(p.numel() for p in autoencoder.parameters()),
        },
        "training": relative({"config": train, "step": info["step"], "metrics": info["metrics"]}),
        "commands": [
            "geosane zoo --config sweeps/zoo-hetero.yaml --out out/hetero --storage out/runs",
            "geosane collect pretrained:all --out out/hetero",
            "geosane train --collection out/hetero --storage out/runs --name hetero --config sweeps/train-hetero.yaml",
            f"python benchmarks/ship_autoencoder.py build --run out/runs/hetero --name {name}",
        ],
        "collection": {
            "url": relative(split["collection"]),
            "version": split["collection_version"],
            "models": [{**r.__dict__, "part": parts.get(r.id, "not in the run")} for r in records],
        },
        "licences": {"models": licences, "terms": LICENCE_TERMS},
        "anchors": {
            "rule": "per dataset and family, the lowest seed's last checkpoint"
            + (f"; left out for size: {', '.join(skip)}" if skip else ""),
            "count": len(chosen),
        },
        "reconstruction": {
            "anchors": rows,
            "float16_max_relative_change": max(
                abs(r["float16_error"] - r["float32_error"]) / r["float32_error"] for r in rows
            ),
            "by_part": {
                p: statistics.mean(r["float16_error"] for r in rows if r["part"] == p)
                for p in sorted({r["part"] for r in rows})
            },
        },
        "reference": reference,
        "datasets": datasets_learned(records),
        "software": geosane.software_versions(),
    }
    (staging / "CARD.md").write_text(card_markdown(card))
    card["files"] = registry.file_hashes(staging)  # every file but the card, CARD.md included
    registry.AutoencoderCard.model_validate(card)  # every field a card must have, of its type
    (staging / registry.CARD).write_text(json.dumps(card, indent=1, default=str))
    card_hash = hashlib.sha256((staging / registry.CARD).read_bytes()).hexdigest()
    (staging / registry.CARD_HASH).write_text(f"{card_hash}  {registry.CARD}\n")
    size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    if size > max_mb * 1e6:
        raise SystemExit(f"{staging}: {size / 1e6:.1f} MB, over the {max_mb:g} MB a shipped set may take")
    old = target.with_name(f".{name}.old")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    print(
        f"wrote {target}: {size / 1e6:.1f} MB, {len(chosen)} anchors, "
        f"reference error {reference['normalized_error']:.5f}"
    )
    return target


def rebuild(name: str, work: str, run: str | None, tolerance: float) -> dict:
    """Run the card's commands in ``work`` (unless ``run`` is given) and compare the new run with the card."""
    card = registry.card(registry.PREFIX + name).model_dump()
    if run is None:
        Path(work).mkdir(parents=True, exist_ok=True)
        geosane_cli = str(Path(sys.executable).with_name("geosane"))
        for command in card["commands"][:3]:
            argv = command.replace("out/", f"{work.rstrip('/')}/").split()
            print("$", " ".join(argv), flush=True)
            subprocess.run([geosane_cli, *argv[1:]], cwd=ROOT, check=True)
        run = f"{work.rstrip('/')}/runs/hetero"
    autoencoder = geosane.Autoencoder.load(run)
    anchors = geosane.Collection(str(registry.folder(registry.PREFIX + name) / registry.ANCHORS))
    by_id = {r.id: r for r in anchors.records()}
    figures = {
        "val_reconstruction": (
            card["training"]["metrics"]["val_reconstruction"],
            autoencoder.info["metrics"]["val_reconstruction"],
        ),
        "held_out_reconstruction": (
            card["training"]["metrics"]["held_out_reconstruction"],
            autoencoder.info["metrics"]["held_out_reconstruction"],
        ),
    }
    for row in card["reconstruction"]["anchors"]:
        figures[row["name"]] = (
            row["float16_error"],
            autoencoder.reconstruction_error(anchors.tokens(by_id[row["id"]])),
        )
    checks = {k: {"card": c, "rebuilt": r, "ok": r <= c * (1 + tolerance)} for k, (c, r) in figures.items()}
    for key, check in checks.items():
        print(f"{'ok  ' if check['ok'] else 'FAIL'} {key}: card {check['card']:.4f}, rebuilt {check['rebuilt']:.4f}")
    result = {
        "name": name,
        "run": run,
        "tolerance": tolerance,
        "checks": checks,
        "passed": all(c["ok"] for c in checks.values()),
    }
    save(result, Path(__file__).parent / "results" / f"rebuild-{name}.json")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    build_parser = actions.add_parser("build", help="write shipped/NAME from a training run")
    build_parser.add_argument("--run", required=True)
    build_parser.add_argument("--name", default="small")
    build_parser.add_argument(
        "--skip-family", nargs="*", default=["maxxvit"], help="families without anchors (default: CoAtNet, the largest)"
    )
    build_parser.add_argument("--max-mb", type=float, default=30.0, help="the most the shipped folder may take")
    rebuild_parser = actions.add_parser("rebuild", help="rebuild from the card and compare")
    rebuild_parser.add_argument("--name", default="small")
    rebuild_parser.add_argument("--work", default="out/rebuild")
    rebuild_parser.add_argument("--run", default=None, help="check this run instead of training one")
    rebuild_parser.add_argument("--tolerance", type=float, default=0.25)
    args = parser.parse_args()
    if args.action == "build":
        build(args.run, args.name, args.skip_family, args.max_mb)
    else:
        result = rebuild(args.name, args.work, args.run, args.tolerance)
        sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
