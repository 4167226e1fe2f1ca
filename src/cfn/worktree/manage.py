"""``cfn worktree create | list | remove``: git worktrees with their own cfn state.

A worktree made here gets ``.cfn/worktree.env`` (WORKTREE_BRANCH,
COMPOSE_PROJECT_NAME and the three CFN_*_PORT values), which cfn's settings
read. Everything else a checkout keeps is already under its own ``.cfn/``
(found from the worktree's ``.git`` file): the embedded redis-server, the SQLite
database and the agent workspaces. Two worktrees therefore run loops at the
same time on two Redis servers and two databases.

Ports start at the seed's ``calculate_ports``; a port already promised to the
main checkout (6379 / 5432 / 3000), to another worktree, to the MCP servers, or
taken right now, is skipped, so two branches whose hashes share their first two
hex digits still get different ports. The file holds what was chosen.

Docker refuses two networks with overlapping subnets, so two worktrees' stacks
cannot both use the seed's 172.30.0.0/16 and 172.31.0.0/16 (the main checkout
keeps those). A worktree gets ``10.130.N.0/24`` (cfn-network) and
``10.131.N.0/24`` (mcp-network), N starting at its port offset and skipping the
ones other worktrees hold: CFN_NETWORK_SUBNET and CFN_MCP_SUBNET in its file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from cfn.errors import InvalidInputError, UnknownWorktreeError, WorktreeError
from cfn.settings import WORKTREE_ENV, Settings
from cfn.system.instances import (
    llm_gateway_daemon,
    portal_daemon,
    redis_daemon,
    running_instance,
)
from cfn.worktree.ports import (
    MAIN_ORCHESTRATOR,
    MAIN_POSTGRES,
    MAIN_REDIS,
    SERVICES,
    Ports,
    branch_offset,
    calculate_ports,
    port_is_free,
)
from cfn.worktree.project import MAIN_PROJECT, branch_slug, check_branch, project_name_for

log = logging.getLogger(__name__)

ENV_KEYS = {
    "redis": "CFN_REDIS_PORT",
    "postgres": "CFN_POSTGRES_PORT",
    "orchestrator": "CFN_ORCHESTRATOR_PORT",
}
SUBNET_KEYS = ("CFN_NETWORK_SUBNET", "CFN_MCP_SUBNET")
WORKTREE_SUBNETS = ("10.130.{n}.0/24", "10.131.{n}.0/24")
#: The MCP servers' and gateway's default ports (seed table, 8080 for the gateway).
MCP_PORTS = frozenset(range(8080, 8085))
GIT_TIMEOUT = 60.0
STOP_GRACE = 10.0


@dataclass(frozen=True)
class Worktree:
    """One checkout of the repository, as git lists it, with what cfn knows of it."""

    path: Path
    branch: str | None
    head: str
    is_main: bool
    project: str
    ports: Ports
    env: dict[str, str] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.path / ".cfn"

    @property
    def env_file(self) -> Path:
        return self.path / WORKTREE_ENV

    def settings(self) -> Settings:
        """Settings that point at this worktree's own state (for status and stopping)."""
        return Settings(
            cfn_state_dir=self.state_dir,
            worktree_branch=None if self.is_main else self.branch,
            compose_project_name=self.project,
            cfn_redis_port=self.ports.redis,
            cfn_postgres_port=self.ports.postgres,
            cfn_orchestrator_port=self.ports.orchestrator,
        )


@dataclass(frozen=True)
class Created:
    worktree: Worktree
    new_branch: bool
    moved: dict[str, tuple[int, int]]  # service -> (computed, chosen)


@dataclass(frozen=True)
class Removed:
    worktree: Worktree
    redis_stopped: bool
    portal_stopped: bool


@dataclass(frozen=True)
class Status:
    redis_port: int | None
    redis_up: bool
    portal_url: str | None


# --- git ----------------------------------------------------------------------------------


def _git(args: list[str], cwd: Path, what: str) -> str:
    if shutil.which("git") is None:
        raise WorktreeError("git is not installed; `apt-get install git`")
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
        )
    except subprocess.TimeoutExpired:
        raise WorktreeError(f"{what}: git did not finish within {GIT_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"git exited with {proc.returncode}"
        raise WorktreeError(f"{what}: {detail.removeprefix('fatal: ')}")
    return proc.stdout


def main_checkout(start: Path) -> Path:
    """The repository's main worktree (where ``.git`` is a directory), from any of its worktrees."""
    if not start.exists():
        raise WorktreeError(f"{start} does not exist")
    try:
        common = _git(
            ["rev-parse", "--path-format=absolute", "--git-common-dir"], start, "not a git checkout"
        ).strip()
    except WorktreeError as exc:
        raise WorktreeError(
            f"{exc}; run cfn worktree inside a git repository ({start} is not in one)"
        ) from None
    common_dir = Path(common)
    if common_dir.name != ".git":
        raise WorktreeError(f"{start} belongs to a bare repository; cfn worktree needs a checkout")
    return common_dir.parent


def _branch_exists(root: Path, branch: str) -> bool:
    try:
        _git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], root, "branch lookup")
    except WorktreeError:
        return False
    return True


