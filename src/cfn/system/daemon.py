"""One supervisor for cfn's background servers: redis-server, Podman's API service,
the MCP servers and the detached portal.

Each of them is the same pattern, and this module is its only copy:

* files under one directory: a record (JSON, written atomically, 0600 by
  default) naming the process, optionally a pid file, a log, and a lock that
  serialises start and stop between concurrent cfn commands;
* start detached: a new session, stdin from /dev/null, stdout and stderr
  appended to the log, so the server neither dies with nor holds on to the
  command that started it;
* a bounded health wait that gives up early when the process exits;
* "is it still ours": a pid is trusted only together with its start time
  (``/proc/<pid>/stat`` field 22) or its argv, since pids are reused;
* stop: a signal (SIGTERM by default) to the process or its group, a grace
  period, then SIGKILL, and the child reaped when it is ours.

What "healthy" means (a Redis INFO, an HTTP ping) stays with each server.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cfn.system.proc import proc_alive, proc_cmdline, proc_start_ticks, reap, signal_pid

POLL = 0.05
#: A daemon's log above this when it starts again is kept as ``<log>.1`` (the one
#: before is dropped) and a fresh log begun: one restart's worth of history, bounded.
LOG_ROTATE_BYTES = 16 * 1024 * 1024
KILL_WAIT = 5.0


def is_ours(
    pid: object,
    start_ticks: object = None,
    argv: Callable[[list[str]], bool] | None = None,
) -> bool:
    """Whether ``pid`` is a live process that started at ``start_ticks`` (when
    known) and whose argv passes ``argv`` (when given)."""
    if not proc_alive(pid, start_ticks):
        return False
    assert isinstance(pid, int)
    return argv is None or argv(proc_cmdline(pid))


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    *,
    exited: Callable[[], bool] | None = None,
    interval: float = 0.1,
) -> bool:
    """Poll ``ready`` until it holds (True) or ``timeout`` passes or ``exited`` says
    the process is gone (False). A server's port or socket opening has no event to
    wait on, so this is a bounded poll."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return True
        if (exited is not None and exited()) or time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_process(
    pid: int,
    *,
    grace: float,
    start_ticks: int | None = None,
    signum: int | None = signal.SIGTERM,
    group: bool = False,
) -> bool:
    """Ask a process to end (``signum``; None when it was asked some other way, e.g.
    Redis's SHUTDOWN), wait up to ``grace`` seconds, then SIGKILL it (or its
    group). True when it was running."""
    if not proc_alive(pid, start_ticks):
        reap(pid)
        return False
    if signum is not None:
        signal_pid(pid, signum, group=group)
    deadline = time.monotonic() + grace
    while proc_alive(pid, start_ticks) and time.monotonic() < deadline:
        time.sleep(POLL)
    if proc_alive(pid, start_ticks):
        signal_pid(pid, signal.SIGKILL, group=group)
        # SIGKILL is not refused, but takes a moment: return once it has taken effect.
        deadline = time.monotonic() + KILL_WAIT
        while proc_alive(pid, start_ticks) and time.monotonic() < deadline:
            time.sleep(POLL / 5)
    reap(pid)
    return True


def rotate_log(path: Path, limit: int = LOG_ROTATE_BYTES) -> bool:
    """Keep ``path`` as ``path.1`` when it has grown past ``limit``; True if it did.

    Called as a daemon starts, so a log and its one predecessor are all that is
    kept, however often the daemon restarts. A running daemon's log grows until its
    next start: the daemon writes to it through the descriptor it was started with."""
    try:
        if path.stat().st_size <= limit:
            return False
        os.replace(path, path.with_name(path.name + ".1"))
    except OSError:  # no log yet, or it cannot be moved: the daemon still starts
        return False
    return True


class Daemon:
    """The files of one background server, and starting and stopping it."""

    def __init__(
        self,
        directory: Path,
        *,
        record: str = "instance.json",
        log: str,
        pid: str | None = None,
        lock: str = "start.lock",
        private: bool = True,
    ) -> None:
        self.dir = directory
        self.record_file = directory / record
        self.log_file = directory / log
        self.pid_file = directory / pid if pid is not None else None
        self.lock_file = directory / lock
        self.private = private

    # --- files ------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the start/stop lock (between cfn processes; blocks until free)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.lock_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read_record(self) -> dict[str, Any]:
        """The record, {} when it is missing, unreadable or not a JSON object."""
        try:
            data = json.loads(self.record_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_record(self, data: Mapping[str, Any]) -> None:
        """Replace the record atomically (readers see the old or the new one, whole)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.record_file.with_suffix(f".{os.getpid()}.tmp")
        mode = 0o600 if self.private else 0o644
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as handle:
            json.dump(dict(data), handle)
        os.replace(tmp, self.record_file)

    def clear_record(self, pid: int | None = None) -> None:
        """Remove the record (only if it still names ``pid``, when given)."""
        if pid is not None and self.read_record().get("pid") != pid:
            return
        self.record_file.unlink(missing_ok=True)

    def read_pid(self) -> int | None:
        if self.pid_file is None:
            return None
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def write_pid(self, pid: int) -> None:
        if self.pid_file is not None:
            self.pid_file.write_text(f"{pid}\n")

    def clear_pid(self) -> None:
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)

    def log_tail(self, limit: int = 300) -> str:
        """The log's last line (shortened): what a failed start most likely said."""
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:limit] if lines else ""

    # --- lifecycle --------------------------------------------------------------------

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        log: Path | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` detached, its output appended to the log (or ``log``).
        OSError / SubprocessError when it cannot be started."""
        path = log if log is not None else self.log_file
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        rotate_log(path)
        log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            return subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            os.close(log_fd)

    def recorded(self) -> tuple[int, int | None] | None:
        """``(pid, start ticks)`` of the recorded process if it still runs (a record
        without a start time is trusted on its pid alone)."""
        data = self.read_record()
        pid, start = data.get("pid"), data.get("pid_start")
        start = start if isinstance(start, int) else None
        if isinstance(pid, int) and proc_alive(pid, start):
            return pid, start
        return None

    def stop_recorded(self, grace: float, signum: int = signal.SIGTERM) -> bool:
        """Stop the process the record names, if it still runs; True when it did.
        For callers that know only the files (a worktree being removed)."""
        with self.locked():
            found = self.recorded()
            if found is None:
                return False
            return stop_process(found[0], grace=grace, start_ticks=found[1], signum=signum)


def record_of(pid: int, **fields: Any) -> dict[str, Any]:
    """A record naming ``pid`` with its start time, plus ``fields``."""
    return {"pid": pid, "pid_start": proc_start_ticks(pid), **fields}
