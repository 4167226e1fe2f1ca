"""Commands mirroring the seed's redis-coordination scripts."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from cfn.cli.common import out, print_json, print_plain, settings, with_redis
from cfn.coordination import completion, context, inspect, locks, signals
from cfn.errors import CfnError, WaitTimeoutError

TaskId = Annotated[str, typer.Option("--task-id", help="Task id (1-128 of A-Z a-z 0-9 . _ -).")]

context_app = typer.Typer(help="Task context (store-context.sh).", no_args_is_help=True)
signal_app = typer.Typer(help="Signals between agents (signal.sh).", no_args_is_help=True)
lock_app = typer.Typer(help="Locks with fencing numbers.", no_args_is_help=True)


# --- context -------------------------------------------------------------------


@context_app.command("store")
def context_store(
    task_id: TaskId,
    key: Annotated[str, typer.Option("--key", help="Context key, e.g. deliverables.")],
    value: Annotated[str, typer.Option("--value", help="A JSON value.")],
    ttl: Annotated[int, typer.Option("--ttl", help="Seconds to keep it.")] = 3600,
) -> None:
    """Store a JSON value at context:{task}:{key}."""
    limit = settings().cfn_context_max_bytes
    with_redis(lambda r: context.store_context(r, task_id, key, value, ttl, max_bytes=limit))


@context_app.command("get")
def context_get(
    task_id: TaskId,
    key: Annotated[str, typer.Option("--key")],
) -> None:
    """Print the JSON value at context:{task}:{key} (exit 1 when absent)."""
    raw = with_redis(lambda r: context.get_context_raw(r, task_id, key))
    if raw is None:
        raise CfnError(f"no context {key!r} for task {task_id!r} (never stored, or expired)")
    print_plain(raw)


@context_app.command("delete")
def context_delete(task_id: TaskId, key: Annotated[str, typer.Option("--key")]) -> None:
    """Delete context:{task}:{key}."""
    if not with_redis(lambda r: context.delete_context(r, task_id, key)):
        raise CfnError(f"no context {key!r} for task {task_id!r}")


# --- signals -------------------------------------------------------------------


@signal_app.command("send")
def signal_send(
    task_id: TaskId,
    channel: Annotated[str, typer.Option("--channel", help="e.g. loop2:start, start-loop2.")],
    payload: Annotated[str, typer.Option("--payload", help="A JSON payload.")] = "{}",
) -> None:
    """Send a signal on coord:{task}:{channel}."""
    limit = settings().cfn_context_max_bytes
    with_redis(lambda r: signals.send_signal(r, task_id, channel, payload, max_bytes=limit))


@signal_app.command("wait")
def signal_wait(
    task_id: TaskId,
    channel: Annotated[str, typer.Option("--channel")],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds.")] = 300.0,
) -> None:
    """Wait for a signal on coord:{task}:{channel}; print its payload (exit 1 on timeout)."""
    payload = with_redis(lambda r: signals.wait_signal(r, task_id, channel, timeout))
    print_plain(json.dumps(payload))


@signal_app.command("complete")
def signal_complete(
    task_id: TaskId,
    agent_id: Annotated[str, typer.Option("--agent-id")],
    result: Annotated[str, typer.Option("--result")] = "success",
    payload: Annotated[
        str | None, typer.Option("--payload", help='JSON, e.g. {"confidence": 0.9}.')
    ] = None,
) -> None:
    """Report an agent's completion (the seed's signal_completion)."""
    limit = settings().cfn_context_max_bytes
    with_redis(
        lambda r: completion.signal_completion(
            r, task_id, agent_id, result, payload, max_bytes=limit
        )
    )


def collect_results_cmd(
    task_id: TaskId,
    expected: Annotated[int, typer.Option("--expected", help="How many agents to wait for.")],
    threshold: Annotated[float, typer.Option("--threshold", help="Mean confidence needed.")],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds.")] = 600.0,
    agent: Annotated[
        list[str] | None, typer.Option("--agent", help="Count only these agents (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Wait for agents' results and judge their confidence (exit 0 only when met)."""
    report = with_redis(
        lambda r: completion.collect_results(
            r, task_id, expected, threshold, timeout, agent_ids=agent
        )
    )
    if as_json:
        print_json(report.to_dict())
    else:
        table = Table(title=f"Results for {task_id}")
        table.add_column("agent")
        table.add_column("result")
        table.add_column("confidence", justify="right")
        table.add_column("status")
        for item in report.results:
            conf = "-" if item.confidence is None else f"{item.confidence:.3f}"
            status = "[green]ok[/]" if item.ok else f"[red]failed[/]: {item.reason}"
            table.add_row(item.agent_id, item.result, conf, status)
        out.print(table)
        mean = "-" if report.mean is None else f"{report.mean:.3f}"
        low = "-" if report.min is None else f"{report.min:.3f}"
        verdict = "[green]met[/]" if report.met else "[red]not met[/]"
        out.print(
            f"arrived {report.arrived}/{report.expected}, failed {len(report.failed)}, "
            f"mean {mean}, min {low}, threshold {report.threshold:.2f}: {verdict}"
            + (" (timed out)" if report.timed_out else "")
        )
    if not report.met:
        raise typer.Exit(1)


def wait_completion_cmd(
    task_id: TaskId,
    expected: Annotated[int, typer.Option("--expected")],
    timeout: Annotated[float, typer.Option("--timeout")] = 600.0,
) -> None:
    """Wait until EXPECTED agents completed (the seed's wait_for_loop_completion)."""
    count = with_redis(lambda r: completion.wait_for_loop_completion(r, task_id, expected, timeout))
    print_plain(str(count))


# --- locks -----------------------------------------------------------------------


@lock_app.command("acquire")
def lock_acquire(
    resource: Annotated[str, typer.Option("--resource")],
    ttl: Annotated[float, typer.Option("--ttl", help="Seconds the lock lives.")] = 30.0,
    wait: Annotated[
        float | None, typer.Option("--wait", help="Seconds to wait for a busy lock.")
    ] = None,
) -> None:
    """Acquire a lock; prints {resource, token, fence, ttl_ms} (exit 1 when busy)."""
    handle = with_redis(lambda r: locks.acquire_lock(r, resource, ttl, wait))
    print_plain(json.dumps(handle.to_dict()))


@lock_app.command("release")
def lock_release(
    resource: Annotated[str, typer.Option("--resource")],
    token: Annotated[str, typer.Option("--token")],
) -> None:
    """Release a lock you hold."""
    with_redis(lambda r: locks.release_lock(r, resource, token))


@lock_app.command("extend")
def lock_extend(
    resource: Annotated[str, typer.Option("--resource")],
    token: Annotated[str, typer.Option("--token")],
    ttl: Annotated[float, typer.Option("--ttl")] = 30.0,
) -> None:
    """Reset the TTL of a lock you hold."""
    with_redis(lambda r: locks.extend_lock(r, resource, token, ttl))


def keys_cmd(
    pattern: Annotated[str, typer.Option("--pattern", help="Glob, e.g. 'coord:*'.")] = "*",
    limit: Annotated[int, typer.Option("--limit")] = 1000,
) -> None:
    """List keys matching PATTERN (SCAN, never KEYS)."""
    for key in with_redis(lambda r: inspect.scan_keys(r, pattern, limit)):
        print_plain(key)


__all__ = [
    "WaitTimeoutError",
    "collect_results_cmd",
    "context_app",
    "keys_cmd",
    "lock_app",
    "signal_app",
    "wait_completion_cmd",
]
