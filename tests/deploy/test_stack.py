"""The seed's integration-test pattern under Podman: the generated docker-compose.test.yml
up with locally built images, a loop run inside it, results checked, down -v."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cfn.deploy.compose import TEST_FILE, generate
from cfn.deploy.stack import ComposeStack, StackError, interpolate
from cfn.errors import InvalidInputError
from cfn.settings import Settings
from tests.conftest import CFN
from tests.deploy.conftest import Engine


def _cfn(engine: Engine, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CFN, *args],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "DOCKER_HOST": engine.docker_host},
    )


def _stack_loop(
    tmp_path: Path, engine: Engine, project: str, command: list[str], task: str
) -> None:
    """The seed's cfn-loop-e2e.sh with `cfn docker compose` for `docker-compose`."""
    generate(Settings(), tmp_path)
    compose = ["docker", "compose", "-f", str(tmp_path / TEST_FILE), "-p", project]
    stack = ComposeStack(
        engine.client, [tmp_path / TEST_FILE], project, env={"CFN_TEST_TASK_ID": task}
    )
    try:
        up = _cfn(engine, *compose[:2], "up", *compose[2:], "--timeout", "240")
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"{project}: up and healthy: redis, orchestrator"
        # The seed's names: {project}_cfn-network, the services reachable by name.
        net = engine.client.networks.get(f"{project}_cfn-network")
        attached = {c.name for c in net.containers}
        assert {f"{project}-redis-1", f"{project}-orchestrator-1"} <= attached
        orchestrator = engine.client.containers.get(f"{project}-orchestrator-1")
        assert orchestrator.attrs["HostConfig"]["Memory"] == 1024**3
        assert orchestrator.attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
        # The loop runs inside the stack (`run --rm test-runner`: cfn orchestrate, standard).
        run = _cfn(engine, *compose[:2], "run", *compose[2:], "test-runner", *command)
        assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:])
        assert f"{task}: succeeded" in run.stdout
        assert not engine.client.containers.list(
            all=True, filters={"name": f"{project}-test-runner-run"}
        )  # --rm
        # Results: the completions in the stack's Redis, the task in the shared database.
        complete = stack.exec("redis", ["redis-cli", "LRANGE", f"coord:{task}:complete", "0", "-1"])
        entries = complete.logs.split()
        assert all(e.endswith(":success") for e in entries), entries
        # standard mode: 3 implementers and 3 validators, all in the last iteration.
        agents = {e.removesuffix(":success") for e in entries}
        last = max(int(a.rsplit("-", 1)[1]) for a in agents)
        team = {f"{role}-{n}-{last}" for role in ("impl", "val") for n in (1, 2, 3)}
        assert team <= agents, entries
        status = stack.exec(
            "orchestrator",
            # The task id is this test's own constant (no injection); sqlite3 has no binding.
            ["sqlite3", "/var/lib/cfn/test.db", f"SELECT status FROM tasks WHERE id = '{task}'"],  # noqa: S608
        )
        assert status.logs.strip() == "succeeded"
        ping = stack.exec("orchestrator", ["curl", "-fsS", "http://localhost:3000/api/ping"])
        assert ping.exit_code == 0
    finally:
        down = _cfn(engine, *compose[:2], "down", *compose[2:], "-v")
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == (f"{project}: removed 2 container(s), 1 network(s), 2 volume(s)")
    label = {"label": f"com.docker.compose.project={project}"}
    assert not engine.client.volumes.list(filters=label)
    assert not engine.client.containers.list(all=True, filters=label)
    assert not engine.client.networks.list(filters=label)


@pytest.fixture
def local_redis_image(monkeypatch: pytest.MonkeyPatch) -> None:
    # No registry here: Redis comes from the local cfn-redis image (CFN_REDIS_IMAGE).
    monkeypatch.setenv("CFN_REDIS_IMAGE", "cfn-redis:latest")


@pytest.mark.usefixtures("local_redis_image")
def test_compose_test_stack_runs_a_loop(tmp_path: Path, engine: Engine, project: str) -> None:
    """The short version: the seed's command with a fixed offline confidence (one iteration)."""
    task = "e2e-stack"
    command = [
        "cfn",
        "orchestrate",
        "--task-id",
        task,
        "--mode",
        "standard",
        "--epic",
        "Test the entire CFN Loop. offline-confidence: 0.97",
    ]
    _stack_loop(tmp_path, engine, project, command, task)


@pytest.mark.long
@pytest.mark.usefixtures("local_redis_image")
def test_compose_test_stack_runs_the_seeds_loop(
    tmp_path: Path, engine: Engine, project: str
) -> None:
    """The seed's own command and epic (random offline confidences): as many iterations as
    it takes."""
    seed_command = ["cfn", "orchestrate", "--task-id", "e2e-seed", "--mode", "standard"]
    _stack_loop(
        tmp_path, engine, project, [*seed_command, "--epic", "Test the entire CFN Loop"], "e2e-seed"
    )


def test_interpolation_follows_compose() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("${A}-${A:-x}-${B:-y}-${EMPTY:-z}-${EMPTY-w}-$$A", env) == "1-1-y-z--$A"
    assert interpolate({"k": ["${B-2}", 3]}, env) == {"k": ["2", 3]}
    with pytest.raises(InvalidInputError, match="NEEDED must be set: give it"):
        interpolate("${NEEDED:?give it}", env)


def test_bad_stack_input(tmp_path: Path, engine: Engine) -> None:
    with pytest.raises(InvalidInputError, match="project name"):
        ComposeStack(engine.client, [tmp_path / "x.yml"], "Bad Name")
    (tmp_path / "x.yml").write_text("services: [1, 2]\n")
    with pytest.raises(InvalidInputError, match="no services"):
        ComposeStack(engine.client, [tmp_path / "x.yml"], "ok")
    (tmp_path / "y.yml").write_text(
        "services:\n  a: {image: cfn-redis:latest, depends_on: [b]}\n"
        "  b: {image: cfn-redis:latest, depends_on: [a]}\n"
    )
    stack = ComposeStack(engine.client, [tmp_path / "y.yml"], "cfntest-cycle")
    with pytest.raises(InvalidInputError, match="cycle"):
        stack.up()
    with pytest.raises(InvalidInputError, match="no service"):
        stack.run("nope")
    with pytest.raises(StackError, match="not running"):
        stack.exec("a", ["true"])
    assert not engine.client.containers.list(
        all=True, filters={"label": "com.docker.compose.project=cfntest-cycle"}
    )
