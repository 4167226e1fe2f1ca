"""The skills registry: a skill is a file in the project, known by name and sha256.

``cfn skills add PATH`` accepts a skill directory (holding ``SKILL.md``), a
``SKILL.md`` (named after its directory) or any other file (named after its
stem). The stored ``content_path`` is relative to the project root, so one
database serves every checkout and worktree of the project. Everything is
checked before the store is touched: a rejected skill writes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cfn.errors import InvalidInputError
from cfn.store import validation as check
from cfn.store.records import SkillChange, SkillRecord
from cfn.store.repository import Store

SKILL_FILE = "SKILL.md"
MAX_SKILL_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class SkillSource:
    name: str
    content_path: str
    content_hash: str


def read_skill_source(path: str | Path, project_root: Path, name: str | None = None) -> SkillSource:
    """Validate ``path`` and hash its content; nothing is written."""
    root = project_root.resolve()
    given = Path(path).expanduser()
    candidate = (given if given.is_absolute() else Path.cwd() / given).resolve()
    if not candidate.is_relative_to(root):
        raise InvalidInputError(
            f"skill path {str(path)!r} is outside the project ({root}); skills must live in it"
        )
    if candidate.is_dir():
        directory = candidate
        candidate = candidate / SKILL_FILE
        default_name = directory.name
        if not candidate.is_file():
            raise InvalidInputError(f"skill directory {str(path)!r} has no {SKILL_FILE}")
    elif candidate.is_file():
        default_name = candidate.parent.name if candidate.name == SKILL_FILE else candidate.stem
    else:
        raise InvalidInputError(f"skill file {str(path)!r} does not exist")
    if candidate == root / SKILL_FILE and name is None:
        raise InvalidInputError(f"{SKILL_FILE} at the project root has no name: pass --name")
    size = candidate.stat().st_size
    if size > MAX_SKILL_BYTES:
        raise InvalidInputError(
            f"skill file {str(path)!r} is {size} bytes; the limit is {MAX_SKILL_BYTES}"
        )
    digest = hashlib.sha256(candidate.read_bytes()).hexdigest()
    return SkillSource(
        name=check.skill_name(name if name is not None else default_name),
        content_path=candidate.relative_to(root).as_posix(),
        content_hash=digest,
    )


def add_skill(
    store: Store, path: str | Path, project_root: Path, name: str | None = None
) -> tuple[SkillRecord, SkillChange]:
    """Register (or refresh) the skill at ``path``."""
    source = read_skill_source(path, project_root, name)
    return store.upsert_skill(source.name, source.content_hash, source.content_path)


def verify_skill(record: SkillRecord, project_root: Path) -> bool | None:
    """Does the file still hash to the stored value? None when it is gone."""
    if record.content_path is None:
        return None
    file = project_root.resolve() / record.content_path
    if not file.is_file():
        return None
    return hashlib.sha256(file.read_bytes()).hexdigest() == record.content_hash
