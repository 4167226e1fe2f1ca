"""What the ``cfn`` launcher reads before anything heavy is imported (standard library only).

The agent server (:mod:`cfn.agents.forkserver`) lives in one directory per host
and cfn checkout; builtin agents are forked from it, and so are the short ``cfn``
commands (:mod:`cfn.cli.launch`). Both the launcher and the settings model
(``Settings.agent_server_base``) find it through these functions, from the same
variables: ``CFN_AGENT_SERVER`` (auto|off), ``CFN_AGENT_SERVER_DIR`` and
``XDG_RUNTIME_DIR``.
"""

from __future__ import annotations

import os
import sys

try:  # the built-in module: hashlib's OpenSSL load costs ~4 ms on every command
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - other builds
    from hashlib import sha256

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

SERVER_SOCKET = "agents.sock"


def package_dir() -> str:
    """The directory of the ``cfn`` package this code runs from."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def agent_server_base(server_dir: str | None, runtime_dir: str | None) -> str:
    """``CFN_AGENT_SERVER_DIR``, else ``$XDG_RUNTIME_DIR`` (or /tmp) ``/cfn-<uid>``."""
    if server_dir:
        return server_dir
    return os.path.join(runtime_dir or "/tmp", f"cfn-{os.getuid()}")  # noqa: S108


def agent_server_dir(base: str) -> str:
    """``base/agents-<hash of this checkout's code and interpreter>``: short on purpose (a
    unix socket path holds at most 107 bytes), shared by every task and state directory."""
    key = f"{package_dir()}\0{sys.executable}".encode()
    return os.path.join(base, f"agents-{sha256(key).hexdigest()[:12]}")


def _get(environ: Mapping[str, str], name: str) -> str | None:
    """An environment variable by name, case-insensitively (as the settings model reads)."""
    if name in environ:
        return environ[name]
    lowered = name.lower()
    for key, value in environ.items():
        if key.lower() == lowered:
            return value
    return None


def launcher_socket(environ: Mapping[str, str] | None = None) -> str | None:
    """The agent server socket the launcher may use; None when ``CFN_AGENT_SERVER`` is
    anything but auto (off, or a bad value the settings model will report)."""
    env = os.environ if environ is None else environ
    mode = _get(env, "CFN_AGENT_SERVER")
    if mode is not None and mode.strip().lower() != "auto":
        return None
    base = agent_server_base(_get(env, "CFN_AGENT_SERVER_DIR"), _get(env, "XDG_RUNTIME_DIR"))
    return os.path.join(agent_server_dir(base), SERVER_SOCKET)
