"""Which files an agent changed in its workspace, whatever tool changed them.

A Claude Code agent writes files with ``Write``/``Edit`` (their ``file_path``
is in its transcript) and with ``Bash`` (a compiler's output, a formatter's
rewrite, ``echo > file``), which no tool argument names. The workspace is
listed before and after the run (path, size and modification time, no file
read), and the difference is what the agent changed: new, modified, deleted.

Generated caches are left out (``IGNORED``), symbolic links are not followed,
and a workspace of more than ``LIMIT`` files is not listed at all (the
transcript's tool arguments then stand alone): the listing must stay a few
milliseconds, not a crawl of a monorepo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Directory names never listed: version control and generated caches.
IGNORED = frozenset(
    {".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules",
     ".venv", ".tox", ".cfn"}
)  # fmt: skip
LIMIT = 20_000

Listing = dict[str, tuple[int, int]]


@dataclass(frozen=True)
class Changes:
    added: tuple[str, ...]
    modified: tuple[str, ...]
    deleted: tuple[str, ...]

    @property
    def changed(self) -> tuple[str, ...]:
        """Added and modified files, in path order (what the agent's work left)."""
        return tuple(sorted(self.added + self.modified))

    def __bool__(self) -> bool:
        return bool(self.added or self.modified or self.deleted)


def listing(root: Path, limit: int = LIMIT) -> Listing | None:
    """Every regular file below ``root`` (relative path: size, mtime in ns); None when
    there are more than ``limit`` of them or ``root`` cannot be read."""
    found: Listing = {}
    todo = [root]
    try:
        while todo:
            directory = todo.pop()
            with os.scandir(directory) as entries:
                for item in entries:
                    if item.is_dir(follow_symlinks=False):
                        if item.name not in IGNORED:
                            todo.append(Path(item.path))
                    elif item.is_file(follow_symlinks=False):
                        stat = item.stat(follow_symlinks=False)
                        found[os.path.relpath(item.path, root)] = (stat.st_size, stat.st_mtime_ns)
                        if len(found) > limit:
                            return None
    except OSError:
        return None
    return found


def compare(before: Listing | None, after: Listing | None) -> Changes | None:
    """What changed between two listings; None when either is missing."""
    if before is None or after is None:
        return None
    added = tuple(sorted(set(after) - set(before)))
    deleted = tuple(sorted(set(before) - set(after)))
    modified = tuple(sorted(p for p in set(after) & set(before) if after[p] != before[p]))
    return Changes(added, modified, deleted)


__all__ = ["IGNORED", "LIMIT", "Changes", "compare", "listing"]
