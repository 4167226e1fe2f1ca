"""The per-agent supervisor: limits, timeout, exit record (what ``docker run -d`` gives).

The process spawner does not run an agent directly. It has a supervisor started
for it, in its own session: a fork of the agent server (cfn.agents.forkserver,
request kind ``S``), or, when that server is off or cannot fork, a Python of its
own (``python -I -S shim.py SPEC READY_FD``). The supervisor

1. creates the agent's ``memory`` and ``cpu`` groups (``cfn.system.cgroups``:
   cgroup v1 or v2, nested as ``cfn/<name>`` under the supervisor's own
   cgroup, so whatever limits the orchestrator already lives under still
   apply) and sets the limits, or falls back to RLIMIT_AS where cgroups are
   not writable;
2. starts the agent, which joins those groups before any of its own code runs:
   a builtin or claude-code agent forked from the supervisor (which has cfn
   imported already) joins them right after the fork, a command joins them
   before it execs (``preexec``);
3. tells the spawner the agent's pid through READY_FD, and records
   ``state.json`` (pids and start times, for re-attaching later);
4. waits for the agent's exit on a pidfd (no polling), enforcing the timeout
   (SIGTERM, then SIGKILL after the grace) and obeying SIGTERM (stop
   gracefully) and SIGUSR1 (kill now) sent to it;
5. writes ``exit.json``: exit code, signal, timed out, killed, OOM-killed
   (``oom_kill`` in ``memory.oom_control`` or ``memory.events``), peak memory,
   CPU time; removes the groups; and closes READY_FD, which is how the spawner
   learns that the record is there.

Because the supervisor, not the orchestrator, holds all of this, an agent
keeps its limits and timeout and still gets an exit record when the
orchestrator crashes; a restarted orchestrator re-attaches and reads it.

The supervisor itself stays outside the agent's groups: the OOM killer takes
the agent, never the one process that reports it. This module uses only the
standard library and cfn.system's standard-library modules (as its own Python
it runs with ``-I -S``, without cfn's dependencies).
"""
from __future__ import annotations

import contextlib
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

STATE_FILE = "state.json"
EXIT_FILE = "exit.json"
LOG_TAIL_BYTES = 8192

if __name__ == "__main__":  # pragma: no branch
    # Run as a script with ``-I -S``: neither cfn nor its dependencies are on sys.path.
    # The directory holding cfn's package is found from this file. ``import cfn`` is
    # cheap on purpose (the error types only, ~1.5 ms), and cfn.system's modules use
    # the standard library alone.
    _package = os.path.dirname(os.path.abspath(__file__))
    while os.path.basename(_package) != "cfn" and _package != os.path.dirname(_package):
        _package = os.path.dirname(_package)
    sys.path.insert(0, os.path.dirname(_package))

from cfn.system.cgroups import CFS_PERIOD_US, Cgroups  # noqa: E402 (after the path set-up)
from cfn.system.proc import (  # noqa: E402
    identities,
    proc_descendants,
    proc_start_ticks,
    signal_tree,
    still_alive,
)

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


