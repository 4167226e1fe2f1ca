"""Modules imported on first use.

Every pytest-xdist worker collects (imports) every test module, and the LLM SDKs
take seconds of CPU to import (``anthropic`` alone loads ~3300 modules). A test
module that names them through :class:`LazyModule` costs nothing to collect; only
the worker that runs its tests imports the SDK.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands in for ``import NAME``: the module is imported on first attribute access."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            # What pytest's collection asks of every module-level name (``__test__``,
            # fixture markers, ...): not the SDK's, and no reason to import it.
            raise AttributeError(attr)
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"
