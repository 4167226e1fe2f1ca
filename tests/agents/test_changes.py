"""Files an agent changed in its workspace, by listing it before and after."""

from __future__ import annotations

import os
from pathlib import Path

from cfn.agents.changes import compare, listing


def test_added_modified_deleted_and_what_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("same")
    (tmp_path / "edit.py").write_text("a = 1\n")
    (tmp_path / "gone.md").write_text("x")
    (tmp_path / "src").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("never listed")
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)
    before = listing(tmp_path)
    assert before is not None and "link/secret.txt" not in before  # links not followed

    (tmp_path / "edit.py").write_text("a = 22\n")  # a new size
    os.utime(tmp_path / "keep.txt", ns=(0, (before["keep.txt"][1])))  # same size, same time
    (tmp_path / "gone.md").unlink()
    (tmp_path / "src" / "new.py").write_text("print(1)\n")
    for cache in (".git", "__pycache__", "node_modules"):
        (tmp_path / cache).mkdir(exist_ok=True)
        (tmp_path / cache / "noise").write_text("generated")
    found = compare(before, listing(tmp_path))
    assert found is not None
    assert found.added == ("src/new.py",) and found.modified == ("edit.py",)
    assert found.deleted == ("gone.md",) and found.changed == ("edit.py", "src/new.py")
    assert compare(before, before) is not None and not compare(before, before)


def test_a_workspace_too_large_to_list_is_not_listed(tmp_path: Path) -> None:
    for n in range(6):
        (tmp_path / f"f{n}").write_text("x")
    assert listing(tmp_path, limit=5) is None
    assert compare(None, listing(tmp_path)) is None
    assert listing(tmp_path / "missing") is None
