"""An agent's transcript: each step it takes, for people to follow live.

A step is one message, tool call, tool result or error. The agent writes
each one twice:

* to its own step stream ``swarm:{task}:steps:{agent}`` (XADD, capped near
  ``MAXLEN``), which the orchestrator relays to the task's events as
  ``agent:step`` (the dashboard's live transcript);
* as one line to its log (``agent.log``: ``cfn logs AGENT --follow``, and
  ``docker logs`` for an agent in a container).

Wire format of one stream entry (all strings)::

    kind     text | tool_use | tool_result | error | system
    text     the message, the tool's output or the error (at most TEXT_LIMIT chars)
    tool     the tool's name (tool_use, tool_result when known)
    toolId   the call's id, linking a result to its call
    args     the tool's arguments as JSON (at most TEXT_LIMIT chars)
    isError  "1" when the tool failed
    ts       seconds since the epoch

Writing a step never fails the agent: a lost step is logged and the work goes on.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from cfn import keys
from cfn.coordination.connection import RedisManager
from cfn.errors import CfnError

log = logging.getLogger(__name__)
#: The agent's transcript lines (``run_agent`` sends them to the agent's log).
transcript = logging.getLogger("cfn.transcript")

MAXLEN = 2000
TEXT_LIMIT = 4000
LINE_LIMIT = 300
KINDS = ("text", "tool_use", "tool_result", "error", "system")
#: Tools whose ``file_path`` argument is a file the agent changed.
WRITING_TOOLS = frozenset({"Write", "Edit", "MultiEdit", "NotebookEdit", "write_file"})


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def entry(
    kind: str,
    text: str = "",
    *,
    tool: str | None = None,
    tool_id: str | None = None,
    arguments: Any = None,
    is_error: bool = False,
) -> dict[str, str]:
    """One step as its stream entry's fields."""
    fields = {"kind": kind if kind in KINDS else "system", "text": _clip(text, TEXT_LIMIT)}
    if tool:
        fields["tool"] = _clip(tool, 200)
    if tool_id:
        fields["toolId"] = _clip(tool_id, 200)
    if arguments is not None:
        fields["args"] = _clip(json.dumps(arguments, default=str), TEXT_LIMIT)
    if is_error:
        fields["isError"] = "1"
    fields["ts"] = f"{time.time():.3f}"
    return fields


def line(fields: dict[str, str]) -> str:
    """The step as one log line: ``[tool_use] Write {"file_path": ...}``."""
    parts = [f"[{fields['kind']}]"]
    if "tool" in fields:
        parts.append(fields["tool"])
    if "args" in fields:
        parts.append(fields["args"])
    if fields.get("text"):
        parts.append(fields["text"])
    if fields.get("isError"):
        parts.append("(error)")
    return _clip(" ".join(parts).replace("\n", " ⏎ "), LINE_LIMIT)


class StepWriter:
    """Writes one agent's steps to its stream and its log."""

    def __init__(self, redis: RedisManager | None, task_id: str, agent_id: str) -> None:
        self.redis = redis
        self.key = keys.agent_steps(task_id, agent_id)
        self.written = 0
        #: Files the agent's tools wrote (``file_path`` of Write, Edit, ...).
        self.files: list[str] = []

    async def write(
        self,
        kind: str,
        text: str = "",
        *,
        tool: str | None = None,
        tool_id: str | None = None,
        arguments: Any = None,
        is_error: bool = False,
    ) -> None:
        fields = entry(
            kind, text, tool=tool, tool_id=tool_id, arguments=arguments, is_error=is_error
        )
        if kind == "tool_use" and tool in WRITING_TOOLS and isinstance(arguments, dict):
            path = arguments.get("file_path") or arguments.get("path")
            if isinstance(path, str) and path not in self.files:
                self.files.append(path)
        transcript.info("%s", line(fields))
        if self.redis is None:
            return
        key = self.key
        try:
            await self.redis.run(
                lambda r: r.xadd(key, fields, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]
            )
            self.written += 1
        except CfnError as exc:
            log.warning("a step of the transcript was not written: %s", exc)
