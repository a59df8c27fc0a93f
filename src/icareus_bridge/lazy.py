"""Package surfaces imported on first use: a package's `__getattr__` that loads the module of an
exported name only when it is asked for, so importing the package loads none of its modules."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """The module `__getattr__` of `package`: name -> the module that defines it (`where`)."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__


__all__ = ["exports"]
