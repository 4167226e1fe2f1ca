"""`cfn health` and GET /api/health/system on real parts: two redis-servers, SQLite,
a real MCP server started by `cfn mcp up`, the portal, Podman's Docker API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cfn.health import check_system
from cfn.mcp.launcher import Launcher
from cfn.settings import Settings
from cfn.store.records import AgentRecord
from cfn.store.repository import Store
from cfn.system.proc import proc_alive
from tests.conftest import CFN
from tests.deploy.conftest import Engine, engine, project  # noqa: F401  (fixtures)
from tests.portal.conftest import RunningPortal
from tests.support.servers import RedisServer, cfn_env, free_port


def health(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [*CFN, "health", "--json", "--timeout", "2", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not proc.stderr.strip() or "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    return proc.returncode, report, proc.stderr


def system(mp: pytest.MonkeyPatch, **env: str) -> tuple[int, dict[str, Any]]:
    """The same report in this process (``cfn health``'s library call), for ``env``."""
    for name in ("DOCKER_HOST", "MODE", "MCP_AUTH_TOKEN", "DATABASE_URL", "DB_PATH"):
        mp.delenv(name, raising=False)
    for name, value in env.items():
        mp.setenv(name, value)
    report = asyncio.run(check_system(Settings(), timeout=2.0))
    return report.exit_code, report.to_dict()


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def _migrated(tmp_path: Path) -> None:
    Store.open(Settings(cfn_state_dir=tmp_path / ".cfn")).close()


def test_everything_up_then_parts_down(
    tmp_path: Path,
    redis_server: RedisServer,
    fallback: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _migrated(tmp_path)
    env = cfn_env(tmp_path, REDIS_URL=redis_server.url, REDIS_FALLBACK_1=fallback.url)
    env.pop("DOCKER_HOST", None)
    code, report, _ = health(env)
    checks = by_name(report)
    assert code == 0, report
    assert report["status"] == "ok" and report["errors"] == 0
    assert (
        checks["redis"]["status"] == "ok" and f":{redis_server.port}/" in checks["redis"]["detail"]
    )
    assert checks["redis-fallback"]["status"] == "ok"
    assert f":{fallback.port}/" in checks["redis-fallback"]["detail"]
    assert checks["database"]["status"] == "ok" and checks["database"]["latencyMs"] > 0
    for name in ("mcp", "portal", "containers"):
        assert checks[name]["configured"] is False and "not configured" in checks[name]["detail"]
    assert checks["agents"]["status"] == "ok"

    # The fallback dies: one error, exit 1, and the primary still reported ok
    # (each server is pinged on its own connection; no failover hides either).
    fallback.kill()
    code, report = system(monkeypatch, REDIS_URL=redis_server.url, REDIS_FALLBACK_1=fallback.url)
    checks = by_name(report)
    assert code == 1 and report["errors"] == 1
    assert checks["redis"]["status"] == "ok"
    assert checks["redis-fallback"]["status"] == "error"
    assert "not responding" in checks["redis-fallback"]["detail"]

    # The primary too, and the database file gone: three errors, exit 3.
    redis_server.kill()
    (tmp_path / ".cfn" / "cfn.db").unlink()
    code, report = system(monkeypatch)
    checks = by_name(report)
    assert code == 3, report
    assert {n for n, c in checks.items() if c["status"] == "error"} == {
        "redis",
        "redis-fallback",
        "database",
    }
    assert "does not exist" in checks["database"]["detail"]
    # Reading the report wrote nothing: no database file was created.
    assert not (tmp_path / ".cfn" / "cfn.db").exists()

    # The table form: one row per check, the error count, the same exit code.
    proc = subprocess.run(
        [*CFN, "health", "--timeout", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3
    for name in ("redis", "redis-fallback", "database", "agents", "containers"):
        assert name in proc.stdout
    assert "3 error(s)" in proc.stdout


def test_bad_options_are_one_error_exit_2(tmp_path: Path) -> None:
    env = cfn_env(tmp_path)
    cases = {
        "zero": (["--timeout", "0"], "timeout must be"),
        "nan": (["--timeout", "nan"], "timeout must be"),
        "word": (["--timeout", "x"], "Invalid value"),
    }
    procs = {
        name: subprocess.Popen(
            [*CFN, "health", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, _) in cases.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (name, out, err)
        assert cases[name][1] in err and "Traceback" not in err
    assert not (tmp_path / ".cfn" / "cfn.db").exists()


def test_schema_behind_is_a_warning(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "old.db"
    db.write_bytes(b"")  # an empty SQLite file: answers SELECT 1, has no schema
    code, report = system(monkeypatch, REDIS_URL=redis_server.url, DB_PATH=str(db))
    database = by_name(report)["database"]
    assert code == 0 and database["status"] == "warn"
    assert "cfn db upgrade" in database["detail"] and report["status"] == "warn"


def test_agents_marked_running_without_heartbeat_or_process(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(cfn_state_dir=tmp_path / ".cfn")
    with Store.open(settings) as store:
        store.create_task("h1", "mvp", "health check task")
        for agent_id in ("impl-1-1", "impl-2-1"):
            store.save_agent(AgentRecord("h1", agent_id, "implementer", 3, 1, None, None, None,
                                         "running"))  # fmt: skip
    code, report = system(monkeypatch, REDIS_URL=redis_server.url)
    agents = by_name(report)["agents"]
    assert code == 0 and agents["status"] == "warn"
    assert agents["data"]["markedRunning"] == 2 and agents["data"]["heartbeats"] == 0
    assert sorted(agents["data"]["stale"]) == ["h1/impl-1-1", "h1/impl-2-1"]
    # One of them beats (as an agent does): only the other is stale.
    redis_server.client().set("swarm:h1:heartbeat:impl-1-1", '{"status": "running"}', px=60000)
    _code, report = system(monkeypatch)
    agents = by_name(report)["agents"]
    assert agents["data"]["stale"] == ["h1/impl-2-1"] and agents["data"]["heartbeats"] == 1
    redis_server.client().set("swarm:h1:heartbeat:impl-2-1", '{"status": "running"}', px=60000)
    _code, report = system(monkeypatch)
    assert by_name(report)["agents"]["status"] == "ok"


def test_mcp_server_up_then_killed(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _migrated(tmp_path)
    env = {
        "REDIS_URL": redis_server.url,
        "MCP_AUTH_TOKEN": secrets.token_hex(32),
        "MCP_PLAYWRIGHT_PORT": str(free_port()),
        "MCP_REDIS_TOOLS_PORT": str(free_port()),
        "MCP_N8N_PORT": str(free_port()),
        "MCP_SECURITY_SCANNER_PORT": str(free_port()),
        "MCP_GATEWAY_PORT": str(free_port()),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    launcher = Launcher(Settings())
    launcher.up(["redis-tools"], env=cfn_env(tmp_path, **env))
    try:
        code, report = system(monkeypatch, **env)
        checks = by_name(report)
        assert code == 0, report
        assert checks["mcp:redis-tools"]["status"] == "ok"
        assert checks["mcp:redis-tools"]["detail"].endswith("/health: HTTP 200")
        assert checks["mcp:playwright"]["configured"] is False
        pid = launcher.read_state()["redis-tools"].pid
        os.killpg(pid, signal.SIGKILL)
        # Reap it if it is this process's child (started as its own Python); forked from
        # the agent server, that server reaps it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        deadline = time.monotonic() + 10
        while proc_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        code, report = system(monkeypatch, **env)
        checks = by_name(report)
        assert code == 1 and checks["mcp:redis-tools"]["status"] == "error"
        assert "is gone" in checks["mcp:redis-tools"]["detail"]
    finally:
        launcher.down()


@pytest.fixture
def podman_api(tmp_path: Path) -> Iterator[str]:
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("podman is not installed")
    sock = tmp_path / "podman.sock"
    proc = subprocess.Popen(
        [podman, "system", "service", "--time=0", f"unix://{sock}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://podman") as client:
            while True:
                try:
                    if client.get("/version").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "podman system service did not answer"
                time.sleep(0.1)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(30)


def test_containers_through_podmans_docker_api(
    tmp_path: Path, redis_server: RedisServer, podman_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _migrated(tmp_path)
    proj = f"hc{secrets.token_hex(4)}"
    env = {
        "REDIS_URL": redis_server.url,
        "DOCKER_HOST": podman_api,
        "COMPOSE_PROJECT_NAME": proj,
    }
    code, report = system(monkeypatch, **env)
    checks = by_name(report)
    assert code == 3, report
    for service in ("orchestrator", "redis", "postgres"):
        check = checks[f"container:{service}"]
        assert (
            check["status"] == "error" and f"no container in project {proj}" in check["detail"]
        )
    # A created-but-stopped redis container of the project: named, and still an error.
    name = f"{proj}-redis-1"
    created = subprocess.run(
        ["podman", "create", "--name", name,
         "--label", f"com.docker.compose.project={proj}",
         "--label", "com.docker.compose.service=redis",
         "--rootfs", "/", "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    try:
        code, report = system(monkeypatch, **env)
        redis_check = by_name(report)["container:redis"]
        assert code == 3 and redis_check["status"] == "error"
        assert name in redis_check["detail"] and "created" in redis_check["detail"]
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, timeout=60)
    # An API that does not answer, and a DOCKER_HOST cfn cannot use: one error each.
    for host, words in (
        (f"unix://{tmp_path}/nothing.sock", "does not answer"),
        ("ftp://example", "is not supported"),
    ):
        code, report = system(monkeypatch, **{**env, "DOCKER_HOST": host})
        containers = by_name(report)["containers"]
        assert containers["status"] == "error" and words in containers["detail"]


def test_portal_endpoint_carries_the_report(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    settings = Settings()
    portal = RunningPortal(settings, worker=False).start()
    try:
        with portal.client() as http:
            reply = http.get("/api/health/system")
        assert reply.status_code == 200
        body = reply.json()
        # The dashboard's fields are unchanged ...
        assert body["checks"]["redis"]["ok"] and body["checks"]["database"]["ok"]
        # ... and cfn health's report is there too.
        carried = by_name(body["system"])
        assert carried["portal"] == {
            "name": "portal",
            "status": "ok",
            "detail": "answering this request",
            "latencyMs": None,
            "configured": True,
            "data": {},
        }
        assert carried["redis"]["status"] == "ok" and carried["database"]["status"] == "ok"
        assert body["system"]["errors"] == 0
        # `cfn health` finds the same portal through its record, and asks it.
        record = settings.state_dir / "portal" / "instance.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(
            json.dumps({"pid": os.getpid(), "host": "127.0.0.1", "port": portal.port})
        )
        code, report = system(monkeypatch, REDIS_URL=redis_server.url)
        check = by_name(report)["portal"]
        assert code == 0 and check["status"] == "ok" and "/api/ping: HTTP 200" in check["detail"]
    finally:
        portal.stop()
    code, report = system(monkeypatch)
    check = by_name(report)["portal"]
    assert code == 1 and check["status"] == "error"


def test_running_compose_containers_are_ok(
    tmp_path: Path,
    redis_server: RedisServer,
    engine: Engine,  # noqa: F811
    project: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The healthy path: the project's orchestrator, redis and postgres containers run
    (cfn's agent image, on cfn's own Podman service): each check ok, no error from them."""
    _migrated(tmp_path)
    for service in ("orchestrator", "redis", "postgres"):
        engine.client.containers.run(
            "cfn-agent:latest",
            ["300"],
            # The image's entrypoint is `cfn agent run`: without this the container ran
            # `cfn agent run sleep 300`, a usage error (exit 2), and the check passed only
            # while that error was still starting up.
            entrypoint=["sleep"],
            detach=True,
            name=f"{project}-{service}-1",
            network_mode="none",
            labels={"com.docker.compose.project": project, "com.docker.compose.service": service},
        )
    _code, report = system(
        monkeypatch,
        REDIS_URL=redis_server.url,
        DOCKER_HOST=engine.docker_host,
        COMPOSE_PROJECT_NAME=project,
    )
    checks = by_name(report)
    for service in ("orchestrator", "redis", "postgres"):
        check = checks[f"container:{service}"]
        assert check["status"] == "ok", check
        assert f"{project}-{service}-1" in check["detail"], check
    mine = [c for c in report["checks"] if c["name"].startswith("container")]
    assert len(mine) == 3 and all(c["status"] == "ok" for c in mine), mine
