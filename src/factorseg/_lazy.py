"""Lazy package exports: a package's public names imported from their module when first used, so that
importing the package stays cheap (no torch, MONAI or nibabel until a name that needs them is touched)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, modules: Mapping[str, Sequence[str]]) -> tuple[list[str], Callable[[str], Any],
                                                                            Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package`` whose submodule ``m`` exports ``modules[m]``."""
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module-level hook
        if name in home:
            return getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:  # noqa: N807 - the module-level hook
        return sorted({*home, *modules})

    return sorted(home), __getattr__, __dir__
