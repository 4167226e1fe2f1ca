"""Memory and CPU groups for one process tree, on cgroup v1 or v2, whichever is there.

The rule, per controller: its v1 hierarchy (``<root>/<controller>``, mounted
as ``cgroup``) when one is mounted, otherwise the unified hierarchy (``<root>``
itself, or ``<root>/unified`` on hybrid machines) when its
``cgroup.controllers`` offers the controller. Hybrid machines mount both, and
their unified hierarchy often offers nothing useful (only ``hugetlb``), so v1
comes first; pure v2 machines have no per-controller mounts.

Groups go to ``<own cgroup>/cfn/<name>`` so that whatever limits the caller
already lives under still apply. The same figures map to each version's
files: limit ``memory.limit_in_bytes`` / ``memory.max``, reservation
``memory.soft_limit_in_bytes`` / ``memory.low``, CPU quota
``cpu.cfs_quota_us`` / ``cpu.max``, CPU weight ``cpu.shares`` /
``cpu.weight``. Which version a group directory belongs to is read from the
directory itself (v2 groups have ``cgroup.controllers``), so a recorded path is
all a later caller needs.

Standard library only, no ``typing``: the agent supervisor imports this once
per agent. ``root`` points tests at a directory laid out like a hierarchy.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time

TYPE_CHECKING = False  # not typing's: importing typing costs ~5 ms, once per agent
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CGROUP_ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("memory", "cpu")
CFS_PERIOD_US = 100_000
CFS_PERIOD_MIN_US = 1_000
CFS_PERIOD_MAX_US = 1_000_000
CFS_QUOTA_MIN_US = 1_000
RMDIR_WAIT = 2.0
#: cpu.shares of one CPU (v1's default weight of a group or a task).
SHARES_PER_CPU = 1024
SHARES_MIN = 2
#: cpu.weight of one CPU (v2's default weight), and its range.
WEIGHT_PER_CPU = 100
WEIGHT_MIN = 1
WEIGHT_MAX = 10_000


def cpu_shares(cpus: float) -> int:
    """The v1 weight of a CPU reservation: 1024 per CPU, as Kubernetes maps CPU requests."""
    return max(SHARES_MIN, round(cpus * SHARES_PER_CPU))


def cpu_weight(cpus: float) -> int:
    """The v2 weight of a CPU reservation: 100 (the default weight) per CPU, so
    groups keep the proportions v1's shares give them."""
    return max(WEIGHT_MIN, min(WEIGHT_MAX, round(cpus * WEIGHT_PER_CPU)))


# --- where the hierarchies are -----------------------------------------------------------


def unified_root(root: str = CGROUP_ROOT) -> str | None:
    """The cgroup2 hierarchy: ``root`` on pure v2 machines, ``root/unified`` on hybrid ones."""
    for path in (root, os.path.join(root, "unified")):
        if os.path.isfile(os.path.join(path, "cgroup.controllers")):
            return path
    return None


def _v1_mount(controller: str, root: str) -> str | None:
    base = os.path.join(root, controller)
    procs = os.path.isfile(os.path.join(base, "cgroup.procs"))
    # A cgroup2 group that happens to be called "memory" is not a v1 mount.
    if procs and not os.path.isfile(os.path.join(base, "cgroup.controllers")):
        return base
    return None


def hierarchy(controller: str, root: str = CGROUP_ROOT) -> tuple[int, str] | None:
    """``(version, mount point)`` that serves ``controller`` here (v1 first), or None."""
    base = _v1_mount(controller, root)
    if base is not None:
        return 1, base
    unified = unified_root(root)
    if unified is not None:
        offered = (_read(os.path.join(unified, "cgroup.controllers")) or "").split()
        if controller in offered:
            return 2, unified
    return None


def own_cgroup(controller: str, proc_file: str = "/proc/self/cgroup") -> str:
    """This process's cgroup path in ``controller``'s v1 hierarchy, or in the unified
    one for ``controller == ""`` (its ``0::`` line); "/" if unknown."""
    try:
        with open(proc_file) as handle:
            for line in handle:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3 and controller in parts[1].split(","):
                    return parts[2] or "/"
    except OSError:
        pass
    return "/"


def _own_dir(controller: str, root: str) -> tuple[int, str] | None:
    """``(version, this process's group directory)`` in ``controller``'s hierarchy."""
    found = hierarchy(controller, root)
    if found is None:
        return None
    version, base = found
    own = os.path.join(base, own_cgroup(controller if version == 1 else "").strip("/"))
    return version, own if os.path.isdir(own) else base


