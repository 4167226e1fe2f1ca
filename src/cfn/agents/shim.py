"""The per-agent supervisor: limits, timeout, exit record (what ``docker run -d`` gives).

The process spawner does not run an agent directly. It starts this small
supervisor (``python -I -S shim.py SPEC READY_FD``, in its own session), which

1. creates the agent's cgroup v1 groups (``memory`` and ``cpu``, nested as
   ``cfn/<name>`` under the supervisor's own cgroup, so whatever limits the
   orchestrator already lives under still apply) and sets the limits, or
   falls back to RLIMIT_AS where cgroups are not writable;
2. starts the agent, which joins those groups itself before it execs
   (``preexec``), so not one instruction of the agent runs unlimited;
3. tells the spawner the agent's pid through READY_FD, and records
   ``state.json`` (pids and start times, for re-attaching later);
4. waits for the agent's exit on a pidfd (no polling), enforcing the timeout
   (SIGTERM, then SIGKILL after the grace) and obeying SIGTERM (stop
   gracefully) and SIGUSR1 (kill now) sent to it;
5. writes ``exit.json``: exit code, signal, timed out, killed, OOM-killed
   (``memory.oom_control``'s ``oom_kill``), peak memory, CPU time; then
   removes the groups.

Because the supervisor, not the orchestrator, holds all of this, an agent
keeps its limits and timeout and still gets an exit record when the
orchestrator crashes; a restarted orchestrator re-attaches and reads it.

The supervisor itself stays outside the agent's groups: the OOM killer takes
the agent, never the one process that reports it. This module uses only the
standard library (it runs with ``-I``, without cfn's dependencies), and the
spawner imports its helpers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing costs ~5 ms, once per agent
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CGROUP_ROOT = "/sys/fs/cgroup"
CFS_PERIOD_US = 100_000
CFS_QUOTA_MIN_US = 1_000
STATE_FILE = "state.json"
EXIT_FILE = "exit.json"
LOG_TAIL_BYTES = 8192
RMDIR_WAIT = 2.0


# --- /proc ----------------------------------------------------------------------------


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


def proc_state(pid: int) -> str | None:
    """The one-letter state (R, S, Z, ...) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :][:1].decode() or None


# --- cgroup v1 --------------------------------------------------------------------------


def own_cgroup(controller: str, proc_file: str = "/proc/self/cgroup") -> str:
    """This process's cgroup path in ``controller``'s v1 hierarchy ("/" if unknown)."""
    try:
        with open(proc_file) as handle:
            for line in handle:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3 and controller in parts[1].split(","):
                    return parts[2] or "/"
    except OSError:
        pass
    return "/"


def cgroup_dir(controller: str, name: str, root: str = CGROUP_ROOT) -> str | None:
    """Where the agent's group goes: ``<own cgroup>/cfn/<name>``; None without v1 mount."""
    base = os.path.join(root, controller)
    if not os.path.isfile(os.path.join(base, "cgroup.procs")):
        return None
    own = os.path.join(base, own_cgroup(controller).strip("/"))
    parent = own if os.path.isdir(own) else base
    return os.path.join(parent, "cfn", name)


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
    """``name value`` lines (memory.oom_control, cpu.stat) as a dict."""
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[name] = int(value)
    return out


class Cgroups:
    """The agent's memory and cpu groups."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    @classmethod
    def create(
        cls, name: str, memory_bytes: int | None, cpus: float | None, root: str = CGROUP_ROOT
    ) -> Cgroups:
        """Create and configure the groups; OSError when cgroup v1 is not writable."""
        wanted = {"memory": memory_bytes is not None, "cpu": cpus is not None}
        paths: dict[str, str] = {}
        made = cls(paths)
        try:
            for controller, needed in wanted.items():
                if not needed:
                    continue
                path = cgroup_dir(controller, name, root)
                if path is None:
                    raise OSError(errno.ENOENT, f"no cgroup v1 {controller} hierarchy")
                if os.path.isdir(path):
                    _remove_stale(path)
                _mkdir_under_shared_parent(path)
                paths[controller] = path
            if memory_bytes is not None:
                mem = paths["memory"]
                _write(os.path.join(mem, "memory.limit_in_bytes"), str(memory_bytes))
                memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
                if os.path.exists(memsw):
                    # Without this an agent could page out past its limit.
                    with contextlib.suppress(OSError):
                        _write(memsw, str(memory_bytes))
            if cpus is not None:
                cpu = paths["cpu"]
                quota = max(CFS_QUOTA_MIN_US, int(cpus * CFS_PERIOD_US))
                _write(os.path.join(cpu, "cpu.cfs_period_us"), str(CFS_PERIOD_US))
                _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(quota))
        except OSError:
            made.remove()
            raise
        return made

    def join(self, pid: int) -> None:
        for path in self.paths.values():
            _write(os.path.join(path, "cgroup.procs"), str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths.values():
            for line in (_read(os.path.join(path, "cgroup.procs")) or "").split():
                with contextlib.suppress(ValueError):
                    found.add(int(line))
        return found

    def signal_all(self, signum: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        mem = self.paths.get("memory")
        if mem:
            stats["oom_kills"] = _keyed(os.path.join(mem, "memory.oom_control")).get("oom_kill", 0)
            stats["memory_failcnt"] = _read_int(os.path.join(mem, "memory.failcnt"))
            stats["max_memory_bytes"] = _read_int(os.path.join(mem, "memory.max_usage_in_bytes"))
        cpu = self.paths.get("cpu")
        if cpu:
            cpu_stat = _keyed(os.path.join(cpu, "cpu.stat"))
            stats["cpu_throttled"] = cpu_stat.get("nr_throttled", 0)
        return stats

    def remove(self, wait: float = RMDIR_WAIT) -> None:
        """Remove the groups once their last task is gone (killing stragglers)."""
        deadline = time.monotonic() + wait
        for path in list(self.paths.values()):
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


def _mkdir_under_shared_parent(path: str) -> None:
    """mkdir ``.../cfn/<name>``; the shared ``cfn`` parent may vanish under us when the
    last other agent's supervisor removes it, so create it again and retry."""
    for _ in range(5):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.mkdir(path)
            return
        except FileNotFoundError:
            continue
    os.mkdir(path)


