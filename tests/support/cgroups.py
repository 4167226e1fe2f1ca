"""A cgroup v1 group of its own for each pytest process (xdist worker or plain run).

cfn puts each agent in ``<the starter's own cgroup>/cfn/cfn-agent-<agent>-<task>``. The
tests use fixed task ids ("T", "t1") in many places, and the cpu hierarchy is usually
"/" for every process on the machine, so two pytest processes running at once (xdist
workers, or another checkout's suite) would create, reuse and remove the same groups
under each other's agents. Moving the test process into a group of its own first makes
every agent group it (and its children: orchestrators, shims) creates private to it,
while cfn's code under test runs unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpu")


def _own(controller: str) -> str:
    """This process's path in ``controller``'s v1 hierarchy ("/" when not found)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and controller in parts[1].split(","):
                return parts[2] or "/"
    return "/"


def _remove_tree(top: Path) -> None:
    """rmdir the group and any empty groups left under it, deepest first."""
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


@contextlib.contextmanager
def private_cgroups(label: str) -> Iterator[list[Path]]:
    """Join ``<own>/<label>`` in each writable v1 hierarchy; back out and remove afterwards.

    Where cgroups are not writable (no v1 mount, not root) nothing happens: cfn then
    falls back to RLIMIT_AS and makes no groups, so there is nothing to share either.
    """
    pid = str(os.getpid())
    joined: list[tuple[Path, Path]] = []  # (previous group, our group)
    for controller in CONTROLLERS:
        base = ROOT / controller
        if not (base / "cgroup.procs").is_file():
            continue
        previous = base / _own(controller).strip("/")
        if not (previous / "cgroup.procs").is_file():
            continue
        mine = previous / label
        try:
            mine.mkdir(exist_ok=True)
            (mine / "cgroup.procs").write_text(pid)
        except OSError:
            _remove_tree(mine)
            continue
        joined.append((previous, mine))
    try:
        yield [mine for _previous, mine in joined]
    finally:
        for previous, mine in reversed(joined):
            # Ourselves, and daemons started here that outlive the run by design (cfn's
            # podman service), go back to where we came from, so the group can go.
            for member in [pid, *_members(mine)]:
                with contextlib.suppress(OSError):
                    (previous / "cgroup.procs").write_text(member)
            _remove_tree(mine)


def _members(group: Path) -> list[str]:
    try:
        return (group / "cgroup.procs").read_text().split()
    except OSError:
        return []
