"""``cfn db`` and ``cfn skills``: the persistent layer's commands (issue 3).

Thin: parse, call :mod:`cfn.store`, print. Every input is checked before the
database is opened, so a rejected command writes nothing (not even a new
database file).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from cfn.cli.common import out, print_json, print_plain, settings, with_redis

if TYPE_CHECKING:
    from cfn.store.repository import Store

db_app = typer.Typer(
    help="The SQL database: migrations (the seed's rollback).", no_args_is_help=True
)
skills_app = typer.Typer(help="The skills registry and approval history.", no_args_is_help=True)


def _open(*, auto_migrate: bool | None = None) -> Store:
    from cfn.store.repository import Store

    return Store.open(settings(), auto_migrate=auto_migrate)


def _invalidate(tags: list[str]) -> None:
    """Tell a running query cache that rows changed (no Redis running: nothing to do)."""
    from cfn.store.cache import QueryCache, cache_reachable

    cfg = settings()
    if cache_reachable(cfg):
        with_redis(lambda m: QueryCache.from_settings(m, cfg).invalidate(tags))


def _when(value: object) -> str:
    return "-" if value is None else str(value)[:19]


# --- db ---------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from cfn.store import migrate

    with _open(auto_migrate=False) as store:
        before, after = migrate.upgrade(store.engine, revision)
        out.print(f"{store.label}: {before or 'empty'} → {after or 'empty'}", markup=False)


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[
        str, typer.Argument(help="Target revision; '-1' undoes the newest, 'base' all.")
    ] = "-1",
) -> None:
    """Roll migrations back to REVISION (the seed's rollback), data of dropped tables included."""
    from cfn.store import migrate

    with _open(auto_migrate=False) as store:
        before, after = migrate.downgrade(store.engine, revision)
        out.print(f"{store.label}: {before or 'empty'} → {after or 'empty'}", markup=False)


@db_app.command("current")
def db_current() -> None:
    """Print the database's revision (exit 1 when it is behind this cfn's newest)."""
    from cfn.store import migrate

    with _open(auto_migrate=False) as store:
        now = migrate.current(store.engine)
        label = store.label
    print_plain(
        f"{now or 'empty'} ({'head' if now == migrate.HEAD else 'head is ' + migrate.HEAD})"
    )
    out.print(Text(f"database: {label}", style="dim"))
    if now != migrate.HEAD:
        raise typer.Exit(1)


@db_app.command("cache-stats")
def db_cache_stats() -> None:
    """The query cache's hit ratio across every process sharing this Redis."""
    from cfn.store.cache import QueryCache

    stats = with_redis(lambda m: QueryCache(m).stats())
    ratio = "-" if stats.hit_ratio is None else f"{stats.hit_ratio:.3f}"
    print_plain(f"lookups {stats.lookups}  hits {stats.hits}  misses {stats.misses}  ratio {ratio}")


# --- skills ---------------------------------------------------------------------------


@skills_app.command("add")
def skills_add(
    path: Annotated[
        str, typer.Argument(help="A skill dir (with SKILL.md) or file in the project.")
    ],
    name: Annotated[str | None, typer.Option("--name", help="Default: from the path.")] = None,
) -> None:
    """Register a skill, or refresh its hash when its content changed."""
    from cfn.store.cache import skill_write_tags
    from cfn.store.records import SkillChange
    from cfn.store.skills import read_skill_source

    root = settings().project_root
    source = read_skill_source(path, root, name)
    with _open() as store:
        record, change = store.upsert_skill(source.name, source.content_hash, source.content_path)
    if change is not SkillChange.UNCHANGED:
        _invalidate(skill_write_tags(record.name))
    out.print(
        Text(f"{change.value}: {record.name} sha256:{record.content_hash} {record.content_path}")
    )


@skills_app.command("list")
def skills_list() -> None:
    """All skills, as a table."""
    with _open() as store:
        records = store.list_skills()
    table = Table(title=f"{len(records)} skill(s)")
    for col in ("name", "sha256", "path", "updated (UTC)"):
        table.add_column(col)
    for r in records:
        table.add_row(
            Text(r.name),
            (r.content_hash or "-")[:12],
            Text(r.content_path or "-"),
            _when(r.updated_at),
        )
    out.print(table)


@skills_app.command("show")
def skills_show(name: Annotated[str, typer.Argument(help="Skill name.")]) -> None:
    """One skill, whether its file still matches, and its latest decision."""
    from cfn.store.skills import verify_skill

    with _open() as store:
        record = store.get_skill(name)
        history = store.history(name)
    matches = verify_skill(record, settings().project_root)
    table = Table(show_header=False, title=Text(record.name))
    table.add_row("id", str(record.id))
    table.add_row("sha256", record.content_hash or "-")
    table.add_row("path", Text(record.content_path or "-"))
    table.add_row(
        "file",
        {True: "matches", False: "[red]changed since added[/]", None: "[red]missing[/]"}[matches],
    )
    table.add_row("created (UTC)", _when(record.created_at))
    table.add_row("updated (UTC)", _when(record.updated_at))
    table.add_row("approvals", str(len(history)))
    if history:
        last = history[-1]
        table.add_row("latest", Text(f"{last.decision} by {last.agent_id} ({last.confidence})"))
    out.print(table)


@skills_app.command("approve")
def skills_approve(
    name: Annotated[str, typer.Argument(help="Skill name.")],
    agent_id: Annotated[str, typer.Option("--agent-id", help="Who decides.")],
    decision: Annotated[str, typer.Option("--decision", help="APPROVE, REJECT or DEFER.")],
    confidence: Annotated[str, typer.Option("--confidence", help="A number in [0, 1].")],
    metadata: Annotated[str | None, typer.Option("--metadata", help="JSON.")] = None,
) -> None:
    """Record a decision on a skill in approval_history."""
    from cfn.store import validation as check
    from cfn.store.cache import approval_write_tags

    # All of it checked before the database is even opened.
    check.skill_name(name)
    check.approver_id(agent_id)
    clean_decision = check.decision(decision)
    clean_confidence = check.confidence(confidence)
    check.metadata_json(metadata)
    with _open() as store:
        record = store.add_approval(name, agent_id, clean_decision, clean_confidence, metadata)
    _invalidate(approval_write_tags(record.skill_name))
    out.print(
        Text(
            f"#{record.id} {record.decision} {record.skill_name} by {record.agent_id} "
            f"({record.confidence})"
        )
    )


@skills_app.command("history")
def skills_history(
    name: Annotated[str, typer.Argument(help="Skill name.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """A skill's approval history, oldest first."""
    with _open() as store:
        records = store.history(name)
    if as_json:
        print_json([json.loads(r.model_dump_json()) for r in records])
        return
    table = Table(title=Text(f"approval history of {name}"))
    for col in ("#", "when (UTC)", "agent", "decision", "confidence", "metadata"):
        table.add_column(col)
    for r in records:
        table.add_row(
            str(r.id),
            _when(r.created_at),
            Text(r.agent_id or "-"),
            r.decision or "-",
            "-" if r.confidence is None else f"{r.confidence:.3f}",
            Text(r.metadata or ""),
        )
    out.print(table)
