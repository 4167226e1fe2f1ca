"""/proc helpers on real processes: alive, zombie, start time, environment, argv."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from cfn.system.proc import (
    proc_alive,
    proc_cmdline,
    proc_cpu_ticks,
    proc_environ,
    proc_group_members,
    proc_rss_bytes,
    proc_start_ticks,
    proc_stat_fields,
    proc_state,
    reap,
    signal_pid,
)


def _sleeper(*extra: str) -> subprocess.Popen[bytes]:
    """A sleeping child, returned once it runs its own code.

    Right after fork, and while the kernel swaps in the new image during exec,
    /proc/<pid>/environ and cmdline read empty; the child says "ready" on its
    stdout so the test never looks in that window (CI saw it once).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)", *extra],
        env={**os.environ, "CFN_TEST_MARK": "sleeper"},
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_a_live_process_and_then_its_zombie() -> None:
    proc = _sleeper("tag")
    try:
        start = proc_start_ticks(proc.pid)
        assert isinstance(start, int)
        assert proc_alive(proc.pid) and proc_alive(proc.pid, start)
        assert not proc_alive(proc.pid, start + 1)  # a reused pid is not the same process
        assert proc_state(proc.pid) in {"R", "S"}
        assert proc_stat_fields(proc.pid, 5) == [os.getpgid(proc.pid)]
        assert isinstance(proc_cpu_ticks(proc.pid), int)
        assert (proc_environ(proc.pid) or {}).get("CFN_TEST_MARK") == "sleeper"
        assert proc_cmdline(proc.pid)[-1] == "tag"
        assert proc_rss_bytes(proc.pid) > 0
        assert proc.pid in proc_group_members(os.getpgid(proc.pid))
        assert signal_pid(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while proc_state(proc.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        # Not reaped yet: a zombie, which counts as gone.
        assert proc_state(proc.pid) == "Z" and not proc_alive(proc.pid)
        reap(proc.pid)
        assert proc_state(proc.pid) is None and proc_start_ticks(proc.pid) is None
        assert not signal_pid(proc.pid, 0)
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_what_a_state_file_may_hold_is_never_alive() -> None:
    for value in (None, "12", 0, -1, True, 1.5, 2**22 + 12345):
        assert not proc_alive(value)
    assert proc_environ(2**22 + 12345) is None
    assert proc_cmdline(2**22 + 12345) == []
    assert proc_rss_bytes(2**22 + 12345) == 0
    assert proc_stat_fields(os.getpid(), 999) is None
    reap(2**22 + 12345)  # not our child: nothing happens
