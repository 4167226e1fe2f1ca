"""A record of each test run, kept outside the checkout: where its time went.

CI runs the suite in a fresh clone that is deleted afterwards, on a machine that
lives on; a run that took ten times longer than usual left nothing behind to say
why. The controlling pytest process writes, under
``$XDG_CACHE_HOME/cfn/test-runs/`` (``~/.cache`` by default; the newest
``KEEP`` runs are kept), one log per run:

* ``start`` / ``finish`` lines: the checkout, the arguments, the load average;
* a ``sample`` line every ``SAMPLE_S`` seconds while it runs: the load, how
  busy the CPUs were (``busy``: 1.0 is every core all the time), the CPU
  seconds each kind of process used (``by_kind``: pytest workers, podman, redis,
  cfn commands, ...; a process that ended between samples is not counted), the tests
  finished so far, and the processes using the most CPU since the last sample,
  so a stuck or runaway process shows;
* a ``slow`` line for each test phase over ``SLOW_S`` seconds, as it ends;
* at the end, the 40 slowest test phases, and the 40 tests that used the most
  CPU (the worker's own and that of the processes it started and reaped, from
  ``getrusage``; daemons that outlive their test are not counted), and the 40 that
  used the most in the worker itself (in-process servers, hypothesis, ...).

Beside them, ``failures/`` keeps what a failed test left in its ``tmp_path`` (the
logs, task records and instance files of the servers and agents it ran; text files
up to ``KEPT_FILE_MAX`` each), since pytest deletes old temporary folders within
three runs: a flake seen in CI can be read afterwards. The newest ``KEEP`` are kept.

It records; it decides nothing and fails nothing.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

KEEP = 20
SAMPLE_S = 30.0
SLOW_S = 20.0
KEPT_FILE_MAX = 512 * 1024
KEPT_TOTAL_MAX = 16 * 1024 * 1024


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cfn" / "test-runs"


def _cpu_ticks() -> dict[int, tuple[int, str]]:
    """utime + stime and the command of every process (from /proc)."""
    out: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmd = (
                Path(entry.path, "cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        out[int(entry.name)] = (int(fields[11]) + int(fields[12]), cmd.strip()[:160])
    return out


#: What a process is, for the CPU-by-kind totals of each sample (first match wins).
KINDS = (
    ("pytest-worker", "exec(eval(sys.stdin"),
    ("mypy", "mypy"),
    ("podman", "podman"),
    ("container", "/opt/cfn/"),
    ("chromium", "chromium"),
    ("claude-code", "claude"),
    ("redis", "redis-"),
    ("postgres", "postgres"),
    ("cfn-agent-server", "agents server serve"),
    ("cfn", "cfn"),
    ("pytest", "pytest"),
)


def kind_of(cmd: str) -> str:
    for kind, mark in KINDS:
        if mark in cmd:
            return kind
    return "other"


def _busy() -> tuple[int, int]:
    """Busy and total jiffies of all CPUs since boot (/proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return (0, 0)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle, sum(fields))


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds of this process and of its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def measured(item: pytest.Item) -> Iterator[None]:
    """The CPU a test phase used, passed to the controller with the phase's report
    (tests/conftest.py wraps each phase in it on the workers)."""
    own, children = _cpu_seconds()
    yield
    own_after, children_after = _cpu_seconds()
    item.user_properties.append(("cpu_s", round(own_after - own + children_after - children, 3)))
    item.user_properties.append(("cpu_self_s", round(own_after - own, 3)))


