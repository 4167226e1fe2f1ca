"""The loop's SQL journal (cfn.loop.journal.SqlJournal) on the store, both engines.

Its statements are the store's, so a write that breaks off is run again by
Store.transaction, as every other write of the store is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Connection

from cfn.errors import InvalidInputError, NotFoundError
from cfn.loop.journal import SqlJournal
from cfn.loop.state import Checkpoint, Phase, TaskOptions
from cfn.store import repository
from cfn.store.records import AgentRecord, DecisionRecord
from cfn.store.repository import Store, WriteInterruptedError


def _options(task_id: str, tmp_path: Path) -> TaskOptions:
    return TaskOptions(task_id=task_id, epic="Build it\nwell", mode="mvp",
                       workspace=str(tmp_path / task_id))  # fmt: skip


def test_task_round_trip(store: Store, tmp_path: Path) -> None:
    journal = SqlJournal(store)
    options = _options("t1", tmp_path)
    journal.create_task(options, Checkpoint())
    assert journal.load_task("t1") == (options, Checkpoint(), "pending")
    with pytest.raises(InvalidInputError, match="cfn resume t1"):
        journal.create_task(options, Checkpoint())
    with pytest.raises(NotFoundError):
        journal.load_task("t2")
    store.create_task("plain", "mvp", "not the orchestrator's")
    with pytest.raises(InvalidInputError, match="not created by the orchestrator"):
        journal.load_task("plain")

    gate = {"score": 0.8, "passed": True}
    journal.save_checkpoint("t1", Checkpoint(iteration=1, phase=Phase.LOOP2, gate=gate), "running")
    consensus = {"score": 0.95, "passed": True}
    # Iteration 1's consensus failed at 0.7: the checkpoint moved on and carries it.
    ended = {"iteration": 1, "gate": 0.8, "consensus": 0.7}
    later = Checkpoint(iteration=2, phase=Phase.DECISION, consensus=consensus, ended=ended)
    journal.save_checkpoint("t1", later, "running")
    assert journal.load_task("t1") == (options, later, "running")
    first, second = store.iterations("t1")
    assert (first.number, first.gate_mean, first.consensus_mean) == (1, 0.8, 0.7)
    assert (second.number, second.gate_mean, second.consensus_mean) == (2, None, 0.95)
    assert first.finished_at is not None and second.finished_at is None
    with pytest.raises(NotFoundError):
        journal.save_checkpoint("t2", later, "running")


def test_agents_decisions_and_events(store: Store, tmp_path: Path) -> None:
    journal = SqlJournal(store)
    journal.create_task(_options("t1", tmp_path), Checkpoint())
    row = AgentRecord("t1", "impl-1-1", "implementer", 3, 1, "coder", "offline", "m", "running",
                      4242)  # fmt: skip
    journal.save_agent(row)
    done = AgentRecord("t1", "impl-1-1", "implementer", 3, 1, "coder", "offline", "m", "done",
                       4242, 0.9, "finished")  # fmt: skip
    journal.save_agent(done)
    assert journal.agents("t1") == [done]

    assert journal.decision("t1", 1) is None
    recorded = journal.record_decision(DecisionRecord("t1", 1, "ITERATE", "policy", "again"))
    assert (recorded.decision, recorded.decided_by) == ("ITERATE", "policy")
    assert (recorded.reason, recorded.id is not None) == ("again", True)
    assert journal.decision("t1", 1) == recorded
    # A resumed orchestrator racing its own earlier write gets that decision back.
    assert journal.record_decision(DecisionRecord("t1", 1, "PROCEED", "policy", None)) == recorded
    assert store.decisions("t1") == [recorded]

    ids = [journal.append_event("t1", "step", {"n": n, "path": tmp_path}) for n in range(3)]
    events = journal.events("t1")
    assert [(i, kind, data["n"]) for i, kind, data in events] == [
        (ids[0], "step", 0), (ids[1], "step", 1), (ids[2], "step", 2)
    ]  # fmt: skip
    assert events[0][2]["path"] == str(tmp_path)
    assert [i for i, _k, _d in journal.events("t1", after=ids[0])] == ids[1:]


def test_events_are_read_in_pages(store: Store, tmp_path: Path) -> None:
    journal = SqlJournal(store)
    store.append_events([("e", {"n": n}, "t1") for n in range(2100)])
    assert [d["n"] for _i, _k, d in journal.events("t1")] == list(range(2100))


def test_journal_write_runs_again_after_the_connection_broke(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store.write
    attempts = 0

    @contextmanager
    def breaks_once() -> Iterator[Connection]:
        nonlocal attempts
        attempts += 1
        with real() as conn:
            yield conn
            if attempts == 1:  # as if the server went away before COMMIT
                raise WriteInterruptedError("connection lost", outcome_unknown=False)

    monkeypatch.setattr(repository, "WRITE_BACKOFF", 0.0)
    monkeypatch.setattr(store, "write", breaks_once)
    journal = SqlJournal(store)
    options = _options("t1", tmp_path)
    journal.create_task(options, Checkpoint())
    assert attempts == 2
    assert journal.load_task("t1") == (options, Checkpoint(), "pending")
    assert [i.number for i in store.iterations("t1")] == [1]
