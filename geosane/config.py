"""One way to read a config: every YAML file GeoSANE reads (training, zoo sweeps, benchmark sweeps) loads here.

Configs are data. The YAML is parsed with the safe loader, so a tag that would build an object
(``!!python/object``, ``!!python/name``...) is refused; the result is then checked against the typed settings
class it is meant for (a dataclass made with :func:`settings`) by pydantic, so an unknown key or a value of the
wrong type is an error that names the file, the line, the key and what was expected. Config files live in
``sweeps/``, one per stage and size: ``sweeps/<stage>-<name>.yaml``.

Settings declared with :func:`option` carry their help, and :func:`add_options` turns them into ``geosane``'s
command-line options, so every default is written once, in its settings class.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import MISSING, field
from pathlib import Path
from typing import Annotated, Any, Sequence, TypeVar, dataclass_transform

import pydantic
import pydantic.dataclasses
import yaml

from geosane.errors import GeoSANEError

__all__ = [
    "MAX_SEED",
    "Seed",
    "add_options",
    "check_seed",
    "field_problems",
    "load_config",
    "make",
    "option",
    "settings",
    "version_number",
]

T = TypeVar("T")

#: Seeds are what NumPy, PyTorch and Ray Tune all take: 0 to 2^63-1.
MAX_SEED = 2**63 - 1


def seed_value(seed: Any) -> int:
    """A seed as settings take it: a whole number from 0 to 2^63-1, else the one message every path gives."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"must be a whole number from 0 to 2^63-1, got {seed!r}")
    return seed


#: A seed in a settings class: anything outside 0 to 2^63-1 is an error naming the field (in YAML, its line).
Seed = Annotated[int, pydantic.BeforeValidator(seed_value)]


def check_seed(seed: Any, where: str = "seed") -> int:
    """``seed`` if it is a whole number from 0 to 2^63-1 (what every random generator here takes).

    Args:
        seed: the value given.
        where: how to name it in the message (it starts the message, so a service can name the field).

    Returns:
        The seed.

    Raises:
        GeoSANEError: anything else, naming ``where``.
    """
    try:
        return seed_value(seed)
    except ValueError as exc:
        raise GeoSANEError(f"{where}: {exc}") from None


@dataclass_transform()
def settings(cls: type[T] | None = None, *, frozen: bool = False) -> Any:
    """A settings class: a pydantic dataclass, checked whenever one is made (from YAML, the command line, Python or
    a request's JSON), holding only its own fields, each of its declared type and range. Every settings class of
    GeoSANE is one; :func:`make` turns pydantic's error into one that names each field.

    Args:
        cls: the class (``@settings``), or None (``@settings(frozen=True)``).
        frozen: instances cannot change (settings that key a cache or a job).

    Returns:
        The settings class, or a decorator that makes one.
    """

    def make_settings(cls: type[T]) -> type[T]:
        config = pydantic.ConfigDict(extra="forbid")
        return pydantic.dataclasses.dataclass(cls, config=config, frozen=frozen)  # type: ignore[return-value]

    return make_settings if cls is None else make_settings(cls)


def make(kind: type[T], **values: Any) -> T:
    """Settings of type ``kind`` from ``values``, or an error that names every bad field and why.

    Args:
        kind: a settings class (:func:`settings`).
        **values: its fields.

    Returns:
        The settings.

    Raises:
        GeoSANEError: unknown fields, wrong types or values out of range, each named.
    """
    try:
        return kind(**values)
    except pydantic.ValidationError as exc:
        raise GeoSANEError(f"{kind.__name__}: " + "; ".join(field_problems(exc))) from None


def field_problems(error: pydantic.ValidationError) -> list[str]:
    """``field: why`` for every problem of a validation error (the whole settings: ``(settings): why``)."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(settings)"
        reason = item["msg"].removeprefix("Value error, ")
        if item["type"] == "unexpected_keyword_argument":
            reason = "unknown setting"
        problems.append(f"{where}: {reason}" + (f", got {item['input']!r}" if "got" not in reason else ""))
    return problems


def option(
    default: Any = MISSING, help: str = "", choices: tuple[Any, ...] | None = None, metavar: str | None = None
) -> Any:
    """A setting with the help the command line shows for it, so that its default and its meaning are written once:
    ``bandwidth: float = option(0.05, "kernel width")`` in the settings class, ``--bandwidth`` in ``geosane``.

    Args:
        default: the setting's default (none: the setting is required).
        help: what it means, for ``--help``.
        choices: the values it may take, where they are few.
        metavar: how ``--help`` names its value (default: N for integers, X for numbers, the name for text).

    Returns:
        A dataclass field.
    """
    return field(default=default, metadata={"help": help, "choices": choices, "metavar": metavar})


def version_number(text: str) -> int:
    """A collection version for ``--version``: versions count from 1."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a version is a whole number >= 1, got {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"versions count from 1 (see `geosane collection versions URL`), got {number}")
    return number


