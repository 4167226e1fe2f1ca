"""Worktrees end to end: a temp git repo, ``cfn worktree create/list/remove`` as
subprocesses, and two real CFN Loops (offline provider) running at the same time,
each on its worktree's own embedded redis-server and SQLite database."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cfn.coordination.embedded import EmbeddedRedis
from cfn.errors import InvalidInputError, UnknownWorktreeError
from cfn.settings import Settings
from cfn.system.proc import proc_alive
from cfn.worktree import manage
from cfn.worktree.manage import read_env
from cfn.worktree.ports import calculate_ports, port_is_free
from cfn.worktree.project import branch_slug, project_name_for

CFN = [sys.executable, "-m", "cfn"]
SEED_DEFAULTS = {6379, 5432, 3000}
GIT_ID = ["-c", "user.email=test@example.invalid", "-c", "user.name=cfn tests"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without cfn's variables: a worktree must find its own state."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "CFN_", "WORKTREE_", "COMPOSE_", "DATABASE_URL", "DB_PATH"))
    }
    env["COLUMNS"] = "250"  # so Rich tables do not wrap
    env.update(extra)
    return env


def cfn(cwd: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CFN, *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    (root / "README.md").write_text("hello\n")
    (root / ".gitignore").write_text(".cfn/\n")
    subprocess.run(["git", "add", "README.md", ".gitignore"], cwd=root, check=True)
    subprocess.run(["git", *GIT_ID, "commit", "-q", "-m", "init"], cwd=root, check=True)
    yield root
    # Whatever a failed test left running: stop every embedded Redis under tmp_path.
    for instance in tmp_path.glob("*/.cfn/redis/instance.json"):
        EmbeddedRedis(Settings(cfn_state_dir=instance.parent.parent)).stop()


def free_branches(count: int, prefix: str) -> list[str]:
    """Branch names whose seed ports differ, are free now, and are none of the seed defaults."""
    names: list[str] = []
    used: set[int] = set()
    for i in range(500):
        name = f"{prefix}-{i}"
        ports = calculate_ports(name)
        wanted = {ports.redis, ports.postgres, ports.orchestrator}
        if wanted & (used | SEED_DEFAULTS) or not all(port_is_free(p) for p in wanted):
            continue
        names.append(name)
        used |= wanted
        if len(names) == count:
            return names
    pytest.skip("no free ports for the test branches")


def test_create_writes_env_and_list_remove(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (branch,) = free_branches(1, "feature/Auth")
    made = cfn(repo, "worktree", "create", branch)
    assert made.returncode == 0, made.stderr
    path = repo.parent / f"cfn-{branch_slug(branch)}"
    assert path.is_dir() and (path / ".git").is_file()
    env = read_env(path / ".cfn" / "worktree.env")
    ports = calculate_ports(branch)
    assert env["WORKTREE_BRANCH"] == branch
    assert (
        env["COMPOSE_PROJECT_NAME"]
        == project_name_for(branch)
        == env["COMPOSE_PROJECT_NAME"].lower()
    )
    assert env["COMPOSE_PROJECT_NAME"].startswith("cfn-feature-auth-")
    assert (env["CFN_REDIS_PORT"], env["CFN_POSTGRES_PORT"], env["CFN_ORCHESTRATOR_PORT"]) == (
        str(ports.redis),
        str(ports.postgres),
        str(ports.orchestrator),
    )
    # Settings in the worktree read the file; an exported variable still wins.
    monkeypatch.delenv("CFN_STATE_DIR")
    monkeypatch.chdir(path)
    cfg = Settings()
    assert (cfg.worktree_branch, cfg.cfn_redis_port) == (branch, ports.redis)
    assert cfg.state_dir == path.resolve() / ".cfn"
    monkeypatch.setenv("CFN_REDIS_PORT", "7777")
    assert Settings().cfn_redis_port == 7777
    monkeypatch.chdir(repo)
    assert Settings().worktree_branch is None
    listed = cfn(repo, "worktree", "list")
    assert listed.returncode == 0, listed.stderr
    assert branch in listed.stdout and "main" in listed.stdout
    assert f"{ports.redis}/{ports.postgres}/{ports.orchestrator}" in listed.stdout

    # Start the worktree's Redis; remove stops it and takes the state and the checkout.
    started = cfn(path, "redis", "start")
    assert started.returncode == 0, started.stderr
    assert f":{ports.redis}/" in started.stdout
    assert "up" in cfn(repo, "worktree", "list").stdout
    gone = cfn(repo, "worktree", "remove", branch)
    assert gone.returncode == 0, gone.stderr
    assert "redis-server stopped" in gone.stderr
    assert not path.exists()
    assert port_is_free(ports.redis)
    branches = subprocess.run(
        ["git", "branch", "--list", branch], cwd=repo, capture_output=True, text=True
    ).stdout
    assert branch in branches  # the branch is kept


def test_bad_input_is_one_error_and_creates_nothing(repo: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    # The CLI's shape once: one [ERROR] line, exit 2 for bad input, 1 for a failure.
    run = cfn(repo, "worktree", "create", "--", "bad..name")
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[ERROR]"), run.stderr
    outside = tmp_path / "plain"
    outside.mkdir()
    run = cfn(outside, "worktree", "remove", "x")
    assert run.returncode == 1 and run.stderr.startswith("[ERROR]"), run.stderr
    # The rest through the library (each a CfnError with the exit code the CLI uses).
    for bad in ("-x", "with space", "trailing/", "x.lock", "naïve", "a//b", "", "x" * 201):
        with pytest.raises(InvalidInputError, match="not a usable branch name"):
            manage.create(repo, bad)
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(InvalidInputError, match="already exists"):
        manage.create(repo, "feature-x", taken)
    with pytest.raises(InvalidInputError, match="already checked out"):
        manage.create(repo, "main")
    with pytest.raises(UnknownWorktreeError, match="no worktree has branch") as info:
        manage.remove(repo, "no-such-branch")
    assert info.value.exit_code == 2
    with pytest.raises(InvalidInputError, match="main checkout"):
        manage.remove(repo, "main")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "taken", "plain"])
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=repo, capture_output=True, text=True
    ).stdout
    assert len(worktrees.strip().splitlines()) == 1
    branches = subprocess.run(["git", "branch"], cwd=repo, capture_output=True, text=True).stdout
    assert branches.split() == ["*", "main"]


def test_same_project_name_and_dirty_worktree_are_refused(repo: Path, tmp_path: Path) -> None:
    (branch,) = free_branches(1, "Clash")
    assert cfn(repo, "worktree", "create", branch).returncode == 0
    twin = branch.lower().replace("-", "_")  # same project name once '_' becomes '-'
    run = cfn(repo, "worktree", "create", twin, str(tmp_path / "twin"))
    assert run.returncode == 2 and "Compose project" in run.stderr
    path = repo.parent / f"cfn-{branch_slug(branch)}"
    (path / "README.md").write_text("changed\n")
    run = cfn(repo, "worktree", "remove", branch)
    assert run.returncode == 1 and "uncommitted" in run.stderr and path.exists()
    run = cfn(repo, "worktree", "remove", branch, "--force")
    assert run.returncode == 0 and not path.exists()


def test_port_clash_with_another_worktree_moves_to_a_free_port(repo: Path, tmp_path: Path) -> None:
    # Two branches whose sha256 starts with the same two hex digits share the seed's ports.
    first = free_branches(1, "twin-a")[0]
    wanted = calculate_ports(first)
    second = next(f"twin-b-{i}" for i in range(5000) if calculate_ports(f"twin-b-{i}") == wanted)
    assert cfn(repo, "worktree", "create", first).returncode == 0
    run = cfn(repo, "worktree", "create", second)
    assert run.returncode == 0, run.stderr
    assert "is taken or reserved" in run.stderr
    env_a = read_env(repo.parent / f"cfn-{branch_slug(first)}" / ".cfn" / "worktree.env")
    env_b = read_env(repo.parent / f"cfn-{branch_slug(second)}" / ".cfn" / "worktree.env")
    for key in ("CFN_REDIS_PORT", "CFN_POSTGRES_PORT", "CFN_ORCHESTRATOR_PORT"):
        assert env_a[key] != env_b[key]
    assert env_a["CFN_NETWORK_SUBNET"] != env_b["CFN_NETWORK_SUBNET"]


def _task_id(output: str) -> str:
    match = re.search(r"task id: (\S+)", output)
    assert match, output
    return match.group(1)


def test_two_worktrees_run_loops_at_the_same_time_in_isolation(repo: Path) -> None:
    branches = free_branches(2, "loop")
    paths: list[Path] = []
    for branch in branches:
        made = cfn(repo, "worktree", "create", branch)
        assert made.returncode == 0, made.stderr
        paths.append(repo.parent / f"cfn-{branch_slug(branch)}")

    env = clean_env(CFN_AGENT_HEARTBEAT_INTERVAL="0.5", AGENT_TIMEOUT="60")
    procs = [
        subprocess.Popen(
            [*CFN, "run", "--mode", "mvp", "--implementers", "1", "--validators", "1",
             # The offline provider's hashed confidences fail consensus five times
             # running now and then (~0.5 %): pinned, as this test is about isolation.
             "--epic", f"Build a hello module for {branch}. offline-confidence: 0.9"],
            cwd=path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for branch, path in zip(branches, paths, strict=True)
    ]  # fmt: skip
    # Both embedded Redis servers come up while both loops run.
    deadline = time.monotonic() + 30
    instances = [p / ".cfn" / "redis" / "instance.json" for p in paths]
    while time.monotonic() < deadline and not all(i.exists() for i in instances):
        time.sleep(0.05)
    assert all(i.exists() for i in instances)
    assert all(proc.poll() is None for proc in procs), "the loops did not overlap"
    results = [proc.communicate(timeout=90) for proc in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, out + err
    task_ids = [_task_id(out) for out, _ in results]
    assert task_ids[0] != task_ids[1]

    ports = []
    for path, task_id, other in zip(paths, task_ids, task_ids[::-1], strict=True):
        data = json.loads((path / ".cfn" / "redis" / "instance.json").read_text())
        # The worktree's own port: the seed's calculate_ports unless create had to move it.
        assert data["port"] == int(read_env(path / ".cfn" / "worktree.env")["CFN_REDIS_PORT"])
        assert data["port"] not in SEED_DEFAULTS
        ports.append(data["port"])
        client = redis.Redis(port=data["port"], password=data["password"], decode_responses=True)
        keys = set(client.keys("*"))
        client.close()
        assert f"coord:{task_id}:complete" in keys
        assert any(task_id in k for k in keys) and not any(other in k for k in keys)
        db = sqlite3.connect(path / ".cfn" / "cfn.db")
        tasks = [row[0] for row in db.execute("SELECT id FROM tasks")]
        agents = {row[0] for row in db.execute("SELECT task_id FROM agents")}
        db.close()
        assert tasks == [task_id] and agents == {task_id}
        assert (path / ".cfn" / "workspaces" / task_id).is_dir()
    assert ports[0] != ports[1]

    for branch, path, port in zip(branches, paths, ports, strict=True):
        # Each worktree's loop started its own LLM gateway; removing the worktree stops it.
        gateway = json.loads((path / ".cfn" / "llm-gateway" / "instance.json").read_text())
        gone = cfn(repo, "worktree", "remove", branch)
        assert gone.returncode == 0, gone.stderr
        assert not path.exists() and port_is_free(port)
        assert not proc_alive(gateway["pid"], gateway.get("pid_start"))
