"""Lazy package exports, so that ``import prefscore.<feature>`` (and the CLI, which registers every
feature's commands) does not import scipy, pandas, diffusers... until a name is actually used."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, namespace: dict, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose public ``name`` lives in submodule ``exports[name]``
    (``namespace``: the package's ``globals()``, listed by ``dir()`` too)."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
