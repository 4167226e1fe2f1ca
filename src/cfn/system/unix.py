"""Unix socket paths of any length (standard library only).

``sun_path`` holds at most 107 bytes, and a socket under a deep directory (a
pytest temporary directory, a long ``CFN_AGENT_SERVER_DIR``) does not fit. A
long path is reached through ``/proc/self/fd/<fd of its directory>/<name>``,
which is short and names the same file, for bind and connect alike.
"""

from __future__ import annotations

import contextlib
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

SUN_PATH_MAX = 107


@contextlib.contextmanager
def unix_address(path: str) -> Iterator[str]:
    """An address for ``path`` that fits in ``sun_path`` (valid inside the block)."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)