def keep_failure_files(item: pytest.Item, report: pytest.TestReport) -> Path | None:
    """Copy what the failed test left in its ``tmp_path`` to ``failures/`` (on the worker
    that ran it); the folder, or None when there was nothing to keep."""
    funcargs = getattr(item, "funcargs", {})
    source = funcargs.get("tmp_path")
    if not report.failed or not isinstance(source, Path) or not source.is_dir():
        return None
    root = _cache_dir() / "failures"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", report.nodeid)[-120:]
    target = root / f"{stamp}-{report.when}-{name}"
    total = 0
    try:
        for path in sorted(source.rglob("*")):
            try:
                info = path.lstat()
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode) or info.st_size > KEPT_FILE_MAX:
                continue
            if total + info.st_size > KEPT_TOTAL_MAX:
                break
            copy = target / path.relative_to(source)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
            total += info.st_size
        for old in sorted(p for p in root.iterdir() if p.is_dir())[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError:
        return None  # a read-only or full cache: the run goes on
    return target if target.is_dir() else None


class RunLog:
    def __init__(self, config: pytest.Config) -> None:
        folder = _cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        for old in sorted(folder.glob("*.log"))[:-KEEP]:
            old.unlink(missing_ok=True)
        self.started = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self.started))
        self.path = folder / f"{stamp}-{os.getpid()}.log"
        self.durations: list[tuple[float, str]] = []
        self.cpu: dict[str, float] = {}
        self.cpu_self: dict[str, float] = {}
        self.finished = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.write(
            "start",
            checkout=str(Path(__file__).resolve().parents[2]),
            args=list(config.invocation_params.args),
            ci=os.environ.get("CI"),
            load=os.getloadavg(),
        )
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def write(self, kind: str, **fields: Any) -> None:
        line = {"t": round(time.time() - self.started, 1), "kind": kind, **fields}
        with self._lock, open(self.path, "a") as handle:
            handle.write(json.dumps(line, default=str) + "\n")

    def _sample(self) -> None:
        before = _cpu_ticks()
        busy_before = _busy()
        while not self._stop.wait(SAMPLE_S):
            now = _cpu_ticks()
            busy_now = _busy()
            spent = busy_now[1] - busy_before[1]
            busy = (busy_now[0] - busy_before[0]) / spent if spent > 0 else None
            busy_before = busy_now
            by_kind: dict[str, float] = {}
            for pid, (ticks, cmd) in now.items():
                delta = ticks - before.get(pid, (0, ""))[0]
                if delta > 0:
                    kind = kind_of(cmd)
                    by_kind[kind] = by_kind.get(kind, 0.0) + delta / 100
            used = sorted(
                (
                    (ticks - before.get(pid, (0, ""))[0], pid, cmd)
                    for pid, (ticks, cmd) in now.items()
                ),
                reverse=True,
            )[:6]
            before = now
            self.write(
                "sample",
                load=os.getloadavg(),
                busy=None if busy is None else round(busy, 2),
                by_kind={k: round(v, 1) for k, v in sorted(by_kind.items())},
                finished=self.finished,
                top=[{"pid": pid, "cpu_s": d / 100, "cmd": cmd} for d, pid, cmd in used if d > 0],
            )

    def report(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.finished += 1
        self.durations.append((report.duration, f"{report.nodeid} [{report.when}]"))
        for name, value in report.user_properties:
            if name == "cpu_s" and isinstance(value, float | int):
                self.cpu[report.nodeid] = self.cpu.get(report.nodeid, 0.0) + float(value)
            if name == "cpu_self_s" and isinstance(value, float | int):
                self.cpu_self[report.nodeid] = self.cpu_self.get(report.nodeid, 0.0) + float(value)
        if report.duration >= SLOW_S:
            self.write("slow", test=report.nodeid, when=report.when, s=round(report.duration, 1))

    def finish(self, status: int) -> None:
        self._stop.set()
        slowest = sorted(self.durations, reverse=True)[:40]
        most_cpu = sorted(((v, k) for k, v in self.cpu.items()), reverse=True)[:40]
        most_self = sorted(((v, k) for k, v in self.cpu_self.items()), reverse=True)[:40]
        self.write(
            "finish",
            status=status,
            seconds=round(time.time() - self.started, 1),
            tests=self.finished,
            load=os.getloadavg(),
            slowest=[[round(d, 1), name] for d, name in slowest],
            cpu_s=round(sum(self.cpu.values()), 1),
            cpu_self_s=round(sum(self.cpu_self.values()), 1),
            most_cpu_self=[[round(c, 1), name] for c, name in most_self],
            most_cpu=[[round(c, 1), name] for c, name in most_cpu],
        )
