"""A scripted "coding model" for the LLM stand-in: it plays a CFN Loop team's turns.

Given a request in either wire format (Anthropic Messages or OpenAI Chat, as
cfn's LLM gateway sends them upstream), it answers by what the conversation
holds so far:

* an implementer (the system prompt says so) writes ``fizzbuzz.py`` with the
  ``Write`` tool (Claude Code) or ``write_file`` (cfn's builtin agent), runs a
  check with ``Bash`` / ``run_command`` (``env`` too, so a test can look for
  secrets in what a command sees), then reports with a confidence line;
* a validator reads the file, then reports;
* any other request (Claude Code's side calls) gets a plain answer.

Nothing here knows which agent asks: the answer is a function of the request,
so any number of agents can share one stand-in.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tests.support.llm_servers import (
    Recorded,
    Reply,
    anthropic_json,
    anthropic_sse,
    openai_json,
    openai_sse,
)

FIZZBUZZ = """def fizzbuzz(n: int) -> str:
    if n % 15 == 0:
        return "FizzBuzz"
    if n % 3 == 0:
        return "Fizz"
    if n % 5 == 0:
        return "Buzz"
    return str(n)
"""
CHECK = (
    'python3 -c \'import fizzbuzz; assert fizzbuzz.fizzbuzz(15) == "FizzBuzz"; '
    'print("checks pass")\' | tee check.log && env'
)
IMPLEMENTED = (
    "fizzbuzz.py is written and its check passes.\n"
    '{"confidence": 0.92, "summary": "fizzbuzz implemented", "files": ["fizzbuzz.py"], '
    '"concerns": ""}'
)
REVIEWED = (
    'The module looks right.\n{"confidence": 0.9, "feedback": "", "summary": "fizzbuzz reviewed"}'
)
_CWD = re.compile(
    r"(?:Working directory|cwd|working directory)[\"']?\s*[:=]\s*[\"']?(/[^\s\"'\\<]+)"
)


def _text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _tool_names(body: dict[str, Any]) -> set[str]:
    names = set()
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            fn = tool.get("function")
            names.add(str(fn.get("name")) if isinstance(fn, dict) else str(tool.get("name")))
    return names


def _results(body: dict[str, Any]) -> int:
    """How many tool results the conversation holds (either format)."""
    count = 0
    for message in body.get("messages") or []:
        if message.get("role") == "tool":
            count += 1
        content = message.get("content")
        if isinstance(content, list):
            count += sum(
                1 for b in content if isinstance(b, dict) and b.get("type") == "tool_result"
            )
    return count


def _system(body: dict[str, Any]) -> str:
    parts = [_text(body.get("system") or "")]
    parts += [
        _text(m.get("content")) for m in body.get("messages") or [] if m.get("role") == "system"
    ]
    return "\n".join(parts)


def _reply(request: Recorded, text: str, call: tuple[str, dict[str, Any]] | None) -> Reply:
    anthropic = request.path.split("?", 1)[0].endswith("/messages")
    stream = bool(request.body.get("stream"))
    uses = [("call_" + call[0].lower(), call[0], json.dumps(call[1]))] if call else None
    if anthropic:
        if stream:
            return anthropic_sse([text] if text else [""], tool_uses=uses)
        inputs = [(u[0], u[1], json.loads(u[2])) for u in uses or []]
        return anthropic_json(text, tool_uses=inputs or None)
    if stream:
        return openai_sse([text] if text else [], tool_calls=uses)
    return openai_json(text or None, tool_calls=uses)


def coding_model(request: Recorded) -> Reply:
    body = request.body
    tools = _tool_names(body)
    if not tools:
        return _reply(request, "ok", None)
    system = _system(body)
    found = _CWD.search(json.dumps(body))
    cwd = found.group(1) if found else "."
    done = _results(body)
    claude = "Write" in tools
    write, run, read = (
        ("Write", "Bash", "Read") if claude else ("write_file", "run_command", "read_file")
    )
    path = f"{cwd}/fizzbuzz.py" if claude else "fizzbuzz.py"
    if "a validator in a CFN Loop team" in system:
        if done == 0:
            return _reply(request, "", (read, {"file_path" if claude else "path": path}))
        return _reply(request, REVIEWED, None)
    if done == 0:
        args = (
            {"file_path": path, "content": FIZZBUZZ}
            if claude
            else {"path": path, "content": FIZZBUZZ}
        )
        return _reply(request, "I will write the module.", (write, args))
    if done == 1:
        args = {"command": CHECK, "description": "check fizzbuzz"} if claude else {"command": CHECK}
        return _reply(request, "", (run, args))
    return _reply(request, IMPLEMENTED, None)