def comm_tag(name: str) -> str:
    """What a forked agent sets as ``/proc/<pid>/comm`` (15 bytes at most): its name's hash.

    A forked agent's ``/proc/<pid>/environ`` is the agent server's, so this tag is
    how re-attaching recognises it (cfn.agents.spawn.process).
    """
    import hashlib

    return "cfn" + hashlib.sha256(name.encode()).hexdigest()[:12]


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
    """One agent's supervisor. ``fork_agent``: how to become the agent in a forked child
    (never returns), given when the supervisor is itself a fork of the agent server
    (cfn.agents.forkserver): the agent is then a fork of it, with cfn already imported,
    instead of a new Python."""

    def __init__(
        self, spec: dict[str, Any], fork_agent: Callable[[Supervisor], None] | None = None
    ) -> None:
        self.spec = spec
        self.fork_agent = fork_agent
        self.dir: str = spec["dir"]
        self.groups: Cgroups | None = None
        self.proc: Any = None
        self.limits = "none"
        self.pid = 0
        self.started_at = 0.0
        self.timed_out = False
        self.killed = False
        self.stop_requested = False
        #: Every process seen below the agent when it was stopped: (pid, start ticks).
        self.tree: set[tuple[int, int]] = set()
        #: Whether the agent is a fork of this process (not a new program).
        self.forked = False
        #: Descriptors of the supervisor's own that a forked agent must not keep.
        self.private_fds: list[int] = []

    def _setup_limits(self) -> Callable[[], None] | None:
        mode = self.spec.get("cgroups", "auto")
        memory = self.spec.get("memory_bytes")
        cpus = self.spec.get("cpus")
        if mode != "off":
            try:
                self.groups = Cgroups.create(
                    self.spec["name"],
                    memory,
                    cpus,
                    cpu_burst=float(self.spec.get("cpu_burst", 0)),
                    cpu_period_us=int(self.spec.get("cpu_period_us", CFS_PERIOD_US)),
                )
                self.limits = "cgroup"
            except OSError as exc:
                if mode == "on":
                    raise RuntimeError(
                        f"cgroup limits required (CFN_AGENT_CGROUPS=on) but not available: {exc}"
                    ) from None
                _log(f"cgroups not writable ({exc}); memory limit through RLIMIT_AS")
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
        if self.fork_agent is not None and self.spec.get("fork") and self.limits != "rlimit":
            # RLIMIT_AS would count the agent server's whole address space: a new
            # program (the spec's command) then.
            return self._start_forked(self.fork_agent)
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

    def _start_forked(self, fork_agent: Callable[[Supervisor], None]) -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns (coverage cannot see it)
            code = 127
            try:
                fork_agent(self)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.write(2, f"[cfn] agent not started: {exc!r}\n".encode())
            finally:
                os._exit(code)
        # Its own process group from here on, whichever of the two gets there first
        # (a stop right away must reach the group).
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        self.pid = pid
        self.forked = True
        self.started_at = time.time()
        return pid

    def leave_in_agent(self) -> None:
        """In the forked agent, first: the supervisor's signal handling and descriptors gone."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in self.private_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        os.setpgid(0, 0)
        if self.groups is not None:
            self.groups.join(os.getpid())

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
                "forked": self.forked,
            },
        )

    def _stop(self, graceful: bool, now: float) -> float | None:
        """Signal the agent's process group and cgroup; return when to SIGKILL."""
        grace = float(self.spec.get("kill_grace", 5.0))
        signum = signal.SIGTERM if graceful and grace > 0 else signal.SIGKILL
        # Its descendants too, and their own groups: without cgroups nothing else
        # reaches a command started in a session of its own (a Claude Code Bash tool's).
        below = proc_descendants(self.pid)
        self.tree |= identities(below)
        _kill_group(self.pid, signum)
        signal_tree(below, signum)
        if self.groups is not None:
            self.groups.signal_all(signum)
        return now + grace if signum == signal.SIGTERM else None

    def _end_leftovers(self) -> None:
        """SIGKILL what was seen below the agent and still lives (reparented to init
        once the agent died), checked by start time: a reused pid is left alone."""
        alive = still_alive(self.tree)
        if alive:
            signal_tree(alive, signal.SIGKILL)

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
        if self.proc is not None:
            self.proc.returncode = os.waitstatus_to_exitcode(status)
        ended = time.time()
        # Anything the agent left behind in its group goes with it (as in a container).
        _kill_group(self.pid, signal.SIGKILL)
        self._end_leftovers()
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
            "forked": self.forked,
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


def run(
    spec: dict[str, Any], ready_fd: int, fork_agent: Callable[[Supervisor], None] | None = None
) -> int:
    """Start the agent, tell the spawner on ``ready_fd``, supervise it, record its exit.

    ``ready_fd`` carries one JSON line, ``{"pid": ..., "limits": ...}`` (or ``{"error":
    ...}`` and the end), and closes once ``exit.json`` is written: the spawner learns of
    the exit without waiting for this process to end.
    """
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: None)

    supervisor = Supervisor(spec, fork_agent)
    supervisor.private_fds = [ready_fd, wake_r, wake_w]
    try:
        pid = supervisor.start()
        supervisor.write_state()
    except Exception as exc:
        if supervisor.groups is not None:
            supervisor.groups.remove()
        _tell(ready_fd, {"error": str(exc)})
        os.close(ready_fd)
        _log(f"agent {spec.get('name')} not started: {exc}")
        return 127
    _log(
        f"started {spec['name']} pid {pid}: limits {supervisor.limits} "
        f"(memory {spec.get('memory')}, cpus {spec.get('cpus')}), timeout {spec['timeout']:g} s"
        + (" (forked)" if supervisor.forked else "")
    )
    urls = redis_urls(os.environ)
    if urls:
        _log("redis: " + " ".join(f"{name}={url}" for name, url in urls.items()))
    _tell(ready_fd, {"pid": pid, "limits": supervisor.limits})
    record = supervisor.supervise(wake_r)
    _write_json_private(os.path.join(supervisor.dir, EXIT_FILE), record)
    os.close(ready_fd)
    _log(f"{spec['name']} ended: {record['reason']}")
    return 0


def redis_urls(environ: Any) -> dict[str, str]:
    """The Redis URLs in an agent's environment, passwords masked: which servers it
    was told to use (the agent's log says it; a forked agent's /proc/<pid>/environ is
    the agent server's, so this is the one place to see them)."""
    from urllib.parse import urlsplit

    found: dict[str, str] = {}
    for name in sorted(environ):
        value = str(environ[name])
        if not name.startswith("REDIS") or "://" not in value:
            continue
        try:
            parts = urlsplit(value)
            netloc = parts.netloc
            if parts.password is not None:
                userinfo, _, hosts = netloc.rpartition("@")
                netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
            found[name] = parts._replace(netloc=netloc).geturl()
        except ValueError:
            found[name] = "(not a URL)"
    return found


def _tell(fd: int, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(message).encode() + b"\n")


def main(argv: list[str]) -> int:
    """``python -I -S shim.py SPEC READY_FD``: the supervisor as a Python of its own (when
    the agent server is off or cannot fork it); the agent is then the spec's command."""
    with open(argv[1]) as handle:
        spec = json.load(handle)
    return run(spec, int(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
