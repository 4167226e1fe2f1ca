"""An agent's Redis ACL user goes when it ends, even when its watcher is cancelled
midway through the deletion (the orchestrator cancels watchers once a team is
collected)."""

from __future__ import annotations

import asyncio

from cfn.agents.spawn.base import ExitInfo
from cfn.coordination.acl import AgentAcl
from cfn.loop.launcher import _Running


class _EndedHandle:
    """An agent process that has already exited."""

    task_id = "T1"
    agent_id = "impl-1-1"
    pid = 4242

    async def wait(self) -> ExitInfo:
        return ExitInfo(self.task_id, self.agent_id, "cfn-T1-impl-1-1", self.pid, 0, None)


class _SlowAcl(AgentAcl):
    """The real AgentAcl's bookkeeping, with a Redis that answers DELUSER slowly."""

    def __init__(self) -> None:
        super().__init__(["redis://127.0.0.1:1"], "on")
        self.started = asyncio.Event()
        self.answer = asyncio.Event()
        self.deleted: list[tuple[str, str]] = []

    async def delete(self, task_id: str, agent_id: str) -> None:
        self.started.set()
        await self.answer.wait()
        self.deleted.append((task_id, agent_id))


async def test_a_watcher_cancelled_during_the_deletion_still_deletes_the_user() -> None:
    acl = _SlowAcl()
    running = _Running(_EndedHandle(), "coder", None, None, acl)  # type: ignore[arg-type]
    watcher = asyncio.create_task(running.wait())
    await acl.started.wait()
    watcher.cancel()  # the team was collected while the deletion talked to Redis
    await asyncio.gather(watcher, return_exceptions=True)
    running.release()  # what the orchestrator does next
    acl.answer.set()
    for _ in range(100):
        if acl.deleted:
            break
        await asyncio.sleep(0.01)
    assert acl.deleted == [("T1", "impl-1-1")]


async def test_the_user_is_deleted_once_when_wait_and_release_both_run() -> None:
    acl = _SlowAcl()
    acl.answer.set()
    running = _Running(_EndedHandle(), "coder", None, None, acl)  # type: ignore[arg-type]
    assert await running.wait() == "exited"
    running.release()
    await asyncio.sleep(0.05)
    assert acl.deleted == [("T1", "impl-1-1")]