# --- env file ---------------------------------------------------------------------------


def read_env(path: Path) -> dict[str, str]:
    """A worktree's env file as a dict ({} when there is none)."""
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def env_text(branch: str, project: str, ports: Ports, subnet_index: int) -> str:
    lines = [
        "# Written by `cfn worktree create`. cfn reads it; exported variables win.",
        "# Compose: docker compose --env-file .cfn/worktree.env "
        "-f docker-compose.yml -f docker-compose.worktree.yml up -d",
        f"WORKTREE_BRANCH={branch}",
        f"COMPOSE_PROJECT_NAME={project}",
        *(f"{ENV_KEYS[s]}={ports.get(s)}" for s in SERVICES),
        *(
            f"{key}={pattern.format(n=subnet_index)}"
            for key, pattern in zip(SUBNET_KEYS, WORKTREE_SUBNETS, strict=True)
        ),
    ]
    return "\n".join(lines) + "\n"


def _ports_from_env(env: dict[str, str], fallback: Ports) -> Ports:
    values: dict[str, int] = {}
    for service in SERVICES:
        raw = env.get(ENV_KEYS[service], "")
        values[service] = int(raw) if raw.isdigit() else fallback.get(service)
    return Ports(**values)


# --- listing ----------------------------------------------------------------------------


def _parse_porcelain(text: str) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if current:
                entries.append(current)
            current = {}
            continue
        key, _, value = line.partition(" ")
        current[key] = value
    return entries


def list_worktrees(start: Path) -> list[Worktree]:
    """Every worktree of the repository that contains ``start``, main checkout first."""
    root = main_checkout(start)
    text = _git(["worktree", "list", "--porcelain"], root, "git worktree list")
    result: list[Worktree] = []
    for entry in _parse_porcelain(text):
        if "worktree" not in entry or "bare" in entry:
            continue
        path = Path(entry["worktree"])
        ref = entry.get("branch", "")
        branch = ref.removeprefix("refs/heads/") if ref else None
        is_main = path.resolve() == root.resolve()
        env = read_env(path / WORKTREE_ENV)
        env_branch = env.get("WORKTREE_BRANCH") or None
        if is_main:
            computed = Ports(MAIN_REDIS, MAIN_POSTGRES, MAIN_ORCHESTRATOR)
            project = env.get("COMPOSE_PROJECT_NAME") or MAIN_PROJECT
        else:
            name = env_branch or branch or path.name
            computed = calculate_ports(name)
            project = env.get("COMPOSE_PROJECT_NAME") or project_name_for(name)
        result.append(
            Worktree(
                path=path,
                branch=branch,
                head=entry.get("HEAD", "")[:12],
                is_main=is_main,
                project=project,
                ports=_ports_from_env(env, computed),
                env=env,
            )
        )
    return result


def find(start: Path, branch: str) -> Worktree:
    for tree in list_worktrees(start):
        if tree.branch == branch or tree.env.get("WORKTREE_BRANCH") == branch:
            return tree
    raise UnknownWorktreeError(
        f"no worktree has branch {branch!r}; `cfn worktree list` shows the worktrees"
    )


def status(tree: Worktree) -> Status:
    """Whether the worktree's embedded Redis runs and its portal answers right now.

    Read from the servers' records (``cfn.system.instances``), so this package
    needs neither Redis's client nor the portal's."""
    redis = redis_daemon(tree.state_dir)
    port = redis.read_record().get("port")
    instance = running_instance(tree.settings())
    return Status(
        port if isinstance(port, int) else None,
        isinstance(port, int) and redis.recorded() is not None,
        instance.url if instance is not None else None,
    )


# --- create -------------------------------------------------------------------------------


def _choose_ports(
    computed: Ports, reserved: Iterable[int]
) -> tuple[Ports, dict[str, tuple[int, int]]]:
    taken = set(reserved) | MCP_PORTS
    chosen: dict[str, int] = {}
    moved: dict[str, tuple[int, int]] = {}
    for service in SERVICES:
        port = computed.get(service)
        while port in taken or not port_is_free(port):
            port += 1
            if port > 65535:
                raise WorktreeError(f"no free port above {computed.get(service)} for {service}")
        if port != computed.get(service):
            moved[service] = (computed.get(service), port)
        chosen[service] = port
        taken.add(port)
    return Ports(**chosen), moved


def _subnet_index(branch: str, existing: Iterable[Worktree]) -> int:
    used = set()
    for tree in existing:
        value = tree.env.get(SUBNET_KEYS[0], "")
        parts = value.split(".")
        if len(parts) == 4 and parts[2].isdigit():
            used.add(int(parts[2]))
    start = branch_offset(branch)
    for step in range(256):
        index = (start + step) % 256
        if index not in used:
            return index
    raise WorktreeError("all 256 worktree subnets are taken; remove a worktree first")


