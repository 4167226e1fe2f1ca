from __future__ import annotations

import asyncio
import json
import math
import time

import pytest

from cfn import keys
from cfn.coordination import completion, context, locks, signals
from cfn.coordination.connection import RedisManager
from cfn.errors import (
    CorruptRecordError,
    InvalidIdError,
    InvalidInputError,
    LockNotHeldError,
    PayloadTooLargeError,
    WaitTimeoutError,
)
from tests.support.servers import RedisServer


async def all_keys(manager: RedisManager) -> list[str]:
    return sorted([k async for k in manager.client.scan_iter(match="*")])


# --- context ------------------------------------------------------------------


async def test_context_round_trip_with_ttl(manager: RedisManager) -> None:
    value = json.dumps({"files": ["a.py"], "note": "ü"})
    await context.store_context(manager, "T1", "deliverables", value, ttl=120)
    assert await context.get_context(manager, "T1", "deliverables") == {
        "files": ["a.py"],
        "note": "ü",
    }
    ttl = await context.context_ttl(manager, "T1", "deliverables")
    assert ttl is not None and 110 <= ttl <= 120
    assert await context.delete_context(manager, "T1", "deliverables")
    assert await context.get_context(manager, "T1", "deliverables") is None


async def test_context_expires(manager: RedisManager) -> None:
    await context.store_context(manager, "T1", "metadata", "{}", ttl=1)
    await asyncio.sleep(1.2)
    assert await context.get_context(manager, "T1", "metadata") is None


