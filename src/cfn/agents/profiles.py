"""Agent profiles (seed: ``.claude/agents/cfn-dev-team/system-architect.json``).

A profile gives an agent a name and, optionally, a provider hint and model
settings. Built-in profiles come first; every ``*.json`` under CFN_AGENTS_DIR
(default ``<checkout>/.claude/agents``, searched recursively, as the seed's
``cfn-dev-team/`` subfolder needs) adds or replaces by id. A bad field is one
``ProfileError`` naming the file and every problem in it, so a typo such as
``"providr"`` is caught instead of silently ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cfn.errors import InvalidIdError, ProfileError
from cfn.keys import validate_id
from cfn.settings import Settings

#: Loop agent ids carry loop and iteration (``impl-2-1``); profiles are per role.
_LOOP_SUFFIX = re.compile(r"(?:-\d+)+$")


class AgentProfile(BaseModel):
    """One agent's profile; field names are the seed's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str = Field(min_length=1, max_length=200)
    provider: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0, le=1_000_000)
    description: str | None = Field(default=None, max_length=10_000)
    system_prompt: str | None = Field(default=None, max_length=200_000)

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        try:
            return validate_id(value, "agent id")
        except InvalidIdError as exc:
            raise ValueError(str(exc)) from None

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
        return f"unknown field {field!r} (known fields: {known})"
    if err["type"] == "missing":
        return f"{field}: required"
    return f"{field}: {err['msg']} (got {err.get('input')!r})"


class ProfileSet:
    """Profiles by id, with the loop's ``role-loop-iteration`` ids mapped to the role."""

    def __init__(self, profiles: Mapping[str, AgentProfile], sources: Mapping[str, str]) -> None:
        self._profiles = dict(profiles)
        self._sources = dict(sources)

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


def load_profiles(settings: Settings) -> ProfileSet:
    """Built-ins, then every ``*.json`` under the agents dir (sorted, so stable)."""
    profiles = {p.id: p for p in BUILTIN_PROFILES}
    sources: dict[str, str] = {}
    root = settings.cfn_agents_dir or settings.project_root / ".claude" / "agents"
    if settings.cfn_agents_dir is not None and not root.is_dir():
        raise ProfileError(f"CFN_AGENTS_DIR {root} is not a directory")
    files = sorted(root.rglob("*.json")) if root.is_dir() else []
    for path in files:
        profile = load_profile_file(path)
        if profile.id in sources:
            raise ProfileError(
                f"agent profile id {profile.id!r} is defined twice: {sources[profile.id]} "
                f"and {path}"
            )
        profiles[profile.id] = profile
        sources[profile.id] = str(path)
    return ProfileSet(profiles, sources)


def load_profile_file(path: Path) -> AgentProfile:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ProfileError(f"agent profile {path}: not JSON ({exc})") from None
    except OSError as exc:
        raise ProfileError(f"agent profile {path}: cannot read ({exc.strerror})") from None
    return parse_profile(data, str(path))
