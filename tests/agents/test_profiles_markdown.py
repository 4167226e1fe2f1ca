"""Markdown profiles: YAML front matter, PROVIDER_PARAMETERS, .cfn/agents and .claude/agents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cfn.agents.context import generate_cli_context
from cfn.agents.runtime import AgentRuntime
from cfn.errors import ProfileError
from cfn.profiles import load_profile_file, load_profiles, profile_dirs
from cfn.providers import ChatRequest, ChatResponse
from cfn.providers.types import Usage
from cfn.settings import Settings

CODER_MD = """---
name: coder
description: |
  MUST BE USED when implementing features.
tools: [Read, Write, Edit, Bash]
model: haiku
type: specialist
capabilities:
  - coding
acl_level: 1
---

# Coder Agent

Write clean, tested code.

<!-- PROVIDER_PARAMETERS provider: zai model: glm-4.6 -->
"""


def settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"cfn_state_dir": tmp_path / "state", "cfn_agents_dir": None}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout of its own (``.git``), the current directory, no CFN_AGENTS_DIR."""
    root = tmp_path / "project"
    (root / ".git").mkdir(parents=True)
    monkeypatch.chdir(root)
    monkeypatch.delenv("CFN_AGENTS_DIR", raising=False)
    return root


def test_existing_cfn_profile_loads(project: Path, tmp_path: Path) -> None:
    path = write(project / ".claude/agents/cfn-dev-team/developers/coder.md", CODER_MD)
    profiles = load_profiles(settings(tmp_path))
    coder = profiles.get("coder-2-1")  # loop ids map to the role
    assert coder is not None
    assert coder.id == "coder" and coder.name == "coder"
    assert coder.description == "MUST BE USED when implementing features.\n"
    # The comment supplies the provider; its model replaces Claude Code's tier "haiku".
    assert (coder.provider, coder.model) == ("zai", "glm-4.6")
    assert coder.instructions == "# Coder Agent\n\nWrite clean, tested code."
    assert profiles.source("coder") == str(path)
    assert profiles.get("reviewer") is not None  # built-ins stay


def test_both_folders_recursive_and_cfn_wins(project: Path, tmp_path: Path) -> None:
    write(project / ".claude/agents/team/a/coder.md", CODER_MD)
    write(
        project / ".claude/agents/analyst.md",
        "---\nname: analyst\ndescription: from claude\n---\nAnalyse.\n",
    )
    write(
        project / ".cfn/agents/deep/er/coder.md",
        "---\nname: coder\nprovider: kimi\nmodel: kimi-k2\ntemperature: 0.4\n---\nOurs.\n",
    )
    write(
        project / ".cfn/agents/arch.json",
        json.dumps({"id": "system-architect", "name": "Arch", "provider": "zai"}),
    )
    profiles = load_profiles(settings(tmp_path))
    coder = profiles.get("coder")
    assert coder is not None
    assert (coder.provider, coder.model, coder.temperature) == ("kimi", "kimi-k2", 0.4)
    assert coder.instructions == "Ours."
    assert profiles.source("coder").endswith(".cfn/agents/deep/er/coder.md")
    analyst = profiles.get("analyst")
    assert analyst is not None and analyst.description == "from claude"
    arch = profiles.get("system-architect")
    assert arch is not None and arch.provider == "zai"
    assert profile_dirs(settings(tmp_path)) == [
        project / ".claude/agents",
        project / ".cfn/agents",
    ]


def test_cfn_agents_dir_replaces_both(project: Path, tmp_path: Path) -> None:
    write(project / ".claude/agents/analyst.md", "---\nname: analyst\n---\n")
    write(project / ".cfn/agents/helper.md", "---\nname: helper\n---\n")
    own = tmp_path / "own"
    write(own / "x/solo.md", "---\nname: solo\n---\nAlone.\n")
    profiles = load_profiles(settings(tmp_path, cfn_agents_dir=own))
    assert profiles.get("solo") is not None
    assert profiles.get("analyst") is None and profiles.get("helper") is None


def test_documentation_beside_claude_profiles_is_skipped(project: Path, tmp_path: Path) -> None:
    readme = write(project / ".claude/agents/README.md", "# The team\n\nNo front matter.\n")
    write(project / ".claude/agents/coder.md", CODER_MD)
    profiles = load_profiles(settings(tmp_path))
    assert profiles.skipped == (str(readme),)
    assert profiles.get("coder") is not None
    # In cfn's own folder the same file is an error: every Markdown file there is a profile.
    write(project / ".cfn/agents/notes.md", "just notes\n")
    with pytest.raises(ProfileError, match=r"notes\.md: no front matter"):
        load_profiles(settings(tmp_path))