def add_options(
    parser: argparse.ArgumentParser,
    settings: type,
    names: Sequence[str],
    keep_config: bool = False,
    flags: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Options for fields of a settings class, their type, default, choices and help taken from the fields, so that
    a default is written once (in the settings class) and ``--help`` shows it.

    Args:
        parser: the subcommand's parser.
        settings: a dataclass whose fields were declared with :func:`geosane.config.option`.
        names: the fields to offer, as ``--field-name``.
        keep_config: options default to None, meaning "the config file's value" (``geosane train --config``).
        flags: per field, argparse settings that differ (another flag name, ``nargs``).
    """
    hints = typing.get_type_hints(settings)
    fields = {f.name: f for f in dataclasses.fields(settings)}
    for name in names:
        field, extra = fields[name], dict((flags or {}).get(name, {}))
        kind = hints[name]
        if typing.get_origin(kind) is typing.Literal:  # the choices say which strings
            kind = str
        kind = next(t for t in (typing.get_args(kind) or (kind,)) if t is not type(None))  # X | None: X
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        default = None if required else field.default
        text = field.metadata.get("help", "")
        if default not in (None, False, "", ()):
            text += f" (default: {default})"
        options: dict[str, Any] = {"help": text, "default": None if keep_config else default}
        if field.metadata.get("choices"):
            options["choices"] = field.metadata["choices"]
        if kind is bool:
            options["action"] = "store_true"
        else:
            options["type"] = kind
            named = {int: "N", float: "X"}.get(kind, name.upper())
            options["metavar"] = field.metadata.get("metavar") or (None if "choices" in options else named)
        if required:
            options["required"] = True
        flag = extra.pop("flag", "--" + name.replace("_", "-"))
        parser.add_argument(flag, dest=name, **{**options, **extra})


def load_config(path: str | Path, kind: type[T]) -> T:
    """Read the YAML file ``path`` as settings of type ``kind``.

    Args:
        path: a YAML file.
        kind: the settings class (made with :func:`settings`).

    Returns:
        The settings.

    Raises:
        GeoSANEError: a missing or unreadable file, a tag that builds objects, unknown keys or wrong types (with their
            lines).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise GeoSANEError(f"config {path} not found") from exc
    except OSError as exc:
        raise GeoSANEError(f"config {path} cannot be read ({exc.strerror})") from exc
    root = parse_yaml(text, path)
    if root is None:
        raise GeoSANEError(f"{path}: is empty; expected the settings of {kind.__name__} as a mapping")
    if not isinstance(root, yaml.MappingNode):
        raise GeoSANEError(f"{path}:{line(root)}: expected a mapping of settings, got a {yaml_kind(root)}")
    data = construct(root, path)
    try:
        return pydantic.TypeAdapter(kind).validate_python(data)
    except pydantic.ValidationError as exc:
        problems = [describe(error, root) for error in exc.errors()]
        raise GeoSANEError(
            f"{path}: {len(problems)} problem(s) in {kind.__name__} settings:\n  " + "\n  ".join(problems)
        ) from None


def parse_yaml(text: str, path: Path) -> yaml.Node | None:
    """The YAML document's node tree (kept for line numbers); safe tags only."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}" if mark else ""
        raise GeoSANEError(f"{path}{where}: not valid YAML ({exc.problem or exc.context})") from None
    except yaml.YAMLError as exc:
        raise GeoSANEError(f"{path}: not valid YAML ({exc})") from None


def construct(root: yaml.Node, path: Path) -> Any:
    """Plain Python values from the node tree; a tag the safe loader does not know is refused."""
    try:
        return yaml.SafeLoader("").construct_document(root)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f":{mark.line + 1}" if mark else ""
        raise GeoSANEError(
            f"{path}{where}: YAML tag not allowed ({exc.problem}); configs are data, "
            "plain values, lists and mappings only"
        ) from None


def line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def yaml_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    return "list" if isinstance(node, yaml.SequenceNode) else "single value"


def node_at(root: yaml.Node, location: tuple[Any, ...]) -> yaml.Node:
    """The deepest node of the YAML tree along a pydantic error location (keys and list indices)."""
    node = root
    for key in location:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if k.value == str(key)]
            if not found:
                break
            node = found[0][0] if key == location[-1] else found[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
    return node


def describe(error: Any, root: yaml.Node) -> str:
    """One line per problem: ``line N: groups[0].trials: expected an integer, got 'two'``."""
    location = tuple(error["loc"])
    key = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in location).lstrip(".") or "(top level)"
    where = f"line {line(node_at(root, location))}: {key}"
    if error["type"] == "unexpected_keyword_argument":
        return f"{where}: unknown setting"
    if error["type"] in ("missing", "missing_argument"):
        return f"{where}: missing (required)"
    if error["type"] == "value_error":  # a validator's own words
        return f"{where}: {error['msg'].removeprefix('Value error, ')}"
    expected = error["msg"].removeprefix("Input should be ").split(",")[0].replace("a valid ", "")
    if expected[:1].isalpha() and not expected.startswith(("a ", "an ")):
        expected = ("an " if expected[0] in "aeiou" else "a ") + expected
    return f"{where}: expected {expected}, got {error.get('input')!r}"
