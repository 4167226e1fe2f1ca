"""`cfn portal --detach` (what `make run` starts): the login link reaches the caller only.

The link's single-use code opens a 12-hour operator session, so it must not sit in
the detached portal's log, which outlives the command that printed it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.servers import RedisServer, cfn_env, free_port

CFN = [sys.executable, "-m", "cfn"]


def test_the_detached_portal_logs_no_login_code(tmp_path: Path, redis_server: RedisServer) -> None:
    env = cfn_env(tmp_path, REDIS_URL=redis_server.url, CFN_PORTAL_WORKER="false")
    port = str(free_port())
    try:
        started = subprocess.run(
            [*CFN, "portal", "--detach", "--port", port],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        link = next(line for line in started.stdout.splitlines() if "#login=" in line)
        code = link.split("#login=", 1)[1].strip()
        assert code
        log = tmp_path / ".cfn" / "portal" / "portal.log"
        text = log.read_text()
        assert f":{port}" in text  # the portal did write its log
        assert "#login=" not in text and code not in text
        assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(log.parent).st_mode) == 0o700
    finally:
        subprocess.run(
            [*CFN, "portal", "stop"], env=env, cwd=tmp_path, capture_output=True, timeout=60
        )