@pytest.mark.parametrize(
    ("front", "comment", "expected"),
    [
        # Front matter wins over the comment ...
        (
            "provider: anthropic\nmodel: claude-x",
            "provider: zai model: glm-4.6",
            ("anthropic", "claude-x"),
        ),
        # ... field by field.
        ("model: my-model", "provider: zai model: glm-4.6", ("zai", "my-model")),
        ("provider: kimi", "provider: zai model: glm-4.6", ("kimi", "glm-4.6")),
        # A Claude Code tier names no model of the comment's provider.
        ("model: sonnet", "provider: zai model: glm-4.6", ("zai", "glm-4.6")),
        # "inherit" without a comment model means no model (the route table decides).
        ("model: inherit", "provider: zai", ("zai", None)),
        # Multi-line comment.
        (
            "",
            "\nprovider: openrouter\nmodel: qwen/qwen3-coder\n",
            ("openrouter", "qwen/qwen3-coder"),
        ),
        # No comment at all.
        ("model: opus", None, (None, "opus")),
    ],
)
def test_provider_parameters(
    tmp_path: Path, front: str, comment: str | None, expected: tuple[str | None, str | None]
) -> None:
    note = f"<!-- PROVIDER_PARAMETERS {comment} -->\n" if comment is not None else ""
    text = f"---\nname: agent\n{front}\n---\n{note}Body.\n"
    profile = load_profile_file(write(tmp_path / "agent.md", text))
    assert (profile.provider, profile.model) == expected
    assert profile.instructions == "Body."  # the comment is not part of the instructions


def test_comment_before_front_matter_breaks_nothing(tmp_path: Path) -> None:
    text = "---\nname: agent\n---\nIntro.\n\n<!--PROVIDER_PARAMETERS provider:zai model:glm-4.6-->"
    profile = load_profile_file(write(tmp_path / "agent.md", text))
    assert (profile.provider, profile.model, profile.instructions) == ("zai", "glm-4.6", "Intro.")


def test_full_front_matter_and_id_override(tmp_path: Path) -> None:
    text = (
        "---\nid: sec\nname: Security Specialist\ndescription: audits\nprovider: anthropic\n"
        "model: claude-3-5-sonnet-20241022\ntemperature: 0.1\nmax_tokens: 4096\n---\n"
    )
    profile = load_profile_file(write(tmp_path / "sec.md", text))
    assert profile.id == "sec" and profile.name == "Security Specialist"
    assert (profile.temperature, profile.max_tokens) == (0.1, 4096)
    assert profile.instructions is None  # empty body


BAD_CASES = [
    ("---\nname: [unclosed\n---\n", r"front matter is not YAML at front-matter line"),
    ("---\nname: a\nprovider: zai\n  model: x\n---\n", r"front matter is not YAML"),
    ("---\n- a\n- b\n---\n", r"front matter must be 'field: value' lines \(got a YAML list\)"),
    ("---\nname: a\nprovidr: zai\n---\n", r"unknown field 'providr' \(did you mean 'provider'\?"),
    ("---\nname: a\ncolour_scheme: red\n---\n", r"unknown field 'colour_scheme'"),
    ("---\nname: a\ntemperature: hot\n---\n", r"temperature: Input should be a valid number"),
    ("---\nname: a\ntemperature: 2.5\n---\n", r"temperature: .*less than or equal to 2"),
    ("---\nname: a\ntemperature: -0.1\n---\n", r"temperature: .*greater than or equal to 0"),
    ("---\nname: a\ntemperature: yes\n---\n", r"temperature: must be a number, not true/false"),
    ("---\nname: a\nmax_tokens: many\n---\n", r"max_tokens: "),
    ("---\nname: a\nmodel: 4.6\n---\n", r"model: Input should be a valid string"),
    ("---\nname: a\nprovider: Z.AI\n---\n", r"provider: not a provider name"),
    ("---\nname: a\nprovider: [zai]\n---\n", r"provider: Input should be a valid string"),
    ("---\nname: bad name!\n---\n", r"id: invalid agent id 'bad name!'"),
    ("---\ndescription: nameless\n---\n", r"name: required"),
    ("# Coder\n\nNo front matter here.\n", r"no front matter: start the file with a '---' line"),
    ("---\nname: a\nno closing line\n", r"front matter is not closed"),
    (
        "---\nname: a\n---\n<!-- PROVIDER_PARAMETERS provider: Zai! -->\n",
        r"provider: not a provider name: .*\(got 'Zai!'\)",
    ),
    (
        "---\nname: a\n---\n<!-- PROVIDER_PARAMETERS provider: zai temp: 1 -->\n",
        r"PROVIDER_PARAMETERS: unknown field 'temp'",
    ),
    ("---\nname: a\n---\n<!-- PROVIDER_PARAMETERS zai -->\n", r"PROVIDER_PARAMETERS: cannot read"),
    (
        "---\nname: a\n---\n<!-- PROVIDER_PARAMETERS provider: zai -->\n"
        "<!-- PROVIDER_PARAMETERS provider: kimi -->\n",
        r"PROVIDER_PARAMETERS appears 2 times",
    ),
]


@pytest.mark.parametrize(("text", "match"), BAD_CASES)
def test_bad_markdown_profile_names_file_and_field(tmp_path: Path, text: str, match: str) -> None:
    path = write(tmp_path / "team" / "broken.md", text)
    with pytest.raises(ProfileError, match=match) as info:
        load_profile_file(path)
    assert str(info.value).startswith(f"agent profile {path}: ")