def create(start: Path, branch: str, path: Path | None = None) -> Created:
    """``git worktree add`` plus the worktree's env file; all or nothing."""
    check_branch(branch)
    root = main_checkout(start)
    try:
        _git(["check-ref-format", "--branch", branch], root, "branch name")
    except WorktreeError:
        raise InvalidInputError(f"{branch!r} is not a valid git branch name") from None
    target = (path if path is not None else root.parent / f"cfn-{branch_slug(branch)}").absolute()
    if target.exists() or target.is_symlink():
        raise InvalidInputError(f"{target} already exists; choose another path or remove it")
    existing = list_worktrees(root)
    project = project_name_for(branch)
    for tree in existing:
        if tree.branch == branch:
            raise InvalidInputError(f"branch {branch!r} is already checked out at {tree.path}")
        if tree.project == project:
            raise InvalidInputError(
                f"worktree {tree.path} already uses Compose project {project!r} (branch "
                f"{tree.branch!r} has the same name once non-alphanumerics become '-'); "
                "pick a branch name that differs in a letter or digit"
            )
    reserved: set[int] = {MAIN_REDIS, MAIN_POSTGRES, MAIN_ORCHESTRATOR}
    for tree in existing:
        reserved.update(tree.ports.get(s) for s in SERVICES)
    ports, moved = _choose_ports(calculate_ports(branch), reserved)
    subnet_index = _subnet_index(branch, existing)

    new_branch = not _branch_exists(root, branch)
    args = ["worktree", "add"]
    args += ["-b", branch, str(target)] if new_branch else [str(target), branch]
    _git(args, root, "git worktree add")
    try:
        state = target / ".cfn"
        state.mkdir(mode=0o700, exist_ok=True)
        # Keep cfn's state out of the branch's `git status`.
        (state / ".gitignore").write_text("*\n")
        (target / WORKTREE_ENV).write_text(env_text(branch, project, ports, subnet_index))
    except OSError as exc:
        with contextlib.suppress(WorktreeError):
            _git(["worktree", "remove", "--force", str(target)], root, "rollback")
        if new_branch:
            with contextlib.suppress(WorktreeError):
                _git(["branch", "-D", branch], root, "rollback")
        raise WorktreeError(f"could not write {target / WORKTREE_ENV}: {exc}") from None
    for service, (was, now) in moved.items():
        log.info("%s port %d is taken or reserved; %s uses %d", service, was, branch, now)
    tree = Worktree(
        path=target,
        branch=branch,
        head="",
        is_main=False,
        project=project,
        ports=ports,
        env=read_env(target / WORKTREE_ENV),
    )
    return Created(tree, new_branch, moved)


# --- remove -------------------------------------------------------------------------------


def _dirty(tree: Worktree) -> list[str]:
    text = _git(["status", "--porcelain"], tree.path, "git status")
    return [line for line in text.splitlines() if line.strip()]


def remove(start: Path, branch: str, force: bool = False) -> Removed:
    """Stop the worktree's services, delete its state, then ``git worktree remove``.

    The branch itself stays (``git branch -d`` deletes it).
    """
    tree = find(start, branch)
    if tree.is_main:
        raise InvalidInputError(f"{tree.path} is the main checkout; cfn removes worktrees only")
    here = start.resolve()
    if here == tree.path.resolve() or tree.path.resolve() in here.parents:
        raise InvalidInputError(
            f"you are inside {tree.path}; run `cfn worktree remove {branch}` from another checkout"
        )
    if tree.path.exists() and not force:
        dirty = _dirty(tree)
        if dirty:
            raise WorktreeError(
                f"{tree.path} has {len(dirty)} uncommitted change(s) ({dirty[0].strip()}, ...); "
                "commit them, or pass --force to throw them away"
            )
    # From their records: SIGTERM (Redis flushes its AOF on it), SIGKILL after the grace.
    redis_stopped = portal_stopped = False
    if tree.state_dir.exists():
        redis_stopped = redis_daemon(tree.state_dir).stop_recorded(STOP_GRACE)
        portal_stopped = portal_daemon(tree.state_dir).stop_recorded(STOP_GRACE)
        # Its LLM gateway too (started by its loops on first need).
        llm_gateway_daemon(tree.state_dir).stop_recorded(STOP_GRACE)
    if tree.state_dir.exists():
        shutil.rmtree(tree.state_dir)
    root = main_checkout(start)
    args = ["worktree", "remove", *(["--force"] if force else []), str(tree.path)]
    if tree.path.exists():
        _git(args, root, "git worktree remove")
    _git(["worktree", "prune"], root, "git worktree prune")
    return Removed(tree, redis_stopped, portal_stopped)
