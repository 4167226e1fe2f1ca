"""The seed's CLI context JSON: keys, values, file handling, validation."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from cfn.agents.context import AgentContext, agent_dir, generate_cli_context
from cfn.errors import AgentContextError, InvalidIdError, InvalidInputError
from cfn.settings import Settings
from cfn.system.limits import parse_cpu_limit, parse_memory_limit

SEED_TOP = {"task_id", "agent_id", "mode", "workspace", "coordination", "resources"}


def test_context_has_exactly_the_seeds_keys(make_context: Any, task_id: str) -> None:
    data = make_context("impl-1-1").to_dict()
    assert set(data) == SEED_TOP | {"cfn"}
    assert data["task_id"] == task_id
    assert data["agent_id"] == "impl-1-1"
    assert data["mode"] == "cli"
    assert set(data["coordination"]) == {"redis", "channels"}
    assert set(data["coordination"]["redis"]) == {"host", "port"}
    assert isinstance(data["coordination"]["redis"]["port"], int)
    assert data["coordination"]["channels"] == {
        "complete": f"coord:{task_id}:complete",
        "error": f"coord:{task_id}:error",
        "signal": f"coord:{task_id}:signal:impl-1-1",
    }
    # Rendered as the seed's heredoc renders them: strings, defaults 1g and 300.
    assert data["resources"] == {"memory_limit": "1g", "timeout": "300"}
    cfn = data["cfn"]
    assert cfn["name"] == f"cfn-agent-impl-1-1-{task_id}"
    assert cfn["provider"] == "zai"
    assert cfn["heartbeat"]["key"] == f"swarm:{task_id}:heartbeat:impl-1-1"
    assert cfn["signal_key"] == f"swarm:{task_id}:signal:impl-1-1"
    # Secrets are named, never written.
    assert cfn["redis"]["password_env"] == "REDISCLI_AUTH"
    assert "password" not in json.dumps(cfn["redis"]).replace("password_env", "")


def test_limits_come_from_the_agent_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make_context: Any
) -> None:
    monkeypatch.setenv("AGENT_MEMORY_LIMIT", "512m")
    monkeypatch.setenv("AGENT_TIMEOUT", "45")
    monkeypatch.setenv("AGENT_CPU_LIMIT", "0.5")
    monkeypatch.setenv("CFN_AGENT_HEARTBEAT_INTERVAL", "2")
    settings = Settings(cfn_state_dir=tmp_path / ".cfn")
    ctx = generate_cli_context(
        "t1", "a1", settings=settings, redis_host="h", redis_port=1, workspace=tmp_path
    )
    assert ctx.resources.memory_limit == "512m"
    assert ctx.resources.timeout == "45"
    assert ctx.cfn.cpu_limit == "0.5"
    assert ctx.cfn.heartbeat.ttl_ms == 4000


def test_context_file_is_private_and_round_trips(make_context: Any, settings: Settings) -> None:
    ctx = make_context("val-2-1", role="reviewer", loop=2, iteration=1, feedback=["fix x"])
    path = ctx.write(settings.state_dir)
    assert path == agent_dir(settings.state_dir, ctx.task_id, "val-2-1") / "context.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = AgentContext.from_file(path)
    assert again == ctx
    assert again.cfn.feedback == ["fix x"]


def _bad(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    target = data
    for part in path[:-1]:
        target = target[part]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("resources", "timeout"), _DELETE, "resources.timeout is missing"),
        (("mode",), _DELETE, "mode is missing"),
        (("mode",), "mvp", "agent mode 'mvp' is not one of cli"),
        (("coordination", "redis", "port"), "6379", "coordination.redis.port"),
        (("coordination", "redis", "port"), 70000, "coordination.redis.port"),
        (("resources", "timeout"), "soon", "resources.timeout"),
        (("agent_id",), "../../etc", "agent_id"),
        (("coordination", "channels", "complete"), "coord:other:complete", "channels.complete"),
        (("cfn", "heartbeat", "key"), "swarm:x:heartbeat:y", "cfn.heartbeat.key"),
        (("resources", "timout"), "300", "resources.timout is not a context field"),
    ],
)
def test_bad_context_is_one_error_naming_the_field(
    make_context: Any, tmp_path: Path, path: tuple[str, ...], value: Any, named: str
) -> None:
    data = _bad(make_context().to_dict(), path, value)
    file = tmp_path / "ctx.json"
    file.write_text(json.dumps(data))
    with pytest.raises(AgentContextError) as info:
        AgentContext.from_file(file)
    message = str(info.value)
    assert named in message
    assert str(file) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"), (None, "does not")],
)
def test_unreadable_context_files(tmp_path: Path, content: str | None, expected: str) -> None:
    file = tmp_path / "ctx.json"
    if content is not None:
        file.write_text(content)
    with pytest.raises(AgentContextError, match=expected):
        AgentContext.from_file(file)


def test_ids_are_validated_before_they_become_paths(settings: Settings) -> None:
    for bad in ("..", "../x", "a/b", "", "a:b", "x" * 129):
        with pytest.raises(InvalidIdError):
            agent_dir(settings.state_dir, "t1", bad)
        with pytest.raises(InvalidIdError):
            agent_dir(settings.state_dir, bad, "a1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512m", 512 * 1024**2),
        ("1g", 1024**3),
        ("1G", 1024**3),
        ("1.5g", int(1.5 * 1024**3)),
        ("65536k", 64 * 1024**2),
        ("64mb", 64 * 1024**2),
        ("67108864", 64 * 1024**2),
    ],
)
def test_memory_limits_parse(text: str, expected: int) -> None:
    assert parse_memory_limit(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "1x", "-1g", "1 g b", "0", "1k", "1e9", "nan"])
def test_bad_memory_limits_are_clear_errors(text: str) -> None:
    with pytest.raises(InvalidInputError, match="AGENT_MEMORY_LIMIT"):
        parse_memory_limit(text)


@pytest.mark.parametrize("value", ["x", "0", "-1", "nan", "inf", "100000", True])
def test_bad_cpu_limits_are_clear_errors(value: object) -> None:
    with pytest.raises(InvalidInputError, match="AGENT_CPU_LIMIT"):
        parse_cpu_limit(value)
