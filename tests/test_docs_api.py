"""Every Python example in docs/api.md runs as printed, in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.servers import RedisServer

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def _run(code: str, tmp_path: Path, **env: str) -> str:
    script = tmp_path / "example.py"
    script.write_text(code)
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "CFN_STATE_DIR": str(tmp_path / ".cfn"),
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stdout


def test_the_page_has_its_three_examples() -> None:
    assert len(EXAMPLES) == 3
    assert "cfn.run(" in EXAMPLES[0] and "listener=show" in EXAMPLES[1]
    assert "InMemoryLoop" in EXAMPLES[2]


def test_run_a_task(tmp_path: Path, redis_server: RedisServer) -> None:
    out = _run(EXAMPLES[0], tmp_path, REDIS_URL=redis_server.url)
    assert re.fullmatch(r"task-\d{8}-\d{6}-[0-9a-f]{6} succeeded PROCEED \d+\n", out), out
    assert (tmp_path / ".cfn" / "cfn.db").is_file()


def test_watch_a_task(tmp_path: Path, redis_server: RedisServer) -> None:
    lines = _run(EXAMPLES[1], tmp_path, REDIS_URL=redis_server.url).splitlines()
    assert {"impl-1-1 running None", "val-1-1 running None"} <= set(lines)
    assert any(re.fullmatch(r"impl-1-1 done 0\.\d+", line) for line in lines), lines
    assert any(re.fullmatch(r"gate 0\.\d+", line) for line in lines), lines
    assert lines[-1] == "decision PROCEED", lines


def test_the_in_memory_example_needs_no_server(tmp_path: Path) -> None:
    # PATH has no redis-server; CFN_STATE_DIR is never created.
    assert _run(EXAMPLES[2], tmp_path, PATH="/nonexistent") == "succeeded 2 ['PROCEED']\n"
    assert not (tmp_path / ".cfn").exists()