def _remove_stale(path: str) -> None:
    """A group left by an earlier run of the same agent name: reuse only if empty."""
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


# --- the supervisor ---------------------------------------------------------------------


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with contextlib.suppress(OSError):
        os.write(2, f"[cfn {stamp}] {message}\n".encode())


def _write_json_private(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)


def _kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _log_mentions_memory_error(log_path: str) -> bool:
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            tail = handle.read()
    except OSError:
        return False
    return b"MemoryError" in tail or b"Cannot allocate memory" in tail


class Supervisor:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.dir: str = spec["dir"]
        self.groups: Cgroups | None = None
        self.proc: Any = None
        self.limits = "none"
        self.pid = 0
        self.started_at = 0.0
        self.timed_out = False
        self.killed = False
        self.stop_requested = False

    def _setup_limits(self) -> Callable[[], None] | None:
        mode = self.spec.get("cgroups", "auto")
        memory = self.spec.get("memory_bytes")
        cpus = self.spec.get("cpus")
        if mode != "off":
            try:
                self.groups = Cgroups.create(self.spec["name"], memory, cpus)
                self.limits = "cgroup"
            except OSError as exc:
                if mode == "on":
                    raise RuntimeError(
                        f"cgroup v1 limits required (CFN_AGENT_CGROUPS=on) but not available: {exc}"
                    ) from None
                _log(f"cgroup v1 not writable ({exc}); memory limit through RLIMIT_AS")
        groups = self.groups
        if groups is not None:

            def join() -> None:
                groups.join(os.getpid())

            return join
        if memory is not None:
            import resource

            self.limits = "rlimit"

            def rlimit() -> None:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

            return rlimit
        return None

    def start(self) -> int:
        import subprocess

        preexec = self._setup_limits()
        try:
            proc = subprocess.Popen(
                self.spec["command"],
                cwd=self.spec["cwd"],
                stdin=subprocess.DEVNULL,
                process_group=0,
                preexec_fn=preexec,
                close_fds=True,
            )
        except subprocess.SubprocessError as exc:
            raise RuntimeError(f"could not apply the agent's limits: {exc}") from None
        except OSError as exc:
            raise RuntimeError(f"could not start {self.spec['command'][0]!r}: {exc}") from None
        # Kept so its finalizer never reaps the child: we reap it ourselves with wait4.
        self.proc = proc
        self.pid = proc.pid
        self.started_at = time.time()
        return self.pid

    def write_state(self) -> None:
        _write_json_private(
            os.path.join(self.dir, STATE_FILE),
            {
                "name": self.spec["name"],
                "task_id": self.spec["task_id"],
                "agent_id": self.spec["agent_id"],
                "pid": self.pid,
                "pid_start": proc_start_ticks(self.pid),
                "shim_pid": os.getpid(),
                "shim_start": proc_start_ticks(os.getpid()),
                "started_at": self.started_at,
                "limits": self.limits,
                "cgroups": self.groups.paths if self.groups else {},
                "timeout": self.spec["timeout"],
            },
        )

    def _stop(self, graceful: bool, now: float) -> float | None:
        """Signal the agent's process group and cgroup; return when to SIGKILL."""
        grace = float(self.spec.get("kill_grace", 5.0))
        signum = signal.SIGTERM if graceful and grace > 0 else signal.SIGKILL
        _kill_group(self.pid, signum)
        if self.groups is not None:
            self.groups.signal_all(signum)
        return now + grace if signum == signal.SIGTERM else None

    def supervise(self, wake_fd: int) -> dict[str, Any]:
        pidfd = os.pidfd_open(self.pid)
        start = time.monotonic()
        deadline: float | None = start + float(self.spec["timeout"])
        kill_at: float | None = None
        while True:
            now = time.monotonic()
            waits = [t - now for t in (deadline, kill_at) if t is not None]
            timeout = max(0.0, min(waits)) if waits else None
            ready, _, _ = select.select([pidfd, wake_fd], [], [], timeout)
            now = time.monotonic()
            if pidfd in ready:
                break
            if wake_fd in ready:
                for signum in os.read(wake_fd, 64):
                    if signum == signal.SIGUSR1:
                        self.killed = True
                        kill_at = self._stop(False, now)
                    elif not self.stop_requested and not self.timed_out:
                        self.stop_requested = True
                        kill_at = self._stop(True, now)
                        deadline = None
            if deadline is not None and now >= deadline:
                self.timed_out = True
                _log(f"timeout of {self.spec['timeout']:g} s reached; stopping the agent")
                kill_at = self._stop(True, now)
                deadline = None
            elif kill_at is not None and now >= kill_at:
                kill_at = self._stop(False, now)
        os.close(pidfd)
        _, status, usage = os.wait4(self.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        ended = time.time()
        # Anything the agent left behind in its group goes with it (as in a container).
        _kill_group(self.pid, signal.SIGKILL)
        stats: dict[str, Any] = {}
        if self.groups is not None:
            self.groups.signal_all(signal.SIGKILL)
            stats = self.groups.stats()
            self.groups.remove()
        return self._record(status, usage, ended, stats)

    def _record(
        self, status: int, usage: Any, ended: float, stats: dict[str, Any]
    ) -> dict[str, Any]:
        code = os.waitstatus_to_exitcode(status)
        exit_code = code if code >= 0 else None
        signum = -code if code < 0 else None
        oom = bool(stats.get("oom_kills"))
        memory_error = (
            self.limits == "rlimit"
            and exit_code not in (None, 0)
            and _log_mentions_memory_error(self.spec["log"])
        )
        record: dict[str, Any] = {
            "name": self.spec["name"],
            "task_id": self.spec["task_id"],
            "agent_id": self.spec["agent_id"],
            "pid": self.pid,
            "exit_code": exit_code,
            "signal": signum,
            "timed_out": self.timed_out,
            "killed": self.killed,
            "stop_requested": self.stop_requested,
            "oom_killed": oom or memory_error,
            "started_at": self.started_at,
            "ended_at": ended,
            "duration": round(ended - self.started_at, 6),
            "limits": self.limits,
            "memory_limit_bytes": self.spec.get("memory_bytes"),
            "cpus": self.spec.get("cpus"),
            "timeout": self.spec["timeout"],
            "cpu_user": round(usage.ru_utime, 6),
            "cpu_system": round(usage.ru_stime, 6),
            "max_rss_bytes": usage.ru_maxrss * 1024,
            **stats,
        }
        record["reason"] = describe(record)
        return record


def describe(record: dict[str, Any]) -> str:
    """Why the agent ended, in one line."""
    limit = record.get("memory_limit_bytes")
    limit_text = f"{limit / 1048576:g} MiB" if isinstance(limit, int) else "its limit"
    signum = record.get("signal")
    sig_text = ""
    if isinstance(signum, int):
        try:
            sig_text = signal.Signals(signum).name
        except ValueError:
            sig_text = f"signal {signum}"
    if record.get("oom_killed"):
        cgroup = record.get("limits") == "cgroup"
        how = "killed by the OOM killer" if cgroup else "ran out of memory"
        return f"{how} at its memory limit of {limit_text}"
    if record.get("timed_out"):
        return f"timed out after {record.get('timeout'):g} s (AGENT_TIMEOUT)"
    if record.get("killed") or record.get("stop_requested"):
        return "stopped on request" + (f" ({sig_text})" if sig_text else "")
    if sig_text:
        return f"killed by {sig_text}"
    if record.get("exit_code") == 0:
        return "exited normally"
    return f"exited with code {record.get('exit_code')}"


def main(argv: list[str]) -> int:
    spec_path, ready_fd = argv[1], int(argv[2])
    with open(spec_path) as handle:
        spec = json.load(handle)
    ready = os.fdopen(ready_fd, "w")

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: None)

    supervisor = Supervisor(spec)
    try:
        pid = supervisor.start()
        supervisor.write_state()
    except Exception as exc:
        if supervisor.groups is not None:
            supervisor.groups.remove()
        with contextlib.suppress(OSError):
            ready.write(json.dumps({"error": str(exc)}))
            ready.close()
        _log(f"agent {spec.get('name')} not started: {exc}")
        return 127
    _log(
        f"started {spec['name']} pid {pid}: limits {supervisor.limits} "
        f"(memory {spec.get('memory')}, cpus {spec.get('cpus')}), timeout {spec['timeout']:g} s"
    )
    with contextlib.suppress(OSError):
        ready.write(json.dumps({"pid": pid, "limits": supervisor.limits}))
        ready.close()
    record = supervisor.supervise(wake_r)
    _write_json_private(os.path.join(supervisor.dir, EXIT_FILE), record)
    _log(f"{spec['name']} ended: {record['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
