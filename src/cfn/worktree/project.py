"""Names that follow from a branch: the Compose project, its networks and volumes.

The seed names a worktree's Compose project ``cfn-${BRANCH//[^a-zA-Z0-9]/-}``.
We do the same and lower-case the result, because Compose refuses project
names with upper-case letters (they must match ``^[a-z0-9][a-z0-9_-]*$``), so
``Feature/Auth`` becomes ``cfn-feature-auth``. The replacement works per
character: a non-ASCII letter becomes one ``-`` (bash in a UTF-8 locale does
the same; in the C locale it replaces each byte).

Compose prefixes every network and volume with the project name, which is what
keeps two worktrees' stacks apart: ``{project}_cfn-network``,
``{project}_redis-data``, ``{project}_postgres-data``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cfn.errors import InvalidInputError
from cfn.settings import Settings

#: The main checkout's project (the seed's troubleshooting inspects ``cfn_cfn-network``).
MAIN_PROJECT = "cfn"
CFN_NETWORK = "cfn-network"
MCP_NETWORK = "mcp-network"
EGRESS_NETWORK = "mcp-egress"
REDIS_VOLUME = "redis-data"
POSTGRES_VOLUME = "postgres-data"

#: What Compose accepts as a project name.
PROJECT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_NON_ALNUM = re.compile(r"[^a-zA-Z0-9]")
# cfn's branch names: git's rules, and a character set that needs no quoting in an env
# file, a path or a shell (git itself would also take '#', '$', quotes and non-ASCII).
_BRANCH_CHARS = re.compile(r"^[A-Za-z0-9._/-]+$")
_BAD_BRANCH = re.compile(r"(^[-/.])|(\.\.)|(//)|(/\.)|([/.]$)|(\.lock$)|(\.lock/)")
MAX_BRANCH = 200


def branch_slug(branch: str) -> str:
    """The seed's ``${BRANCH//[^a-zA-Z0-9]/-}``, lower-cased."""
    return _NON_ALNUM.sub("-", branch).lower()


def project_name_for(branch: str) -> str:
    """``cfn-`` + the branch slug: the worktree's COMPOSE_PROJECT_NAME."""
    return f"cfn-{branch_slug(branch)}"


def check_branch(branch: str) -> str:
    """A branch name git would accept (and short enough to become a path and a project)."""
    if (
        not branch
        or len(branch) > MAX_BRANCH
        or not _BRANCH_CHARS.match(branch)
        or _BAD_BRANCH.search(branch)
    ):
        raise InvalidInputError(
            f"{branch!r} is not a usable branch name: use ASCII letters, digits, '-', '_', '/' "
            "and '.' (no '..', '//', leading '-', '/' or '.', trailing '/', '.' or '.lock'), "
            f"at most {MAX_BRANCH} characters"
        )
    return branch


def check_project_name(name: str) -> str:
    if not PROJECT_NAME_RE.match(name):
        raise InvalidInputError(
            f"COMPOSE_PROJECT_NAME {name!r} is not a Compose project name: lower-case letters, "
            "digits, '-' and '_' only, starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class ProjectNames:
    """A Compose project and the network and volume names Compose derives from it."""

    project: str

    @property
    def cfn_network(self) -> str:
        return f"{self.project}_{CFN_NETWORK}"

    @property
    def mcp_network(self) -> str:
        return f"{self.project}_{MCP_NETWORK}"

    @property
    def redis_volume(self) -> str:
        return f"{self.project}_{REDIS_VOLUME}"

    @property
    def postgres_volume(self) -> str:
        return f"{self.project}_{POSTGRES_VOLUME}"


def compose_project(settings: Settings) -> str:
    """COMPOSE_PROJECT_NAME if set, else the worktree's name, else the main checkout's ``cfn``."""
    if settings.compose_project_name:
        return settings.compose_project_name
    if settings.worktree_branch:
        return project_name_for(settings.worktree_branch)
    return MAIN_PROJECT


def project_names(settings: Settings) -> ProjectNames:
    return ProjectNames(compose_project(settings))
