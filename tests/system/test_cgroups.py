"""Cgroups: v1 for real on this machine (where writable), v2 and hybrid layouts on a
temp tree laid out like the kernel's file interface."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cfn.system import cgroups
from cfn.system.cgroups import Cgroups, cgroups_writable, cpu_shares, cpu_weight, hierarchy

V1 = hierarchy("memory") is not None and hierarchy("memory")[0] == 1  # type: ignore[index]
needs_v1 = pytest.mark.skipif(
    not (V1 and cgroups_writable()), reason="no writable cgroup v1 memory/cpu here"
)


def _name(tmp_path: Path) -> str:
    # Group names are machine-wide: unique per test run.
    return f"test-{os.getpid()}-{tmp_path.name}"


@needs_v1
def test_v1_limits_reservations_and_stats_for_real(tmp_path: Path) -> None:
    groups = Cgroups.create(_name(tmp_path), 64 * 1024**2, 0.5, cpu_burst=1.0)
    try:
        mem, cpu = Path(groups.paths["memory"]), Path(groups.paths["cpu"])
        if (cpu / "cpu.cfs_burst_us").exists():  # Linux 5.14+
            # A burst of one period's quota; lowering the quota later lowers it first
            # (the kernel refuses a quota below the burst in force).
            assert int((cpu / "cpu.cfs_burst_us").read_text()) == 50_000
            groups.set_cpu_quota(0.25, burst=1.0)
            assert int((cpu / "cpu.cfs_quota_us").read_text()) == 25_000
            assert int((cpu / "cpu.cfs_burst_us").read_text()) == 25_000
            groups.set_cpu_quota(0.5, burst=5.0)  # never above the quota
            assert int((cpu / "cpu.cfs_burst_us").read_text()) == 50_000
            groups.set_cpu_quota(0.5)
            assert int((cpu / "cpu.cfs_burst_us").read_text()) == 0
        assert mem.parent.name == "cfn" and not cgroups.is_v2(str(mem))
        assert int((mem / "memory.limit_in_bytes").read_text()) == 64 * 1024**2
        assert groups.memory_limit() == 64 * 1024**2
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == 50_000
        assert int((cpu / "cpu.cfs_period_us").read_text()) == 100_000
        groups.set_memory_reservation(32 * 1024**2)
        assert int((mem / "memory.soft_limit_in_bytes").read_text()) == 32 * 1024**2
        groups.set_cpu_weight(0.25)
        assert int((cpu / "cpu.shares").read_text()) == 256
        groups.set_cpu_weight(None)
        assert int((cpu / "cpu.shares").read_text()) == 1024
        groups.set_cpu_quota(None)
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == -1
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)"],
            preexec_fn=lambda: groups.join(os.getpid()),
        )
        try:
            assert groups.pids() == {child.pid}
            # A recorded group (paths only) is read the same way.
            again = Cgroups(dict(groups.paths))
            assert (again.memory_usage() or 0) > 0
            stats = again.stats()
            assert stats["oom_kills"] == 0 and stats["cpu_throttled"] >= 0
            assert (stats["max_memory_bytes"] or 0) > 0
        finally:
            child.kill()
            child.wait()
    finally:
        groups.remove()
    assert not mem.exists() and not cpu.exists()


def _v2_tree(root: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("")
    return root


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every write to a cgroup file, in order (the files are plain files here)."""
    seen: list[tuple[str, str]] = []
    real = cgroups._write

    def spy(path: str, value: str) -> None:
        seen.append((path, value))
        real(path, value)

    monkeypatch.setattr(cgroups, "_write", spy)
    return seen


