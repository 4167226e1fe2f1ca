"""Processes as /proc shows them: state, start time, CPU time, environment, argv.

A pid alone is not an identity (pids are reused); every "is it still ours"
check here pairs it with the process's start time (field 22 of its stat
file), which never changes for the life of a process. Standard library only:
the agent supervisor imports this once per agent.
"""

from __future__ import annotations

import contextlib
import os

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def proc_stat_fields(pid: int, *numbers: int) -> list[int] | None:
    """Fields of /proc/<pid>/stat by their number in proc(5) (``3`` is the state,
    ``5`` the process group...); None when the process is gone or a field is
    missing. The command name (field 2) may hold spaces and parentheses, so the
    fields are counted from after its last ``)``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return [int(fields[n - 3]) for n in numbers]
    except (IndexError, ValueError):
        return None


def proc_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: the process start time, stable for its life."""
    found = proc_stat_fields(pid, 22)
    return None if found is None else found[0]


def proc_cpu_ticks(pid: int) -> int | None:
    """Fields 14 + 15 of /proc/<pid>/stat: the CPU time (user + system, in clock
    ticks) the process has used so far; None once it is gone."""
    found = proc_stat_fields(pid, 14, 15)
    return None if found is None else found[0] + found[1]


def proc_rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def proc_group_members(pgid: int) -> set[int]:
    """Every process whose process group is ``pgid`` (a scan of /proc)."""
    members: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = proc_stat_fields(int(entry.name), 5)
            if found is not None and found[0] == pgid:
                members.add(int(entry.name))
    return members


def proc_descendants(root: int) -> set[int]:
    """Every live process below ``root`` (a scan of /proc: parent links, ppid is field 4)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = proc_stat_fields(int(entry.name), 4)
            if found is not None:
                children.setdefault(found[0], []).append(int(entry.name))
    seen: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def identities(pids: set[int]) -> set[tuple[int, int]]:
    """``(pid, start ticks)`` of each live one of ``pids``: what identifies a process
    later, when its pid may have been reused (one gone meanwhile is left out)."""
    found = {(pid, proc_start_ticks(pid)) for pid in pids}
    return {(pid, ticks) for pid, ticks in found if ticks is not None}


def still_alive(known: set[tuple[int, int]]) -> set[int]:
    """The pids of ``known`` (from ``identities``) that are still those processes."""
    return {pid for pid, ticks in known if proc_alive(pid, ticks)}


def signal_tree(pids: set[int], signum: int) -> None:
    """``signum`` to each of ``pids`` and to the process group each leads or sits in
    (a command started with ``setsid`` leads a group and session of its own).

    Never to the caller's own group or the caller itself: a process started without a
    group of its own (``cfn agent run`` from a shell or a test) shares its starter's
    group, and signalling that group would reach the starter."""
    own_group, own_pid = os.getpgrp(), os.getpid()
    pids = pids - {own_pid}
    groups: set[int] = set()
    for pid in pids:
        found = proc_stat_fields(pid, 5)
        if found is not None and found[0] > 1 and found[0] != own_group:
            groups.add(found[0])
    for group in groups:
        signal_pid(group, signum, group=True)
    for pid in pids:
        signal_pid(pid, signum)


#: prctl(2) option: orphans below this process are reparented to it, not to init.
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process its descendants' reaper: what they leave behind when their
    parent dies (a tool's ``setsid`` command) stays below it, findable and killable.
    False where prctl is not available."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def proc_state(pid: int) -> str | None:
    """The one-letter state (R, S, Z, ...) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :][:1].decode() or None


def proc_alive(pid: object, start_ticks: object = None) -> bool:
    """Whether ``pid`` (as read from a state file: anything) is a live process, not a
    zombie, and still the one that started at ``start_ticks`` (when given)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    state = proc_state(pid)
    if state is None or state == "Z":
        return False
    return start_ticks is None or proc_start_ticks(pid) == start_ticks


def proc_environ(pid: int) -> dict[str, str] | None:
    """The environment a process started with; None when it is gone or not ours to read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            env[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def proc_comm(pid: int) -> str | None:
    """The process's name (``/proc/<pid>/comm``, 15 bytes at most); None when it is gone."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as handle:
            return handle.read().decode(errors="replace").rstrip("\n")
    except OSError:
        return None


def proc_cmdline(pid: int) -> list[str]:
    """The argv of a process ([] when it is gone, or a zombie, whose argv is empty)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def signal_pid(pid: int, signum: int, *, group: bool = False) -> bool:
    """Send ``signum`` to a process (or its process group); False when it is gone.

    A process that exists but is not ours to signal counts as there (True):
    the caller's liveness check, not this, decides what to do about it.
    """
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap(pid: int) -> None:
    """Collect a child's exit status if it is ours and has ended (no zombie left)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
