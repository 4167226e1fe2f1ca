"""Opening beneath a directory: the kernel's check at open time, a symlink swapped in
by a racing process included, and the component walk used where openat2 is missing."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfn.agents.tools import MAX_READ, Workspace, execute
from cfn.providers.types import ToolCall
from cfn.system import beneath
from cfn.system.beneath import EscapeError, makedirs_beneath, open_beneath


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "inside.txt").write_text("inside")
    (tmp_path / "outside.txt").write_text("outside-secret")
    (ws / "in-link").symlink_to("sub/inside.txt")  # relative: openat2 follows it
    (ws / "out-link").symlink_to(tmp_path / "outside.txt")
    (ws / "out-dir").symlink_to(tmp_path)
    fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield ws, fd
    finally:
        os.close(fd)


def read(fd: int) -> str:
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)


@pytest.mark.parametrize("opener", ["openat2", "walk"])
def test_inside_opens_and_every_way_out_is_refused(root: tuple[Path, int], opener: str) -> None:
    _ws, fd = root

    def open_(path: str, flags: int = os.O_RDONLY) -> int:
        if opener == "walk":
            return beneath._walk(fd, path, flags | os.O_CLOEXEC, 0o644)
        return open_beneath(fd, path, flags)

    if opener == "openat2":
        assert beneath._has_openat2()
        # Symlinks that stay inside are followed by openat2 (the walk follows none).
        assert read(open_("in-link")) == "inside"
    assert read(open_("sub/inside.txt")) == "inside"
    assert read(open_("sub/../sub/inside.txt")) == "inside"
    for way_out in ("../outside.txt", "sub/../../outside.txt", "out-link", "out-dir/outside.txt"):
        with pytest.raises(EscapeError):
            open_(way_out)
    with pytest.raises(EscapeError):
        open_beneath(fd, "/etc/passwd", os.O_RDONLY)
    with pytest.raises(FileNotFoundError):
        open_("sub/nope.txt")


def test_makedirs_beneath(root: tuple[Path, int]) -> None:
    ws, fd = root
    makedirs_beneath(fd, "a/b/c")
    assert (ws / "a" / "b" / "c").is_dir()
    makedirs_beneath(fd, "a/b/c")  # again: nothing to do
    with pytest.raises(EscapeError):
        makedirs_beneath(fd, "out-dir/made")
    with pytest.raises(EscapeError):
        makedirs_beneath(fd, "../made")
    assert not (ws.parent / "made").exists()


def test_a_symlink_swapped_in_while_reading_never_leads_out(tmp_path: Path) -> None:
    """Another process flips ``victim`` between a file inside and a symlink to a secret
    outside as fast as it can; the tool reads it thousands of times meanwhile."""
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    (ws.root / "real.txt").write_text("harmless")
    (tmp_path / "secret.txt").write_text("outside-secret")
    stop = threading.Event()

    def flip() -> None:
        victim, spare = ws.root / "victim", ws.root / "spare"
        while not stop.is_set():
            spare.unlink(missing_ok=True)
            spare.symlink_to(tmp_path / "secret.txt")
            os.replace(spare, victim)
            spare.write_text("harmless")
            os.replace(spare, victim)

    flipper = threading.Thread(target=flip)
    flipper.start()
    seen = {"harmless": 0, "refused": 0, "other": 0}
    try:
        for _ in range(3000):
            try:
                text = ws.read_file("victim")
            except Exception as exc:
                key = "refused" if "outside the workspace" in str(exc) else "other"
            else:
                assert "outside-secret" not in text
                key = "harmless"
            seen[key] += 1
    finally:
        stop.set()
        flipper.join()
    assert seen["harmless"] > 0 and seen["refused"] > 0, seen


async def test_reads_are_bounded_and_a_fifo_does_not_hang(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    with open(tmp_path / "huge.bin", "wb") as handle:
        handle.truncate(512 * 1024 * 1024)  # sparse: 512 MiB the read must not load
    os.mkfifo(tmp_path / "pipe")
    text = await execute(ws, ToolCall(id="1", name="read_file", arguments='{"path": "huge.bin"}'))
    assert len(text) < MAX_READ + 200 and "truncated" in text
    fifo = await execute(ws, ToolCall(id="2", name="read_file", arguments='{"path": "pipe"}'))
    assert fifo == "error: 'pipe' is not a file"
    wrote = await execute(
        ws, ToolCall(id="3", name="write_file", arguments='{"path": "pipe", "content": "x"}')
    )
    assert wrote.startswith("error:")
