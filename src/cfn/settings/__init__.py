"""Every setting cfn reads. This package is the only place that reads the environment.

* :mod:`cfn.settings.model`: the pydantic model of every setting (``Settings``,
  ``get_settings``, ``load_settings``), imported on first use of those names;
* :mod:`cfn.settings.early`: standard library only, the few values the ``cfn``
  launcher needs before anything heavy is imported (where the agent server's
  socket is). The model reads the same variables through the same functions.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the launcher imports this package on every command
if TYPE_CHECKING:
    from typing import Any

    from cfn.settings.model import (
        WORKTREE_ENV,
        Settings,
        find_project_root,
        get_settings,
        load_settings,
        worktree_env_file,
    )

__all__ = [
    "WORKTREE_ENV",
    "Settings",
    "find_project_root",
    "get_settings",
    "load_settings",
    "worktree_env_file",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cfn.settings import model

        return getattr(model, name)
    raise AttributeError(f"module 'cfn.settings' has no attribute {name!r}")