@pytest.mark.parametrize(
    ("task", "key", "value", "ttl", "error"),
    [
        ("T*", "k", "{}", 60, InvalidIdError),
        ("T1", "a:b", "{}", 60, InvalidIdError),
        ("T1", "k", "not json", 60, InvalidInputError),
        ("T1", "k", "{'single': 1}", 60, InvalidInputError),
        ("T1", "k", "NaN", 60, InvalidInputError),
        ("T1", "k", "{}", 0, InvalidInputError),
        ("T1", "k", "{}", -5, InvalidInputError),
        ("T1", "k", "{}", 10**9, InvalidInputError),
    ],
)
async def test_context_bad_input_writes_nothing(
    manager: RedisManager, task: str, key: str, value: str, ttl: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await context.store_context(manager, task, key, value, ttl)
    assert await all_keys(manager) == []


async def test_context_size_limit(manager: RedisManager) -> None:
    big = json.dumps("x" * 2000)
    with pytest.raises(PayloadTooLargeError, match="over the 1000-byte limit"):
        await context.store_context(manager, "T1", "k", big, 60, max_bytes=1000)
    assert await all_keys(manager) == []
    await context.store_context(manager, "T1", "k", big, 60, max_bytes=5000)
    assert await all_keys(manager) == ["context:T1:k"]


# --- signals ------------------------------------------------------------------


async def test_signal_wakes_waiter_without_polling(manager: RedisManager) -> None:
    waiter = asyncio.create_task(signals.wait_signal(manager, "T1", "loop2:start", 5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    start = time.perf_counter()
    await signals.send_signal(manager, "T1", "loop2:start", json.dumps({"go": True}))
    assert await waiter == {"go": True}
    assert time.perf_counter() - start < 0.5


async def test_signals_are_kept_and_delivered_in_order(manager: RedisManager) -> None:
    for n in range(3):
        await signals.send_signal(manager, "T1", "start-loop2", json.dumps({"n": n}))
    got = [await signals.wait_signal(manager, "T1", "start-loop2", 1) for _ in range(3)]
    assert got == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_a_channel_overwritten_by_a_string_starts_again_with_the_next_signal(
    manager: RedisManager, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent may SET a task's channel: the orchestrator's next signal used to crash
    it (WRONGTYPE); now that signal replaces the string, with one warning."""
    await manager.client.set("coord:T1:loop2:start", "not json")
    assert await signals.send_signal(manager, "T1", "loop2:start", '{"iteration": 1}') == 1
    assert await manager.client.lrange("coord:T1:loop2:start", 0, -1) == ['{"iteration": 1}']
    assert "coord:T1:loop2:start was not a list" in caplog.text
    assert await signals.wait_signal(manager, "T1", "loop2:start", 5) == {"iteration": 1}


async def test_signal_wait_times_out_clearly(manager: RedisManager) -> None:
    start = time.monotonic()
    with pytest.raises(WaitTimeoutError, match=r"no signal on coord:T1:decision within 0.3 s"):
        await signals.wait_signal(manager, "T1", "decision", 0.3)
    assert 0.25 < time.monotonic() - start < 2


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf, 10**9])
async def test_signal_absurd_timeouts_refused(manager: RedisManager, timeout: float) -> None:
    with pytest.raises(InvalidInputError, match="timeout must be"):
        await signals.wait_signal(manager, "T1", "decision", timeout)


@pytest.mark.parametrize(
    ("channel", "payload"),
    [("bad channel", "{}"), ("a::b", "{}"), ("loop2:start", "{oops"), ("x" * 65, "{}")],
)
async def test_signal_bad_input_writes_nothing(
    manager: RedisManager, channel: str, payload: str
) -> None:
    with pytest.raises(InvalidInputError):
        await signals.send_signal(manager, "T1", channel, payload)
    assert await all_keys(manager) == []


# --- completions and collection ---------------------------------------------------


async def test_collect_results_reports_confidences(manager: RedisManager) -> None:
    for n, conf in enumerate([0.8, 0.9, 0.7], start=1):
        await completion.signal_completion(
            manager, "T1", f"impl-{n}-1", "success", json.dumps({"confidence": conf})
        )
    report = await completion.collect_results(manager, "T1", 3, 0.75, 5)
    assert report.arrived == 3 and not report.timed_out
    assert [r.agent_id for r in report.results] == ["impl-1-1", "impl-2-1", "impl-3-1"]
    assert report.mean == pytest.approx(0.8)
    assert report.min == pytest.approx(0.7)
    assert report.met
    assert not (await completion.collect_results(manager, "T1", 3, 0.85, 5)).met
    # The durable record is untouched: collectors never consume.
    assert await manager.client.llen("coord:T1:complete") == 3
    assert await manager.client.get("swarm:T1:result:impl-1-1") == json.dumps({"confidence": 0.8})


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "no payload"),
        ("{}", "no confidence"),
        ('{"confidence": "0.9"}', "not a number"),
        ('{"confidence": true}', "not a number"),
        ('{"confidence": 7}', "outside [0, 1]"),
        ('{"confidence": -0.1}', "outside [0, 1]"),
        ('{"confidence": null}', "not a number"),
        ("[0.9]", "not a JSON object"),
    ],
)
async def test_unusable_confidence_is_failure_not_default(
    manager: RedisManager, payload: str | None, reason: str
) -> None:
    await completion.signal_completion(manager, "T1", "impl-1-1", "success", payload)
    report = await completion.collect_results(manager, "T1", 1, 0.0, 5, payload_grace=0.1)
    assert report.arrived == 1
    (item,) = report.results
    assert not item.ok and item.confidence is None
    assert reason in (item.reason or "")
    assert report.mean is None and not report.met


async def test_nan_confidence_written_by_a_raw_client_fails(manager: RedisManager) -> None:
    # Python's json writes NaN; a bash agent could too. It must never count.
    await manager.client.lpush("coord:T1:payload:a1", '{"confidence": NaN}')
    await manager.client.lpush("coord:T1:complete", "a1:success")
    report = await completion.collect_results(manager, "T1", 1, 0.0, 5)
    assert not report.results[0].ok and "outside [0, 1]" in (report.results[0].reason or "")


async def test_an_overwritten_payload_fails_that_agent_only(manager: RedisManager) -> None:
    await manager.client.lpush("coord:T1:payload:a1", '{"confidence": 0.9}')
    await manager.client.set("coord:T1:payload:a2", "a teammate's vandalism")
    await manager.client.lpush("coord:T1:complete", "a1:success", "a2:success")
    report = await completion.collect_results(manager, "T1", 2, 0.0, 5, payload_grace=0.1)
    by_agent = {r.agent_id: r for r in report.results}
    assert by_agent["a1"].ok and by_agent["a1"].confidence == 0.9
    assert not by_agent["a2"].ok and "no payload" in (by_agent["a2"].reason or "")


async def test_an_overwritten_completion_list_is_one_clear_error(manager: RedisManager) -> None:
    await manager.client.set("coord:T1:complete", "garbage")
    with pytest.raises(CorruptRecordError, match="coord:T1:complete is no longer a list"):
        await completion.collect_results(manager, "T1", 1, 0.5, 5)
    with pytest.raises(CorruptRecordError):
        await completion.reported_agents(manager, "T1")


async def test_error_result_counts_as_failed(manager: RedisManager) -> None:
    await completion.signal_completion(
        manager, "T1", "impl-1-1", "error", json.dumps({"confidence": 0.99})
    )
    report = await completion.collect_results(manager, "T1", 1, 0.5, 5)
    assert not report.met and report.failed[0].reason == "agent reported 'error'"


async def test_collector_wakes_on_arrival(manager: RedisManager) -> None:
    collector = asyncio.create_task(completion.collect_results(manager, "T1", 2, 0.5, 10))
    await asyncio.sleep(0.1)
    assert not collector.done()
    start = time.perf_counter()
    for n in (1, 2):
        await completion.signal_completion(
            manager, "T1", f"a{n}", "success", json.dumps({"confidence": 0.9})
        )
    report = await collector
    assert report.met and time.perf_counter() - start < 1.0


async def test_collect_timeout_reports_partial(manager: RedisManager) -> None:
    await completion.signal_completion(manager, "T1", "a1", "success", '{"confidence": 0.9}')
    report = await completion.collect_results(manager, "T1", 3, 0.5, 0.3)
    assert report.timed_out and report.arrived == 1 and not report.met


async def test_resend_counts_once_and_filter_by_agent(manager: RedisManager) -> None:
    await completion.signal_completion(manager, "T1", "impl-1-1", "success", '{"confidence": 0.2}')
    await completion.signal_completion(manager, "T1", "impl-1-1", "success", '{"confidence": 0.9}')
    await completion.signal_completion(manager, "T1", "impl-1-2", "success", '{"confidence": 0.5}')
    report = await completion.collect_results(manager, "T1", 1, 0.8, 2, agent_ids=["impl-1-1"])
    assert report.arrived == 1 and report.results[0].confidence == 0.9 and report.met
    count = await completion.wait_for_loop_completion(manager, "T1", 2, 2)
    assert count == 2


async def test_wait_for_loop_completion_times_out(manager: RedisManager) -> None:
    with pytest.raises(WaitTimeoutError, match="0 of 2 agents completed"):
        await completion.wait_for_loop_completion(manager, "T1", 2, 0.3)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"expected": 0}, "expected must be"),
        ({"expected": -3}, "expected must be"),
        ({"threshold": 1.5}, "threshold must be"),
        ({"threshold": math.nan}, "threshold must be"),
        ({"timeout": -1}, "timeout must be"),
        ({"task_id": "T:*"}, "invalid task id"),
        ({"agent_ids": ["ok", "bad id"]}, "invalid agent id"),
    ],
)
async def test_collect_bad_input(
    manager: RedisManager, kwargs: dict[str, object], error: str
) -> None:
    args: dict[str, object] = {"task_id": "T1", "expected": 1, "threshold": 0.5, "timeout": 1}
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=error):
        await completion.collect_results(manager, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("agent", "result", "payload"),
    [
        ("a b", "success", None),
        ("a1", "ok:bad", None),
        ("a1", "success", "{nope"),
        ("a1", "", None),
    ],
)
async def test_completion_bad_input_writes_nothing(
    manager: RedisManager, agent: str, result: str, payload: str | None
) -> None:
    with pytest.raises(InvalidInputError):
        await completion.signal_completion(manager, "T1", agent, result, payload)
    assert await all_keys(manager) == []


# --- locks ----------------------------------------------------------------------


async def test_lock_holder_only_and_fencing(manager: RedisManager) -> None:
    first = await locks.acquire_lock(manager, "repo", ttl=5)
    with pytest.raises(WaitTimeoutError, match="held by someone else"):
        await locks.acquire_lock(manager, "repo", ttl=5)
    with pytest.raises(LockNotHeldError):
        await locks.release_lock(manager, "repo", "not-the-token")
    with pytest.raises(LockNotHeldError):
        await locks.extend_lock(manager, "repo", "not-the-token", 10)
    assert await manager.client.get("lock:repo") == first.token
    await locks.extend_lock(manager, "repo", first.token, 20)
    assert await manager.client.ttl("lock:repo") > 15
    await locks.release_lock(manager, "repo", first.token)
    second = await locks.acquire_lock(manager, "repo", ttl=5)
    assert second.fence > first.fence
    with pytest.raises(LockNotHeldError):
        await locks.release_lock(manager, "repo", first.token)


async def test_lock_waiter_wakes_on_release(manager: RedisManager) -> None:
    held = await locks.acquire_lock(manager, "repo", ttl=30)
    waiter = asyncio.create_task(locks.acquire_lock(manager, "repo", ttl=5, wait=10))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    start = time.perf_counter()
    await locks.release_lock(manager, "repo", held.token)
    got = await waiter
    assert got.fence == held.fence + 1 and time.perf_counter() - start < 1


async def test_lock_waiter_gets_expired_lock(manager: RedisManager) -> None:
    await locks.acquire_lock(manager, "repo", ttl=0.3)
    got = await locks.acquire_lock(manager, "repo", ttl=5, wait=5)
    assert got.fence == 2


async def test_fencing_numbers_strictly_increase_under_contention(
    manager: RedisManager,
) -> None:
    fences: list[int] = []

    async def worker() -> None:
        for _ in range(5):
            handle = await locks.acquire_lock(manager, "hot", ttl=5, wait=10)
            fences.append(handle.fence)
            await locks.release_lock(manager, "hot", handle.token)

    await asyncio.gather(*(worker() for _ in range(4)))
    assert fences == sorted(fences) and len(set(fences)) == 20


@pytest.mark.parametrize("ttl", [0, -1, math.nan, 10**7])
async def test_lock_bad_ttl(manager: RedisManager, ttl: float) -> None:
    with pytest.raises(InvalidInputError):
        await locks.acquire_lock(manager, "repo", ttl=ttl)
    assert await all_keys(manager) == []


async def test_notifications_disabled_still_wakes(tmp_path: object, settings: object) -> None:
    """On a Redis without keyspace events (and CONFIG refused) collectors still finish."""
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    server = RedisServer(tmp_path / "nonotify", notify=None).start()
    try:
        admin = server.client()
        admin.execute_command("ACL", "SETUSER", "default", "-config")
        mgr = RedisManager.from_url(server.url)
        try:
            collector = asyncio.create_task(completion.collect_results(mgr, "T1", 1, 0.5, 5))
            await asyncio.sleep(0.1)
            await completion.signal_completion(mgr, "T1", "a1", "success", '{"confidence": 1}')
            report = await collector
            assert report.met and report.elapsed < 2
        finally:
            await mgr.close()
    finally:
        server.stop()


def test_key_builders_used_for_everything() -> None:
    assert keys.coord_payload_pattern("T1") == "coord:T1:payload:*"


async def test_concurrent_completions_are_pipelined_and_atomic(manager: RedisManager) -> None:
    """Many completions from one process at once: all arrive, each with its payload."""
    await asyncio.gather(
        *(
            completion.signal_completion(
                manager, "T1", f"a{n}", "success", json.dumps({"confidence": n / 200})
            )
            for n in range(200)
        )
    )
    report = await completion.collect_results(manager, "T1", 200, 0.0, 5)
    assert report.arrived == 200 and not report.failed
    assert sorted(r.confidence or 0 for r in report.results) == [n / 200 for n in range(200)]


async def test_completion_survives_script_cache_flush(manager: RedisManager) -> None:
    await completion.signal_completion(manager, "T1", "a1", "success", '{"confidence": 1}')
    await manager.client.script_flush()  # as after a server restart
    await completion.signal_completion(manager, "T1", "a2", "success", '{"confidence": 1}')
    assert await manager.client.llen("coord:T1:complete") == 2


async def test_payload_only_in_swarm_result_is_found(manager: RedisManager) -> None:
    """An agent that keeps its result at swarm:{task}:result:{agent} only still counts."""
    await manager.client.set("swarm:T1:result:a1", json.dumps({"confidence": 0.66}))
    await manager.client.lpush("coord:T1:complete", "a1:success")
    await completion.signal_completion(manager, "T1", "a2", "success", '{"confidence": 0.9}')
    report = await completion.collect_results(manager, "T1", 2, 0.5, 5)
    assert {r.agent_id: r.confidence for r in report.results} == {"a1": 0.66, "a2": 0.9}


async def test_progress_never_shows_an_entry_whose_payload_is_still_coming(
    manager: RedisManager,
) -> None:
    """The seed's bash signal_completion pushes ``agent:success`` before the payload.
    A progress update in between must not show that agent (it would read as a failed
    report without a confidence); once the payload is there, it shows with it."""
    seen: list[list[tuple[str, bool, float | None]]] = []

    def on_update(report: completion.CollectReport) -> None:
        seen.append([(r.agent_id, r.ok, r.confidence) for r in report.results])

    collector = asyncio.create_task(
        completion.collect_results(manager, "T1", 1, 0.5, 10, on_update=on_update)
    )
    await asyncio.sleep(0.1)
    client = manager.client
    await client.lpush(keys.coord_complete("T1"), "a1:success")  # the entry first...
    await asyncio.sleep(0.3)
    await client.lpush(keys.coord_payload("T1", "a1"), json.dumps({"confidence": 0.8}))
    report = await collector
    assert report.met and report.results[0].confidence == 0.8
    shown = [item for update in seen for item in update]
    assert shown and all(item == ("a1", True, 0.8) for item in shown), seen
