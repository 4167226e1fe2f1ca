"""What every command shares: consoles, the Redis manager, error handling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.logging import RichHandler

from cfn.coordination.connection import RedisManager
from cfn.settings import Settings, get_settings

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def reset_consoles() -> None:
    """Set both consoles up again from the current environment and streams (a command
    forked from the agent server has the caller's, not the server's; cfn.cli.served)."""
    out.__init__(highlight=False, soft_wrap=True)  # type: ignore[misc]
    err.__init__(stderr=True, highlight=False, soft_wrap=True)  # type: ignore[misc]


def setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=err, show_time=False, show_path=False, markup=False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[handler],
        force=True,
    )


def settings() -> Settings:
    cfg = get_settings()
    _private_state(str(cfg.state_dir))
    return cfg


@lru_cache(maxsize=8)
def _private_state(path: str) -> None:
    """Once per process and state dir: it is made (or narrowed to) 0700 before a
    command writes anything in it (docs/security.md, "Secrets at rest")."""
    from cfn.system.secrets import private_state_dir

    # A state dir that cannot be made is reported by what needs it.
    with contextlib.suppress(OSError):
        private_state_dir(Path(path))


def with_redis(operation: Callable[[RedisManager], Awaitable[T]]) -> T:
    """Run ``operation`` with a manager built from the settings, then close it."""

    async def main() -> T:
        manager = RedisManager.from_settings(settings())
        try:
            if not settings().redis_lazy_connect:
                await manager.connect()
            return await operation(manager)
        finally:
            await manager.close()

    return asyncio.run(main())


def print_json(value: Any) -> None:
    out.print_json(json.dumps(value), highlight=False) if out.is_terminal else print_plain(
        json.dumps(value)
    )


def print_plain(text: str) -> None:
    out.out(text, highlight=False)
