"""The public API (``geosane/__init__.py``) and the shape of the package: one import for a notebook, imports that
point one way, and modules used only through what they declare public."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import geosane

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "geosane"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def geosane_imports(path: Path) -> list[tuple[str, str | None, int]]:
    """Every import of a geosane module in a file, at any depth (functions and ``TYPE_CHECKING`` blocks included):
    ``(module, imported name or None, line)``, a submodule imported by name counting as that module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.startswith("geosane")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geosane"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append(
                    (submodule, None, node.lineno) if submodule in MODULES else (node.module, alias.name, node.lineno)
                )
    return found


def test_every_public_name_resolves_and_says_what_it_is() -> None:
    for name in geosane.__all__:
        value = getattr(geosane, name)
        if name != "__version__":
            assert (value.__doc__ or "").strip(), f"geosane.{name} has no docstring"
    assert set(dir(geosane)) >= set(geosane.__all__), "tab completion lists the public names"
    with pytest.raises(AttributeError, match="has no attribute 'Tokenizer'"):
        geosane.Tokenizer  # noqa: B018


@pytest.mark.parametrize("package", sorted(n for n, p in MODULES.items() if p.name == "__init__.py"))
def test_every_package_name_resolves_to_what_its_module_defines(package: str) -> None:
    """Every public name of a package resolves; where the package resolves them on first use (``EXPORTS``,
    ``geosane.lazy``), each is the object of the module its table names: a wrong entry fails here, not in a
    user's import."""
    module = importlib.import_module(package)
    table = getattr(module, "EXPORTS", {})
    for name in module.__all__:
        value = getattr(module, name)
        assert not inspect.ismodule(value) or value.__name__.endswith(f".{name}"), f"{package}.{name} is a module"
        if name in table:
            source = importlib.import_module(table[name])
            assert value is getattr(source, name, source), f"{package}.{name} is not {table[name]}.{name}"


