"""Signing secrets kept in a file: created once (0600), then read by every process.

The MCP gateway's and the LLM gateway's token secrets live under the state
directory unless configured. Several cfn processes may want one at the same
moment; the first writer wins (``os.link`` of a fully written temporary file),
and everyone else reads the winner's.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def read_or_create(path: Path, nbytes: int = 32) -> bytes:
    """The secret in ``path`` (stripped), made from ``nbytes`` random bytes (hex) if missing."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fresh = secrets.token_hex(nbytes).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(fresh)
    try:
        os.link(tmp, path)  # first writer wins; a concurrent one reads the winner's
    except FileExistsError:
        fresh = path.read_bytes().strip()
    finally:
        tmp.unlink(missing_ok=True)
    return fresh


def private_state_dir(path: Path) -> bool:
    """Make cfn's state directory (secrets, the database, logs, agents' contexts) its
    owner's alone: created 0700, or narrowed to 0700 when this user owns it and others
    could enter. False (left as it is) when another user owns it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.getuid():
        return False
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return True