def cgroup_dir(controller: str, name: str, root: str = CGROUP_ROOT) -> str | None:
    """Where a group goes: ``<own cgroup>/cfn/<name>``; None when no hierarchy serves
    ``controller``."""
    found = _own_dir(controller, root)
    return None if found is None else os.path.join(found[1], "cfn", name)


def is_v2(path: str) -> bool:
    """Whether a group directory belongs to the unified hierarchy."""
    return os.path.isfile(os.path.join(path, "cgroup.controllers"))


# --- files -------------------------------------------------------------------------------


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _keyed(path: str) -> dict[str, int]:
    """``name value`` lines (memory.oom_control, memory.events, cpu.stat) as a dict."""
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[name] = int(value)
    return out


def _enable(group: str, controller: str) -> None:
    """v2: let ``group``'s children use ``controller`` (a no-op when they already may;
    writing again could fail with EBUSY in a group that holds processes)."""
    control = os.path.join(group, "cgroup.subtree_control")
    if controller not in (_read(control) or "").split():
        _write(control, f"+{controller}")


# --- the groups --------------------------------------------------------------------------


class Cgroups:
    """One process tree's memory and cpu groups (``paths``: controller -> group dir;
    on v2 both controllers share one directory). ``versions`` (controller -> 1 or 2)
    is known when the groups are made here; for recorded paths it is read from
    the directories."""

    def __init__(self, paths: dict[str, str], versions: dict[str, int] | None = None) -> None:
        self.paths = paths
        self.versions = versions if versions is not None else {}

    def _v2(self, controller: str) -> bool:
        version = self.versions.get(controller)
        if version is None:
            return is_v2(self.paths[controller])
        return version == 2

    @classmethod
    def create(
        cls,
        name: str,
        memory_bytes: int | None,
        cpus: float | None,
        root: str = CGROUP_ROOT,
        *,
        cpu_burst: float = 0.0,
        cpu_period_us: int = CFS_PERIOD_US,
    ) -> Cgroups:
        """Create and configure the groups; OSError when no writable hierarchy serves them."""
        wanted = {"memory": memory_bytes is not None, "cpu": cpus is not None}
        paths: dict[str, str] = {}
        versions: dict[str, int] = {}
        made = cls(paths, versions)
        try:
            for controller, needed in wanted.items():
                if not needed:
                    continue
                found = _own_dir(controller, root)
                if found is None:
                    raise OSError(errno.ENOENT, f"no cgroup hierarchy offers {controller}")
                version, own = found
                path = os.path.join(own, "cfn", name)
                if controller not in paths and path not in paths.values() and os.path.isdir(path):
                    _remove_stale(path)
                prepare = None
                if version == 2:

                    def prepare(shared: str, own: str = own, controller: str = controller) -> None:
                        _enable(own, controller)
                        _enable(shared, controller)

                if path not in paths.values():
                    _mkdir_under_shared_parent(path, prepare)
                elif prepare is not None:
                    prepare(os.path.dirname(path))
                paths[controller] = path
                versions[controller] = version
            made._add_cpu_accounting(name, root)
            if memory_bytes is not None:
                made._set_memory_limit(memory_bytes)
            if cpus is not None:
                made.set_cpu_quota(cpus, burst=cpu_burst, period_us=cpu_period_us)
        except OSError:
            made.remove()
            raise
        return made

    def _add_cpu_accounting(self, name: str, root: str) -> None:
        """On cgroup v1, the group's CPU time is kept by its own controller (``cpuacct``):
        a group there too, when it is mounted (alone or with ``cpu``). On v2 every group's
        ``cpu.stat`` has it already. Best effort: no accounting group is no error."""
        if not self.paths or "cpuacct" in self.paths or _v1_mount("cpuacct", root) is None:
            return
        found = _own_dir("cpuacct", root)
        if found is None:
            return
        path = os.path.join(found[1], "cfn", name)
        try:
            if path not in self.paths.values():
                if os.path.isdir(path):
                    _remove_stale(path)
                _mkdir_under_shared_parent(path)
        except OSError:
            return
        self.paths["cpuacct"] = path
        self.versions["cpuacct"] = 1

    def cpu_usage(self) -> float | None:
        """CPU seconds the group's tasks used, every process that was ever in it counted
        (what wait4 cannot see of processes their parent never waited for)."""
        acct = self.paths.get("cpuacct")
        if acct:
            usage = _read_int(os.path.join(acct, "cpuacct.usage"))
            return None if usage is None else usage / 1e9
        for controller, path in self.paths.items():
            if self._v2(controller):
                usec = _keyed(os.path.join(path, "cpu.stat")).get("usage_usec")
                return None if usec is None else usec / 1e6
        return None

    def _set_memory_limit(self, memory_bytes: int) -> None:
        mem = self.paths["memory"]
        if self._v2("memory"):
            _write(os.path.join(mem, "memory.max"), str(memory_bytes))
            swap, value = os.path.join(mem, "memory.swap.max"), "0"
        else:
            _write(os.path.join(mem, "memory.limit_in_bytes"), str(memory_bytes))
            swap, value = os.path.join(mem, "memory.memsw.limit_in_bytes"), str(memory_bytes)
        if os.path.exists(swap):
            # Without this the process could page out past its limit.
            with contextlib.suppress(OSError):
                _write(swap, value)

    def set_memory_reservation(self, memory_bytes: int) -> None:
        """What the group keeps under memory pressure: reclaimed from first above it
        (v1's soft limit, v2's ``memory.low``)."""
        mem = self.paths.get("memory")
        if mem:
            name = "memory.low" if self._v2("memory") else "memory.soft_limit_in_bytes"
            _write(os.path.join(mem, name), str(memory_bytes))

    def set_cpu_quota(
        self, cpus: float | None, *, burst: float = 0.0, period_us: int = CFS_PERIOD_US
    ) -> None:
        """CFS bandwidth for ``cpus`` CPUs per period of ``period_us`` (None: unlimited).

        ``burst`` (0 to 1) lets the group run up to that fraction of a period's quota
        above it when earlier periods left quota unused (``cpu.cfs_burst_us`` on v1,
        ``cpu.max.burst`` on v2, Linux 5.14+; ignored where the kernel has neither):
        the average stays at ``cpus`` while a multi-threaded start-up is not cut to
        one CPU. 0 is the strict quota ``docker --cpus`` sets. A new group starts
        with its burst available. The longer the period, the larger the burst (the
        kernel caps it at one period's quota) and the longer a group that spent its
        quota waits for the next period; 1 ms to 1 s.
        """
        cpu = self.paths.get("cpu")
        if not cpu:
            return
        if not CFS_PERIOD_MIN_US <= period_us <= CFS_PERIOD_MAX_US:
            raise ValueError(f"CPU period {period_us} us is outside 1 ms to 1 s")
        quota = None if cpus is None else max(CFS_QUOTA_MIN_US, int(cpus * period_us))
        # The kernel refuses a burst above the quota.
        burst_us = 0 if quota is None else int(quota * min(1.0, max(0.0, burst)))
        if self._v2("cpu"):
            self._set_burst(os.path.join(cpu, "cpu.max.burst"), 0)
            _write(os.path.join(cpu, "cpu.max"), f"{quota or 'max'} {period_us}")
            self._set_burst(os.path.join(cpu, "cpu.max.burst"), burst_us)
            return
        if quota is not None:
            _write(os.path.join(cpu, "cpu.cfs_period_us"), str(period_us))
        # The burst first: a lower quota is refused while an older, larger burst exceeds it.
        self._set_burst(os.path.join(cpu, "cpu.cfs_burst_us"), 0)
        _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(quota if quota is not None else -1))
        self._set_burst(os.path.join(cpu, "cpu.cfs_burst_us"), burst_us)

    @staticmethod
    def _set_burst(path: str, burst_us: int) -> None:
        if os.path.exists(path):
            _write(path, str(burst_us))

    def set_cpu_weight(self, cpus: float | None) -> None:
        """The CPU reservation as a weight among sibling groups (None: the default,
        one CPU's worth): ``cpu.shares`` on v1, ``cpu.weight`` on v2."""
        cpu = self.paths.get("cpu")
        if not cpu:
            return
        if self._v2("cpu"):
            weight = WEIGHT_PER_CPU if cpus is None else cpu_weight(cpus)
            _write(os.path.join(cpu, "cpu.weight"), str(weight))
        else:
            shares = SHARES_PER_CPU if cpus is None else cpu_shares(cpus)
            _write(os.path.join(cpu, "cpu.shares"), str(shares))

    def memory_usage(self) -> int | None:
        """Bytes the group uses now (``memory.usage_in_bytes`` / ``memory.current``)."""
        mem = self.paths.get("memory")
        if not mem:
            return None
        name = "memory.current" if self._v2("memory") else "memory.usage_in_bytes"
        return _read_int(os.path.join(mem, name))

    def memory_limit(self) -> int | None:
        """The group's memory limit in bytes (None: none set, or no memory group)."""
        mem = self.paths.get("memory")
        if not mem:
            return None
        name = "memory.max" if self._v2("memory") else "memory.limit_in_bytes"
        return _read_int(os.path.join(mem, name))  # v2's "max" (unlimited) reads as None

    def join(self, pid: int) -> None:
        for path in dict.fromkeys(self.paths.values()):
            _write(os.path.join(path, "cgroup.procs"), str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in dict.fromkeys(self.paths.values()):
            for line in (_read(os.path.join(path, "cgroup.procs")) or "").split():
                with contextlib.suppress(ValueError):
                    found.add(int(line))
        return found

    def signal_all(self, signum: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def stats(self) -> dict[str, Any]:
        """OOM kills, limit hits, peak memory and CPU throttling, as v1 names them."""
        stats: dict[str, Any] = {}
        mem = self.paths.get("memory")
        if mem and self._v2("memory"):
            events = _keyed(os.path.join(mem, "memory.events"))
            stats["oom_kills"] = events.get("oom_kill", 0)
            stats["memory_failcnt"] = events.get("max")
            stats["max_memory_bytes"] = _read_int(os.path.join(mem, "memory.peak"))
        elif mem:
            stats["oom_kills"] = _keyed(os.path.join(mem, "memory.oom_control")).get("oom_kill", 0)
            stats["memory_failcnt"] = _read_int(os.path.join(mem, "memory.failcnt"))
            stats["max_memory_bytes"] = _read_int(os.path.join(mem, "memory.max_usage_in_bytes"))
        cpu = self.paths.get("cpu")
        if cpu:
            cpu_stat = _keyed(os.path.join(cpu, "cpu.stat"))
            stats["cpu_throttled"] = cpu_stat.get("nr_throttled", 0)
        usage = self.cpu_usage()
        if usage is not None:
            stats["cpu_usage_seconds"] = round(usage, 6)
        return stats

    def remove(self, wait: float = RMDIR_WAIT) -> None:
        """Remove the groups once their last task is gone (killing stragglers)."""
        deadline = time.monotonic() + wait
        for path in dict.fromkeys(self.paths.values()):
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        break
                    # Killed tasks take a moment to leave the group: bounded cleanup wait.
                    for pid in self.pids():
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(pid, signal.SIGKILL)
                    time.sleep(0.01)
            # The shared ``cfn`` parent goes too once empty, so nothing of ours is left
            # under the cgroup we were started in (whoever owns it can remove it).
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))


