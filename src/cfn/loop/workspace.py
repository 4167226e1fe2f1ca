"""Did the implementers change the workspace? (the PROCEED-without-change rule)

A snapshot maps each file's relative path to its size and sha256, skipping
version-control and cfn's own directories. Comparing the snapshot taken when
the task started with one taken at decision time says which files were added,
changed or removed, whether or not the workspace is a git repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

SKIP_DIRS = {
    ".git",
    ".cfn",
    ".hg",
    ".svn",
    "__pycache__",
    ".venv",
    "node_modules",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
}
MAX_FILES = 20_000

#: Words that mark an epic as asking to build or change something.
BUILD_WORDS = re.compile(
    r"\b(build|create|implement|add|write|make|change|modify|fix|refactor|update|remove|delete|"
    r"rename|port|migrate|generate|scaffold|develop|rewrite|replace|introduce|extend|improve)\b",
    re.IGNORECASE,
)


def is_build_task(epic: str) -> bool:
    """True when the epic asks for a change (so PROCEED needs a changed workspace)."""
    return BUILD_WORDS.search(epic) is not None


def snapshot(root: Path) -> dict[str, str]:
    """``{relative path: "size:sha256"}`` of every regular file under ``root``."""
    result: dict[str, str] = {}
    if not root.is_dir():
        return result
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 16), b""):
                        digest.update(chunk)
                size = path.stat().st_size
            except OSError:
                # A file that vanished or cannot be read (an agent may leave anything)
                # is in the snapshot as unreadable, not the end of the loop.
                result[path.relative_to(root).as_posix()] = "unreadable"
                continue
            rel = path.relative_to(root).as_posix()
            result[rel] = f"{size}:{digest.hexdigest()}"
            if len(result) >= MAX_FILES:
                return result
    return result


class DiskWorkspace:
    """:class:`cfn.loop.ports.Workspace` on the file system (the task's directory)."""

    def prepare(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)

    def snapshot(self, root: Path) -> dict[str, str]:
        return snapshot(root)


@dataclass(frozen=True)
class Changes:
    added: list[str]
    modified: list[str]
    removed: list[str]

    @property
    def any(self) -> bool:
        return bool(self.added or self.modified or self.removed)

    def describe(self) -> str:
        if not self.any:
            return "no files added, changed or removed"
        parts = []
        for word, items in (
            ("added", self.added),
            ("changed", self.modified),
            ("removed", self.removed),
        ):
            if items:
                shown = ", ".join(items[:5]) + (" …" if len(items) > 5 else "")
                parts.append(f"{len(items)} {word} ({shown})")
        return "; ".join(parts)


def diff(before: dict[str, str], after: dict[str, str]) -> Changes:
    return Changes(
        added=sorted(set(after) - set(before)),
        modified=sorted(k for k in set(after) & set(before) if after[k] != before[k]),
        removed=sorted(set(before) - set(after)),
    )


def dumps(snap: dict[str, str]) -> str:
    return json.dumps(snap, sort_keys=True)


def loads(text: str) -> dict[str, str]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("snapshot must be a JSON object")
    return {str(k): str(v) for k, v in data.items()}
