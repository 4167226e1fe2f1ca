"""Agent profiles (seed: ``.claude/agents/cfn-dev-team/system-architect.json``).

A profile gives an agent a name and, optionally, a provider hint, model
settings and instructions. Two forms:

* the seed's JSON (``id``, ``name``, ``provider``, ``model``, ``temperature``,
  ``max_tokens``, ...);
* Markdown with YAML front matter, the form existing CFN projects use
  (``---\nname: coder\ndescription: ...\nmodel: ...\n---\n<instructions>``).
  The body becomes the profile's ``instructions``. A
  ``<!-- PROVIDER_PARAMETERS provider: zai model: glm-4.6 -->`` comment anywhere
  in the file supplies ``provider``/``model`` where the front matter does not.

Built-in profiles come first. Then, without CFN_AGENTS_DIR, every profile under
``<project>/.claude/agents/**`` (existing CFN projects) and then
``<project>/.cfn/agents/**`` (cfn's own; it wins on the same id); with
CFN_AGENTS_DIR, that folder alone. A bad field is one ``ProfileError`` naming
the file and every problem in it, so a typo such as ``providr`` is caught
instead of silently ignored.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, overload

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cfn.errors import InvalidIdError, ProfileError
from cfn.keys import validate_id
from cfn.settings import Settings

log = logging.getLogger(__name__)

#: Loop agent ids carry loop and iteration (``impl-2-1``); profiles are per role.
_LOOP_SUFFIX = re.compile(r"(?:-\d+)+$")
_PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
#: A Claude Code tool rule: a name, optionally with a pattern in parentheses.
_TOOL = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}(\([^()\n]{1,512}\))?")


class AgentProfile(BaseModel):
    """One agent's profile; field names are the seed's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str = Field(min_length=1, max_length=200)
    provider: str | None = None
    model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0, le=1_000_000)
    description: str | None = Field(default=None, max_length=10_000)
    system_prompt: str | None = Field(default=None, max_length=200_000)
    #: What the agent is told to be and do (a Markdown profile's body); the
    #: runtime appends it to the role's instructions.
    instructions: str | None = Field(default=None, max_length=200_000)
    #: Which agent runs it: builtin (cfn's tool loop), claude-code or command.
    backend: Literal["builtin", "claude-code", "command"] | None = None
    #: Claude Code's tool allow-list (front matter ``tools: Read, Write, Bash``).
    tools: tuple[str, ...] | None = None
    #: The executable of a ``command`` agent (split like a shell line).
    command: str | None = Field(default=None, min_length=1, max_length=4096)

    @field_validator("tools", mode="before")
    @classmethod
    def _split_tools(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("tools")
    @classmethod
    def _valid_tools(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for tool in value or ():
            if _TOOL.fullmatch(tool) is None:
                raise ValueError(
                    f"not a tool name: {tool!r} (e.g. Read, Write, Bash, Bash(pytest:*), "
                    "mcp__server__tool)"
                )
        return value

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        try:
            return validate_id(value, "agent id")
        except InvalidIdError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("provider")
    @classmethod
    def _valid_provider(cls, value: str | None) -> str | None:
        if value is not None and _PROVIDER_NAME.fullmatch(value) is None:
            raise ValueError(
                "not a provider name: use 1 to 40 lowercase letters, digits, _ or -, "
                "starting with a letter or digit (e.g. zai, kimi, anthropic)"
            )
        return value

    @field_validator("temperature", mode="before")
    @classmethod
    def _no_bool_temperature(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be a number, not true/false")
        return value


BUILTIN_PROFILES: tuple[AgentProfile, ...] = (
    AgentProfile(
        id="system-architect",
        name="System Architect",
        provider="anthropic",
        model="claude-3-5-sonnet-20241022",
        temperature=0.3,
        max_tokens=8192,
    ),
    AgentProfile(id="coder", name="Coder", temperature=0.2, max_tokens=8192),
    AgentProfile(id="tester", name="Tester", temperature=0.2, max_tokens=4096),
    AgentProfile(id="reviewer", name="Reviewer", temperature=0.1, max_tokens=4096),
    AgentProfile(
        id="security-specialist", name="Security Specialist", temperature=0.1, max_tokens=4096
    ),
    AgentProfile(id="product-owner", name="Product Owner", temperature=0.0, max_tokens=2048),
)


def parse_profile(data: object, source: str) -> AgentProfile:
    """Validate one profile; all its problems in one ``ProfileError``."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"agent profile {source}: expected a JSON object")
    try:
        return AgentProfile.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ProfileError(f"agent profile {source}: {problems}") from None


def _describe(err: Mapping[str, Any]) -> str:
    field = ".".join(str(p) for p in err["loc"]) or "profile"
    if err["type"] == "extra_forbidden":
        known = ", ".join(AgentProfile.model_fields)
        close = difflib.get_close_matches(field, AgentProfile.model_fields, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown field {field!r} ({hint}known fields: {known})"
    if err["type"] == "missing":
        return f"{field}: required"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{field}: {message} (got {err.get('input')!r})"


class ProfileSet:
    """Profiles by id, with the loop's ``role-loop-iteration`` ids mapped to the role."""

    def __init__(
        self,
        profiles: Mapping[str, AgentProfile],
        sources: Mapping[str, str],
        skipped: tuple[str, ...] = (),
    ) -> None:
        self._profiles = dict(profiles)
        self._sources = dict(sources)
        #: Markdown files under ``.claude/agents`` without front matter (documentation).
        self.skipped = skipped

    def get(self, agent_id: str) -> AgentProfile | None:
        found = self._profiles.get(agent_id)
        if found is None:
            base = _LOOP_SUFFIX.sub("", agent_id)
            found = self._profiles.get(base) if base != agent_id else None
        return found

    def source(self, profile_id: str) -> str:
        return self._sources.get(profile_id, "built-in")

    def __iter__(self) -> Iterator[AgentProfile]:
        return iter(sorted(self._profiles.values(), key=lambda p: p.id))

    def __len__(self) -> int:
        return len(self._profiles)


def builtin_profiles() -> ProfileSet:
    return ProfileSet({p.id: p for p in BUILTIN_PROFILES}, {})


def profile_dirs(settings: Settings, project_root: Path | None = None) -> list[Path]:
    """Where profiles come from, lowest precedence first.

    CFN_AGENTS_DIR replaces both project folders; otherwise ``.claude/agents``
    (existing CFN projects), then ``.cfn/agents`` (cfn's own, wins on an id).
    """
    if settings.cfn_agents_dir is not None:
        return [settings.cfn_agents_dir]
    root = project_root or settings.project_root
    return [root / ".claude" / "agents", root / ".cfn" / "agents"]


def load_profiles(settings: Settings, project_root: Path | None = None) -> ProfileSet:
    """Built-ins, then every ``*.json`` and ``*.md`` profile of :func:`profile_dirs`.

    Files are read in sorted order, so the result is stable. Within one folder
    an id defined twice is an error; a later folder replaces an earlier one's
    profile. Under ``.claude/agents`` a Markdown file without front matter is
    documentation (README.md, CLAUDE.md, shared protocols) and is skipped;
    everywhere else it is an error.
    """
    profiles = {p.id: p for p in BUILTIN_PROFILES}
    sources: dict[str, str] = {}
    skipped: list[str] = []
    explicit = settings.cfn_agents_dir
    if explicit is not None and not explicit.is_dir():
        raise ProfileError(f"CFN_AGENTS_DIR {explicit} is not a directory")
    for folder in profile_dirs(settings, project_root):
        if not folder.is_dir():
            continue
        lenient = explicit is None and folder.parent.name == ".claude"
        here: dict[str, str] = {}
        files = sorted(p for p in folder.rglob("*") if p.suffix in {".json", ".md"} and p.is_file())
        for path in files:
            profile = load_profile_file(path, allow_plain_markdown=lenient)
            if profile is None:
                skipped.append(str(path))
                log.debug("skipped %s: Markdown without front matter (documentation)", path)
                continue
            if profile.id in here:
                raise ProfileError(
                    f"agent profile id {profile.id!r} is defined twice: {here[profile.id]} "
                    f"and {path}"
                )
            here[profile.id] = str(path)
            profiles[profile.id] = profile
            sources[profile.id] = str(path)
    return ProfileSet(profiles, sources, tuple(skipped))


@overload
def load_profile_file(path: Path) -> AgentProfile: ...
@overload
def load_profile_file(path: Path, *, allow_plain_markdown: bool) -> AgentProfile | None: ...
def load_profile_file(path: Path, *, allow_plain_markdown: bool = False) -> AgentProfile | None:
    """One profile file, JSON or Markdown by its suffix.

    ``allow_plain_markdown``: a Markdown file without front matter returns None
    (documentation beside profiles) instead of raising.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ProfileError(f"agent profile {path}: not UTF-8 text") from None
    except OSError as exc:
        raise ProfileError(f"agent profile {path}: cannot read ({exc.strerror})") from None
    if path.suffix == ".md":
        return parse_markdown_profile(text, str(path), allow_plain=allow_plain_markdown)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"agent profile {path}: not JSON ({exc})") from None
    return parse_profile(data, str(path))


# --- Markdown profiles ----------------------------------------------------------------------

#: ``---`` on the first line, the YAML, then ``---`` (or ``...``) on a line of its own.
_FRONT_MATTER = re.compile(
    r"\A\ufeff?---[ \t]*\r?\n(?P<yaml>.*?)(?:\r?\n)?^(?:---|\.\.\.)[ \t]*$\r?\n?",
    re.DOTALL | re.MULTILINE,
)
_PROVIDER_PARAMETERS = re.compile(r"<!--\s*PROVIDER_PARAMETERS\b(?P<body>.*?)-->", re.DOTALL)
_PARAMETER = re.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_-]*)\s*[:=]\s*(?P<value>[^\s,;]+)")
#: What a PROVIDER_PARAMETERS comment may set.
COMMENT_FIELDS = ("provider", "model")
#: Claude Code's model tiers: they name no model of any provider we route to.
MODEL_TIERS = frozenset({"inherit", "haiku", "sonnet", "opus"})
#: Front-matter keys of Claude Code and existing CFN profiles that cfn reads
#: past without using (tool lists, colours, hooks, ACLs); anything else that is
#: not a profile field is an error, so a misspelt field never goes unnoticed.
TOLERATED_FIELDS = frozenset(
    {
        "disallowedTools",
        "color",
        "colour",
        "type",
        "keywords",
        "capabilities",
        "validation_hooks",
        "lifecycle",
        "hooks",
        "acl_level",
        "priority",
        "tags",
        "version",
        "author",
        "category",
        "metadata",
        "permissionMode",
        "skills",
    }
)


def parse_markdown_profile(
    text: str, source: str, *, allow_plain: bool = False
) -> AgentProfile | None:
    """A Markdown profile: YAML front matter, PROVIDER_PARAMETERS, body as instructions.

    The front matter's ``name`` is the profile id (as in Claude Code) unless an
    ``id`` is given. Front-matter ``provider``/``model`` win over the comment,
    except a Claude Code tier (``model: sonnet``) when the comment names a model:
    a tier is no model of the comment's provider.
    """
    match = _FRONT_MATTER.match(text)
    if match is None:
        if allow_plain and not text.lstrip("\ufeff").startswith("---"):
            return None
        if text.lstrip("\ufeff").startswith("---"):
            raise ProfileError(
                f"agent profile {source}: front matter is not closed: end it with a line "
                "'---' before the instructions"
            )
        raise ProfileError(
            f"agent profile {source}: no front matter: start the file with a '---' line, "
            "then 'name: ...' (and description, provider, model, ...), then '---'"
        )
    try:
        data = yaml.safe_load(match.group("yaml"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at front-matter line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(
            f"agent profile {source}: front matter is not YAML{at} ({problem})"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(
            f"agent profile {source}: front matter must be 'field: value' lines "
            f"(got a YAML {type(data).__name__})"
        )
    fields: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ProfileError(f"agent profile {source}: field name {key!r} is not text")
        if key not in TOLERATED_FIELDS:
            fields[key] = value
    body = text[match.end() :]
    comment = _provider_parameters(text, source)
    body = _PROVIDER_PARAMETERS.sub("", body).strip()

    if "name" in fields and "id" not in fields:
        fields["id"] = fields["name"]
    if "id" not in fields:
        raise ProfileError(f"agent profile {source}: name: required (the agent's id, e.g. coder)")
    if "provider" not in fields and "provider" in comment:
        fields["provider"] = comment["provider"]
    if "model" in comment:
        current = fields.get("model")
        if current is None or (isinstance(current, str) and current in MODEL_TIERS):
            fields["model"] = comment["model"]
    if fields.get("model") == "inherit":
        fields.pop("model")
    if body and "instructions" not in fields:
        fields["instructions"] = body
    return parse_profile(fields, source)


def _provider_parameters(text: str, source: str) -> dict[str, str]:
    found = list(_PROVIDER_PARAMETERS.finditer(text))
    if not found:
        return {}
    if len(found) > 1:
        raise ProfileError(
            f"agent profile {source}: PROVIDER_PARAMETERS appears {len(found)} times; keep one"
        )
    body = found[0].group("body")
    params: dict[str, str] = {}
    for item in _PARAMETER.finditer(body):
        key = item.group("key")
        if key not in COMMENT_FIELDS:
            raise ProfileError(
                f"agent profile {source}: PROVIDER_PARAMETERS: unknown field {key!r} "
                f"(it may set {', '.join(COMMENT_FIELDS)})"
            )
        params[key] = item.group("value")
    leftover = _PARAMETER.sub("", body).strip(" \t\r\n,;")
    if leftover or not params:
        raise ProfileError(
            f"agent profile {source}: PROVIDER_PARAMETERS: cannot read {body.strip()!r}: "
            "write '<!-- PROVIDER_PARAMETERS provider: zai model: glm-4.6 -->'"
        )
    return params
