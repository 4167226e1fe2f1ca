"""The daemon supervisor with real processes: files, detached start, health wait,
graceful and forced stop, and "is it still ours"."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from cfn.system.daemon import (
    LOG_ROTATE_BYTES,
    Daemon,
    is_ours,
    record_of,
    rotate_log,
    stop_process,
    wait_until,
)
from cfn.system.proc import proc_alive, proc_start_ticks

#: Prints, creates its ready file, then waits; SIGTERM ends it (or, with "stubborn", not).
SERVER = """
import pathlib, signal, sys, time
print("hello from the server", flush=True)
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(sys.argv[1]).write_text("ready")
time.sleep(60)
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    return Daemon(tmp_path / "srv", log="srv.log", pid="srv.pid")


def _start(daemon: Daemon, tmp_path: Path, mode: str = "polite") -> tuple[int, Path]:
    ready = tmp_path / f"ready-{mode}"
    proc = daemon.spawn([sys.executable, "-c", SERVER, str(ready), mode])
    assert wait_until(ready.exists, 20, exited=lambda: proc.poll() is not None, interval=0.02)
    return proc.pid, ready


def test_files_are_atomic_private_and_optional(daemon: Daemon) -> None:
    assert daemon.read_record() == {} and daemon.read_pid() is None
    daemon.write_record({"pid": 1, "port": 2})
    assert daemon.read_record() == {"pid": 1, "port": 2}
    assert daemon.record_file.stat().st_mode & 0o077 == 0
    assert list(daemon.dir.glob("*.tmp")) == []
    daemon.clear_record(pid=99)  # names another process: kept
    assert daemon.record_file.exists()
    daemon.clear_record(pid=1)
    assert not daemon.record_file.exists()
    daemon.record_file.write_text("[1, 2]")  # not an object
    assert daemon.read_record() == {}
    daemon.write_pid(123)
    assert daemon.read_pid() == 123 and daemon.pid_file is not None
    daemon.clear_pid()
    assert daemon.read_pid() is None
    shared = Daemon(daemon.dir, record="public.json", log="x.log", private=False)
    shared.write_record({})
    assert shared.record_file.stat().st_mode & 0o044 == 0o044


def test_detached_start_logs_and_graceful_stop(daemon: Daemon, tmp_path: Path) -> None:
    pid, _ = _start(daemon, tmp_path)
    try:
        assert os.getsid(pid) == pid  # its own session: no terminal signal reaches it
        assert daemon.log_tail() == "hello from the server"
        daemon.write_record(record_of(pid, port=1234))
        assert daemon.read_record()["pid_start"] == proc_start_ticks(pid)
        assert daemon.recorded() == (pid, proc_start_ticks(pid))
        assert is_ours(pid, proc_start_ticks(pid), lambda argv: argv[-1] == "polite")
        assert not is_ours(pid, argv=lambda argv: "podman" in argv)
        assert not is_ours(pid, (proc_start_ticks(pid) or 0) + 1)
        began = time.monotonic()
        assert daemon.stop_recorded(grace=10)
        assert time.monotonic() - began < 5  # SIGTERM was enough
        assert not proc_alive(pid) and daemon.recorded() is None
        assert not daemon.stop_recorded(grace=10)
    finally:
        stop_process(pid, grace=0)


def test_a_process_ignoring_sigterm_is_killed_after_the_grace(
    daemon: Daemon, tmp_path: Path
) -> None:
    pid, _ = _start(daemon, tmp_path, "stubborn")
    try:
        began = time.monotonic()
        assert stop_process(pid, grace=0.5, start_ticks=proc_start_ticks(pid), group=True)
        assert 0.5 <= time.monotonic() - began < 5
        assert not proc_alive(pid)
        assert not stop_process(pid, grace=0.5)  # already gone
    finally:
        stop_process(pid, grace=0)


def test_a_stop_without_a_signal_waits_for_another_request(daemon: Daemon, tmp_path: Path) -> None:
    """Redis is asked with SHUTDOWN, then waited for; nothing else is sent first."""
    pid, _ = _start(daemon, tmp_path)
    timer = threading.Timer(0.3, os.kill, (pid, signal.SIGTERM))
    timer.start()
    try:
        assert stop_process(pid, grace=10, signum=None)
        assert not proc_alive(pid)
    finally:
        timer.cancel()
        stop_process(pid, grace=0)


def test_the_health_wait_gives_up_early_when_the_process_exits(daemon: Daemon) -> None:
    proc = daemon.spawn([sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"])
    began = time.monotonic()
    assert not wait_until(lambda: False, 20, exited=lambda: proc.poll() is not None)
    assert time.monotonic() - began < 10 and proc.returncode == 3
    assert daemon.log_tail() == "bad config"
    assert not wait_until(lambda: False, 0.2)  # and times out when nothing answers


def test_the_lock_serialises_starts(daemon: Daemon) -> None:
    order: list[str] = []

    def second() -> None:
        with daemon.locked():
            order.append("second")

    with daemon.locked():
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        order.append("first")
    thread.join(10)
    assert order == ["first", "second"]


def test_a_log_past_its_limit_is_kept_once_as_dot_1(daemon: Daemon, tmp_path: Path) -> None:
    log = daemon.log_file
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("the run before\n")
    os.truncate(log, LOG_ROTATE_BYTES + 1)  # sparse: large to stat, nothing on disk
    older = log.with_name(log.name + ".1")
    older.write_text("the run before that\n")
    pid, _ = _start(daemon, tmp_path)
    try:
        assert older.stat().st_size == LOG_ROTATE_BYTES + 1
        assert older.read_bytes().startswith(b"the run before\n")
        assert daemon.log_tail() == "hello from the server"
        assert sorted(p.name for p in log.parent.glob(log.name + "*")) == [log.name, older.name]
    finally:
        stop_process(pid, grace=0)
    assert not rotate_log(log)  # a small log stays where it is
    assert not rotate_log(tmp_path / "no-such.log")