@pytest.mark.parametrize(("text", "match"), BAD_CASES)
def test_bad_profile_stops_loading_from_either_folder(
    project: Path, tmp_path: Path, text: str, match: str
) -> None:
    folder = ".cfn/agents" if "no front matter" not in match else ".cfn/agents/sub"
    write(project / folder / "broken.md", text)
    with pytest.raises(ProfileError, match=match):
        load_profiles(settings(tmp_path))


def test_bad_profile_under_claude_agents_is_an_error_too(project: Path, tmp_path: Path) -> None:
    write(project / ".claude/agents/coder.md", "---\nname: coder\ntemperature: 9\n---\n")
    with pytest.raises(ProfileError, match=r"claude/agents/coder\.md: temperature"):
        load_profiles(settings(tmp_path))


def test_same_id_twice_in_one_folder(project: Path, tmp_path: Path) -> None:
    write(project / ".cfn/agents/a.md", "---\nname: dup\n---\n")
    write(project / ".cfn/agents/b.json", json.dumps({"id": "dup", "name": "Dup"}))
    with pytest.raises(ProfileError, match="'dup' is defined twice"):
        load_profiles(settings(tmp_path))


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.md"
    path.write_bytes(b"---\nname: caf\xe9\n---\n")
    with pytest.raises(ProfileError, match="not UTF-8"):
        load_profile_file(path)


class RecordingService:
    """Stands in for the LLM service: records each request, answers with a final line."""

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest, **_: Any) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse('done\n{"confidence": 0.9}', "test", "m", Usage(), 0.0)


async def test_runtime_appends_profile_instructions(tmp_path: Path) -> None:
    profile = load_profile_file(write(tmp_path / "coder.md", CODER_MD))
    config = settings(tmp_path, cfn_agents_dir=tmp_path)
    (tmp_path / "ws").mkdir()
    context = generate_cli_context(
        "T1",
        "coder-3-1",
        settings=config,
        redis_host="127.0.0.1",
        redis_port=1,
        workspace=tmp_path / "ws",
        role="implementer",
    )
    service = RecordingService()
    runtime = AgentRuntime(context, config, None, service, profile)  # type: ignore[arg-type]
    result = await runtime.converse()
    assert result.result == "success"
    system = service.requests[0].messages[0]
    assert system.role == "system"
    assert system.content.startswith("You are coder, an implementer")
    assert system.content.endswith("# Coder Agent\n\nWrite clean, tested code.")


REVIEWER_SUBAGENT = """---
name: code-reviewer
description: Expert code review specialist. Use after writing code.
tools: Read, Grep, Glob, Bash(pytest:*)
model: sonnet
---
You are a senior code reviewer. Check for clarity and tests.
"""


def test_a_claude_code_subagent_file_drives_a_claude_code_agent(tmp_path: Path) -> None:
    """A `.claude/agents/*.md` subagent, unchanged: its tools are the CLI's allow-list, its
    body the appended instructions; the token goes to the environment, never to argv."""
    from cfn.agents.claude_code import claude_argv, claude_env

    profile = load_profile_file(write(tmp_path / "code-reviewer.md", REVIEWER_SUBAGENT))
    assert profile.id == "code-reviewer" and profile.tools == ("Read", "Grep", "Glob",
                                                                 "Bash(pytest:*)")  # fmt: skip
    config = settings(
        tmp_path,
        cfn_agents_dir=tmp_path,
        mcp_gateway_url="http://127.0.0.1:8080/mcp",
        cfn_mcp_token="mcp-token-xyz",
    )
    (tmp_path / "ws").mkdir()
    context = generate_cli_context(
        "T1",
        "val-1-1",
        settings=config,
        redis_host="127.0.0.1",
        redis_port=1,
        workspace=tmp_path / "ws",
        role="validator",
        model="glm-4.6",
        backend="claude-code",
    )
    runtime = AgentRuntime(
        context, config, None, RecordingService(), profile,  # type: ignore[arg-type]
        gateway=("http://127.0.0.1:3010", "llm-token-abc"),
    )  # fmt: skip
    run = runtime._claude_run()
    assert run.allowed_tools == ("Read", "Grep", "Glob", "Bash(pytest:*)", "mcp__cfn")
    assert run.model == "glm-4.6" and run.workspace == (tmp_path / "ws").resolve()
    assert run.system_prompt_append.startswith("You are code-reviewer, a validator")
    assert run.system_prompt_append.endswith("Check for clarity and tests.")
    assert "Task T1" in run.prompt and '"feedback"' in run.prompt
    server = (run.mcp_config or {})["mcpServers"]["cfn"]
    assert server["url"] == "http://127.0.0.1:8080/mcp"
    assert server["headers"]["Authorization"] == "Bearer mcp-token-xyz"
    argv = claude_argv(run)
    assert "llm-token-abc" not in " ".join(argv) and "mcp-token-xyz" not in " ".join(argv)
    env = claude_env(run)
    assert env["ANTHROPIC_API_KEY"] == "llm-token-abc"
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:3010"