def test_public_names_are_the_objects_not_modules_of_the_same_name() -> None:
    """``geosane.tokenize`` is the function even once ``geosane.tokenizer`` (its module) has been imported."""
    code = (
        "import geosane.tokenizer, geosane.collection, geosane; "
        "print(geosane.tokenize is geosane.tokenizer.tokenize, geosane.collect.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "geosane.collection.stage"]  # the collect stage function, not a module


def test_importing_geosane_loads_nothing_heavy_until_it_is_used() -> None:
    """Ray Data's task workers import ``geosane.views`` for every block: they must not pay for torch or Ray."""
    heavy = ("torch", "ray", "deepspeed", "pyarrow", "timm")
    code = (
        f"import sys, geosane, geosane.views; print([m for m in {heavy!r} if m in sys.modules]); "
        f"geosane.Autoencoder; print('torch' in sys.modules)"
    )
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines == ["[]", "True"]


def test_the_import_graph_has_no_cycle() -> None:
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, _, _ in geosane_imports(path):
            if module in MODULES and module != name:
                graph[name].add(module)
    # depth-first search for a back edge; report the cycle it closes
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = trail[trail.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    sources, pretrained = "geosane.collection.sources", "geosane.collection.pretrained"
    assert graph[sources] >= {pretrained} and sources not in graph[pretrained]


#: What each stage may not import: the packages read in the order data flows (collect -> collection ->
#: autoencoder/train -> generation -> bench), datasets and tasks beneath them, and no stage reaches forward.
FORBIDDEN = {
    "datasets": {"tasks", "collection", "zoo", "autoencoder", "train", "generation", "embed", "bench", "cli"},
    "tasks": {"collection", "zoo", "autoencoder", "train", "generation", "embed", "bench", "cli"},
    "collection": {"tasks", "zoo", "autoencoder", "train", "generation", "embed", "bench", "cli"},
    "zoo": {"autoencoder", "train", "generation", "embed", "bench", "cli"},
    "autoencoder": {"collection", "zoo", "train", "generation", "embed", "bench", "cli"},
    "train": {"tasks", "zoo", "generation", "embed", "bench", "cli"},
    "generation": {"zoo", "train", "embed", "bench", "cli"},
    "bench": {"zoo", "train", "embed", "cli"},
}


def test_no_stage_imports_a_later_one() -> None:
    """Every import at any depth (functions and ``TYPE_CHECKING`` blocks too) points back along the pipeline."""
    problems = []
    for name, path in MODULES.items():
        stage = name.split(".")[1] if "." in name else ""
        for module, imported, line in geosane_imports(path):
            target = f"{module}.{imported}" if module == "geosane" and imported else module
            used = target.split(".")[1] if "." in target else ""
            if used in FORBIDDEN.get(stage, set()):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {stage} imports {target}")
    assert not problems, problems


def test_no_module_or_function_is_too_long_to_read() -> None:
    """At most 500 lines a module and 80 a function in ``geosane/`` (the split files of datasets excepted)."""
    problems = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 500:
            problems.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 80:
                problems.append(
                    f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} is {node.end_lineno - node.lineno + 1} lines"
                )
    assert not problems, problems


def test_public_functions_of_several_arguments_say_args_and_returns() -> None:
    """torchgeo's readers rely on Google-style sections: every function and method a module lists in ``__all__``
    (and the public methods of the classes it lists) that takes more than one argument has ``Args:``, and
    ``Returns:`` when it returns something. ruff's pydocstyle rules check that those sections name every argument."""
    problems = []
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        public = set(public_names(name) or ())
        functions = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in public:
                functions.append((node.name, node))
            elif isinstance(node, ast.ClassDef) and node.name in public:
                functions += [
                    (f"{node.name}.{m.name}", m)
                    for m in node.body
                    if isinstance(m, ast.FunctionDef) and not m.name.startswith("_")
                ]
        for qualname, function in functions:
            arguments = function.args.posonlyargs + function.args.args + function.args.kwonlyargs
            count = len([a for a in arguments if a.arg not in ("self", "cls")])
            count += bool(function.args.vararg) + bool(function.args.kwarg)
            if count <= 1:
                continue
            doc = ast.get_docstring(function) or ""
            returns = function.returns is not None and ast.unparse(function.returns) != "None"
            missing = [s for s, needed in (("Args:", True), ("Returns:", returns)) if needed and s not in doc]
            if missing:
                problems.append(f"{path.relative_to(ROOT)}:{function.lineno}: {qualname} lacks {', '.join(missing)}")
    assert not problems, problems


def public_names(module: str) -> set[str] | None:
    """What a module declares public (``__all__``), or None when it declares nothing."""
    return getattr(importlib.import_module(module), "__all__", None)


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_use_only_the_public_api(path: Path) -> None:
    """``geosane.<name>`` for the names of ``geosane.__all__``, or names a module lists in its ``__all__``."""
    problems = []
    for module, name, line in geosane_imports(path):
        if module == "geosane":
            ok = name is None or name in geosane.__all__
        else:
            declared = public_names(module)
            ok = declared is not None and (name is None or name in declared)
        if not ok:
            problems.append(f"line {line}: {module}{'.' + name if name else ''} is not public")
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # geosane.X attribute access
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "geosane":
            if node.attr not in geosane.__all__ and f"geosane.{node.attr}" not in MODULES:
                problems.append(f"line {node.lineno}: geosane.{node.attr} is not public")
    assert not problems, problems


def test_modules_that_declare_a_public_part_are_used_only_through_it() -> None:
    """Nothing outside ``geosane/train.py`` imports its private parts (nor those of other modules with ``__all__``)."""
    problems = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        for module, name, line in geosane_imports(path):
            declared = public_names(module) if module in MODULES else None
            if name and declared is not None and name not in declared and module != module_name(path):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {module}.{name}")
    assert not problems, problems
    assert "train_loop" not in public_names("geosane.train")


def test_version_is_the_package_metadata() -> None:
    from importlib.metadata import version

    assert geosane.__version__ == version("geosane")
    record = json.loads(json.dumps(geosane.software_versions()))
    assert record["geosane"] == geosane.__version__ and "torch" in record