def _mkdir_under_shared_parent(path: str, prepare: Callable[[str], None] | None = None) -> None:
    """mkdir ``.../cfn/<name>``; the shared ``cfn`` parent may vanish under us when the
    last other user removes it, so create it again and retry. ``prepare`` runs on
    the parent before the group is made (v2: enabling the controllers)."""
    shared = os.path.dirname(path)
    for _ in range(5):
        os.makedirs(shared, exist_ok=True)
        try:
            if prepare is not None:
                prepare(shared)
            os.mkdir(path)
            return
        except FileNotFoundError:
            continue
    if prepare is not None:
        prepare(shared)
    os.mkdir(path)


def _remove_stale(path: str) -> None:
    """A group left by an earlier run of the same name: reuse only if empty."""
    procs = (_read(os.path.join(path, "cgroup.procs")) or "").split()
    if procs:
        raise OSError(errno.EBUSY, f"cgroup {path} still holds processes {' '.join(procs)}")
    os.rmdir(path)


def cgroups_writable(root: str = CGROUP_ROOT) -> bool:
    """True when memory and cpu groups can be created here (probe: create + remove)."""
    probe = f"probe-{os.getpid()}-{time.monotonic_ns()}"
    try:
        groups = Cgroups.create(probe, 64 * 1024 * 1024, 1.0, root)
    except OSError:
        return False
    groups.remove()
    return True