def test_pure_v2_writes_max_files_and_enables_the_controllers(
    tmp_path: Path, writes: list[tuple[str, str]]
) -> None:
    root = _v2_tree(tmp_path / "cgroup")
    assert hierarchy("memory", str(root)) == (2, str(root))
    assert hierarchy("cpu", str(root)) == (2, str(root))
    groups = Cgroups.create("agent-1", 256 * 1024**2, 1.5, str(root))
    group = Path(groups.paths["memory"])
    # One directory holds both controllers on v2.
    assert groups.paths["cpu"] == str(group) and group.parent.name == "cfn"
    assert (group / "memory.max").read_text() == str(256 * 1024**2)
    assert groups.memory_limit() == 256 * 1024**2
    assert (group / "cpu.max").read_text() == "150000 100000"
    assert not (group / "memory.limit_in_bytes").exists()
    shared = group.parent
    enabled = [(Path(p).parent, v) for p, v in writes if p.endswith("cgroup.subtree_control")]
    # The parent, then cfn/, let their children use each controller.
    for where in (root, shared):
        assert (where, "+memory") in enabled and (where, "+cpu") in enabled
    groups.set_memory_reservation(64 * 1024**2)
    groups.set_cpu_weight(0.25)
    assert (group / "memory.low").read_text() == str(64 * 1024**2)
    assert (group / "cpu.weight").read_text() == "25"
    groups.set_cpu_weight(None)
    assert (group / "cpu.weight").read_text() == "100"
    (group / "cpu.max.burst").write_text("0")  # the kernel's file, from Linux 5.14
    groups.set_cpu_quota(1.5, burst=0.5)
    assert (group / "cpu.max").read_text() == "150000 100000"
    assert (group / "cpu.max.burst").read_text() == "75000"
    groups.set_cpu_quota(None)
    assert (group / "cpu.max").read_text() == "max 100000"
    assert (group / "cpu.max.burst").read_text() == "0"
    groups.join(4242)
    assert (group / "cgroup.procs").read_text() == "4242"
    assert [p for p, _ in writes].count(str(group / "cgroup.procs")) == 1
    # What the kernel reports, read as v1 names it; from a recorded path alone too.
    (group / "cgroup.controllers").write_text("cpu memory\n")
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    (group / "memory.peak").write_text("123456\n")
    (group / "memory.current").write_text("4096\n")
    (group / "cpu.stat").write_text("usage_usec 10\nnr_periods 5\nnr_throttled 2\n")
    recorded = Cgroups(dict(groups.paths))
    assert recorded.stats() == {
        "oom_kills": 1,
        "memory_failcnt": 7,
        "max_memory_bytes": 123456,
        "cpu_throttled": 2,
        "cpu_usage_seconds": 1e-05,  # cpu.stat's usage_usec: v2 needs no cpuacct group
    }
    assert recorded.memory_usage() == 4096
    (group / "memory.max").write_text("max\n")
    assert recorded.memory_limit() is None


def test_controllers_already_delegated_are_not_written_again(
    tmp_path: Path, writes: list[tuple[str, str]]
) -> None:
    """Writing subtree_control in a group that holds processes fails (EBUSY): a
    parent that already delegates the controllers is left alone."""
    root = _v2_tree(tmp_path / "cgroup")
    (root / "cgroup.subtree_control").write_text("cpu memory\n")
    Cgroups.create("agent-2", 64 * 1024**2, None, str(root))
    assert not any(p == str(root / "cgroup.subtree_control") for p, _ in writes)


def test_hybrid_uses_v1_where_mounted_else_unified(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    (root / "memory" / "cgroup.procs").write_text("")
    _v2_tree(root / "unified", "cpu hugetlb")
    assert hierarchy("memory", str(root)) == (1, str(root / "memory"))
    assert hierarchy("cpu", str(root)) == (2, str(root / "unified"))
    groups = Cgroups.create("agent-3", 64 * 1024**2, 0.5, str(root))
    assert Path(groups.paths["memory"], "memory.limit_in_bytes").read_text() == str(64 * 1024**2)
    assert Path(groups.paths["cpu"], "cpu.max").read_text() == "50000 100000"
    assert groups.versions == {"memory": 1, "cpu": 2}


def test_a_controller_no_hierarchy_offers_is_an_oserror(tmp_path: Path) -> None:
    """This machine's layout when cpu's v1 hierarchy is missing: unified offers hugetlb only."""
    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    (root / "memory" / "cgroup.procs").write_text("")
    _v2_tree(root / "unified", "hugetlb")
    assert hierarchy("cpu", str(root)) is None
    with pytest.raises(OSError, match="no cgroup hierarchy offers cpu"):
        Cgroups.create("agent-4", 64 * 1024**2, 1.0, str(root))
    assert not cgroups_writable(str(root))
    assert not cgroups_writable(str(tmp_path / "nothing"))


def test_weights_keep_the_proportions() -> None:
    assert (cpu_shares(1.0), cpu_weight(1.0)) == (1024, 100)
    assert (cpu_shares(0.1), cpu_weight(0.1)) == (102, 10)
    assert (cpu_shares(0.0), cpu_weight(0.0)) == (2, 1)
    assert cpu_weight(500.0) == 10_000
