"""The run log keeps what a failed test left behind, outside pytest's temporary folders."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support import runlog


def _report(outcome: str) -> pytest.TestReport:
    return pytest.TestReport(
        "tests/x.py::test_flaky[a/b]", ("tests/x.py", 1, "test_flaky"), {}, outcome, None, "call"
    )


def test_a_failed_tests_files_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    left = tmp_path / "left"
    (left / ".cfn" / "logs").mkdir(parents=True)
    (left / ".cfn" / "logs" / "worker.log").write_text("the task waited for ...\n")
    (left / "big.bin").write_bytes(b"x" * (runlog.KEPT_FILE_MAX + 1))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(left / "s.sock"))  # not a file: left out
    item = SimpleNamespace(funcargs={"tmp_path": left})
    try:
        assert runlog.keep_failure_files(item, _report("passed")) is None  # type: ignore[arg-type]
        kept = runlog.keep_failure_files(item, _report("failed"))  # type: ignore[arg-type]
    finally:
        listener.close()
    assert kept is not None and kept.parent == tmp_path / "cache" / "cfn" / "test-runs" / "failures"
    assert kept.name.endswith("-call-tests_x.py_test_flaky_a_b_")
    assert [p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()] == [
        ".cfn/logs/worker.log"
    ]
    assert (kept / ".cfn" / "logs" / "worker.log").read_text() == "the task waited for ...\n"
    # a test without a temporary folder leaves nothing to keep
    bare = SimpleNamespace(funcargs={})
    assert runlog.keep_failure_files(bare, _report("failed")) is None  # type: ignore[arg-type]
