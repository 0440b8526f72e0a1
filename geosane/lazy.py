"""Public names that resolve on first use: a package lists where each of its names lives, and importing the
package (or one light module of it, as ``geosane train --help`` imports the settings) loads nothing else."""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["exports"]


def exports(package: str, where: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) for names defined in its modules.

    Args:
        package: the package's ``__name__``.
        where: public name -> the module that defines it (a name that is the module itself resolves to it).

    Returns:
        ``__getattr__`` (imports the module on first use and keeps the value in the package) and ``__dir__``.
    """
    namespace = importlib.import_module(package).__dict__

    def getattr_(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(where[name])
        value = getattr(module, name, module)  # a function or class of the module, or the module itself
        namespace[name] = value  # resolved once
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(where))

    return getattr_, dir_
