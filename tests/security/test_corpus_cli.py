"""The bad-input corpus against the CLI: real subprocesses of `python -m cfn`.

Every case exits non-zero with one clear error (an ``[ERROR]`` line, or the
option parser's usage error), never a traceback, and leaves Redis and the SQL
store exactly as they were. The cases run a few at a time (they are separate
processes) in one module-scoped batch; each case is its own test.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.security.corpus import BAD_IDS, deep_json, redis_snapshot, sql_counts
from tests.support.servers import RedisServer, cfn_env

CFN = [sys.executable, "-m", "cfn"]
PARALLEL = 4

#: (case name, argv after `cfn`, expect an [ERROR] line (False: a usage error is fine)).
Case = tuple[str, list[str], bool]


CONTEXT_FILES = ("bad-context.json", "deep-context.json", "big-context.json", "latin1.json")


def _write_files(files: Path) -> None:
    bad_ctx, deep_ctx, big_ctx, not_utf8 = (files / n for n in CONTEXT_FILES)
    bad_ctx.write_text('{"task_id": "../../etc", "agent_id": "a"}')
    deep_ctx.write_text(deep_json(100_000))
    big_ctx.write_text(" " * (5 * 1024 * 1024))
    not_utf8.write_bytes(b'{"task_id": "\xe9"}')


def _id_cases() -> list[Case]:
    """The id matrix: run in-process through the same entry point (``cfn.cli.main.main``)."""
    cases: list[Case] = []
    for n, bad in enumerate(BAD_IDS):
        cases.append(
            (
                f"context-store-task-{n}",
                ["context", "store", "--task-id", bad, "--key", "k", "--value", "1"],
                True,
            )
        )
    for n, bad in enumerate(BAD_IDS):
        cases.append(
            (
                f"signal-complete-agent-{n}",
                [
                    "signal",
                    "complete",
                    "--task-id",
                    "t1",
                    "--agent-id",
                    bad,
                    "--payload",
                    '{"confidence": 0.9}',
                ],
                True,
            )
        )
    for n, bad in enumerate(BAD_IDS[:12]):
        cases.append((f"lock-resource-{n}", ["lock", "acquire", "--resource", bad], True))
    for n, bad in enumerate(BAD_IDS[:10]):
        cases.append((f"spawn-agent-{n}", ["spawn-agent", bad, "t1"], True))
    for n, bad in enumerate(["*", "../x", "a\nb", "$(id)"]):
        cases.append(
            (f"signal-channel-{n}", ["signal", "send", "--task-id", "t1", "--channel", bad], True)
        )
        cases.append(
            (
                f"context-key-{n}",
                ["context", "store", "--task-id", "t1", "--key", bad, "--value", "1"],
                True,
            )
        )
        cases.append((f"logs-{n}", ["logs", bad], True))
        cases.append((f"agents-kill-{n}", ["agents", "kill", bad], True))
        cases.append((f"decide-task-{n}", ["decide", bad, "PROCEED"], True))
    return cases


def _cases(files: Path) -> list[Case]:
    """Run as real subprocesses: one of each kind of bad input per command."""
    bad_ctx, deep_ctx, big_ctx, not_utf8 = (files / n for n in CONTEXT_FILES)
    cases: list[Case] = [
        (
            "sub-context-store-glob",
            ["context", "store", "--task-id", "task*", "--key", "k", "--value", "1"],
            True,
        ),
        (
            "sub-context-store-newline",
            ["context", "store", "--task-id", "a\nb", "--key", "k", "--value", "1"],
            True,
        ),
        (
            "sub-complete-traversal",
            ["signal", "complete", "--task-id", "t1", "--agent-id", "../x"],
            True,
        ),
        (
            "sub-complete-sql",
            ["signal", "complete", "--task-id", "'; DROP TABLE tasks;--", "--agent-id", "a1"],
            True,
        ),
        ("sub-spawn-shell", ["spawn-agent", "$(touch /tmp/cfn-pwned)", "t1"], True),
        ("sub-lock-too-long", ["lock", "acquire", "--resource", "x" * 129], True),
        ("sub-logs-traversal", ["logs", "../../etc/passwd"], True),
    ]
    cases += [
        ("context-bad-json", ["context", "store", "--task-id", "t1", "--key", "k",
                              "--value", "{bad json"], True),
        ("context-deep-json", ["context", "store", "--task-id", "t1", "--key", "k",
                               "--value", deep_json(50_000)], True),
        ("context-huge-json", ["context", "store", "--task-id", "t1", "--key", "k",
                               "--value", json.dumps("x" * 100_000)], True),
        ("context-nan", ["context", "store", "--task-id", "t1", "--key", "k",
                         "--value", "NaN"], True),
        ("context-ttl-negative", ["context", "store", "--task-id", "t1", "--key", "k",
                                  "--value", "1", "--ttl", "-5"], True),
        ("complete-payload-not-json", ["signal", "complete", "--task-id", "t1",
                                       "--agent-id", "a1", "--payload", "{oops"], True),
        ("complete-result-with-colon", ["signal", "complete", "--task-id", "t1",
                                        "--agent-id", "a1", "--result", "success:x"], True),
        ("complete-payload-deep", ["signal", "complete", "--task-id", "t1", "--agent-id",
                                   "a1", "--payload", deep_json(50_000)], True),
        ("lock-ttl-zero", ["lock", "acquire", "--resource", "r1", "--ttl", "0"], True),
        ("lock-ttl-nan", ["lock", "acquire", "--resource", "r1", "--ttl", "nan"], False),
        ("lock-ttl-word", ["lock", "acquire", "--resource", "r1", "--ttl", "soon"], False),
        ("agent-run-missing", ["agent", "run", "--context", str(files / "nope.json")], True),
        ("agent-run-dir", ["agent", "run", "--context", str(files)], True),
        ("agent-run-traversal-ids", ["agent", "run", "--context", str(bad_ctx)], True),
        ("agent-run-deep", ["agent", "run", "--context", str(deep_ctx)], True),
        ("agent-run-too-big", ["agent", "run", "--context", str(big_ctx)], True),
        ("agent-run-not-utf8", ["agent", "run", "--context", str(not_utf8)], True),
        ("decide-word", ["decide", "t1", "MAYBE"], True),
        ("token-role", ["token", "--sub", "x", "--role", "root"], True),
        ("token-agent-no-task", ["token", "--sub", "x", "--role", "agent"], True),
        ("token-sub-traversal", ["token", "--sub", "../x", "--role", "operator"], True),
        ("token-ttl-zero", ["token", "--sub", "x", "--role", "operator", "--ttl", "0"], False),
        ("mcp-token-skill", ["mcp", "token", "--agent-id", "a", "--task-id", "t",
                             "--skills", "rm-rf"], True),
        ("mcp-token-task", ["mcp", "token", "--agent-id", "a", "--task-id", "t*",
                            "--skills", "redis-management"], True),
        ("mcp-token-scope", ["mcp", "token", "--agent-id", "a", "--task-id", "t",
                             "--skills", "redis-management", "--scope", "root"], True),
        ("orchestrate-task", ["orchestrate", "--task-id", "../t", "--epic", "x"], True),
        ("orchestrate-task-dash", ["orchestrate", "--task-id", "-rf", "--epic", "x"], True),
        ("run-workspace-proc", ["run", "--epic", "x", "--workspace", "/proc/self"], True),
        ("run-workspace-file", ["run", "--epic", "x", "--workspace", str(bad_ctx)], True),
        ("run-provider-unknown", ["run", "--epic", "x", "--provider", "nope-provider"], True),
        ("agent-run-endless", ["agent", "run", "--context", "/dev/zero"], True),
        ("orchestrate-implementers", ["orchestrate", "--task-id", "t1", "--epic", "x",
                                      "--implementers", "0"], False),
        ("orchestrate-mode", ["orchestrate", "--task-id", "t1", "--epic", "x",
                              "--mode", "chaos"], True),
        ("run-backend", ["run", "--epic", "x", "--backend", "bash"], True),
        ("orchestrate-backend", ["orchestrate", "--task-id", "t1", "--epic", "x",
                                 "--backend", "../claude"], True),
        ("spawn-command-no-command", ["spawn-agent", "a1", "t1", "--backend", "command"],
         True),
        ("spawn-mode-unknown", ["spawn-agent", "a1", "t1", "mvp"], True),
        ("spawn-builtin-with-command", ["spawn-agent", "a1", "t1", "--backend", "builtin",
                                        "--command", "echo hi"], True),
        ("llm-gateway-port", ["llm-gateway", "--port", "0"], False),
        ("llm-gateway-port-word", ["llm-gateway", "--port", "http"], False),
        ("skills-add-outside", ["skills", "add", "/etc/passwd"], True),
        ("skills-add-traversal", ["skills", "add", "../../etc"], True),
    ]  # fmt: skip
    return cases


#: The cases run as real `python -m cfn` processes (about 1 s of CPU each); the rest go
#: through the same entry point in-process.
SUBPROCESS = {
    "sub-context-store-glob", "sub-context-store-newline", "sub-complete-traversal",
    "sub-complete-sql", "sub-spawn-shell", "sub-lock-too-long", "sub-logs-traversal",
    "context-bad-json", "complete-payload-not-json", "lock-ttl-word", "agent-run-missing",
    "agent-run-deep", "agent-run-not-utf8", "token-role", "mcp-token-skill",
    "orchestrate-task", "skills-add-outside",
}  # fmt: skip


@dataclass
class Outcome:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def _in_process(argv: list[str], env: dict[str, str]) -> Outcome:
    """``cfn ARGV`` through ``cfn.cli.main.main`` in this process (what the script runs)."""
    from cfn.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        for name in [n for n in os.environ if n.startswith(("REDIS_", "CFN_", "DB_PATH"))]:
            mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setattr(sys, "argv", ["cfn", *argv])
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        except BaseException:  # would be a traceback for a user
            err.write("Traceback (in-process)\n" + traceback.format_exc())
            code = 99
    rc = code if isinstance(code, int) else 1
    return Outcome(argv, rc, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    root = tmp_path_factory.mktemp("cli-corpus")
    server = RedisServer(root / "redis", password="cli-corpus-pw").start()
    files = root / "files"
    files.mkdir()
    _write_files(files)
    env = cfn_env(root, REDIS_URL=server.url, CFN_AGENTS_DIR=str(root / "agents"))
    env["DB_PATH"] = str(root / ".cfn" / "cfn.db")
    env["CFN_CONTEXT_MAX_BYTES"] = "65536"
    client = server.client()
    client.set("context:t1:k", '"keep"')
    client.lpush("coord:t1:complete", "a0:success")
    # The store exists (migrated) before the corpus runs, so row counts are comparable.
    subprocess.run([*CFN, "db", "upgrade"], env=env, cwd=root, capture_output=True, check=True)
    before = (redis_snapshot(client), sql_counts(root / ".cfn"))

    def run(case: Case) -> tuple[str, Outcome]:
        name, argv, _ = case
        proc = subprocess.run(
            [*CFN, *argv],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        return name, Outcome(argv, proc.returncode, proc.stdout, proc.stderr)

    try:
        every = _cases(files)
        with ThreadPoolExecutor(PARALLEL) as pool:
            outcomes = dict(pool.map(run, [c for c in every if c[0] in SUBPROCESS]))
        cwd = os.getcwd()
        os.chdir(root)
        try:
            in_process = [c for c in every if c[0] not in SUBPROCESS] + _id_cases()
            for name, argv, _ in in_process:
                outcomes[name] = _in_process(
                    argv, {k: v for k, v in env.items() if k.startswith(("REDIS_", "CFN_", "DB_"))}
                )
        finally:
            os.chdir(cwd)
        after = (redis_snapshot(client), sql_counts(root / ".cfn"))
        outcomes["__unchanged__"] = Outcome([], int(before != after), repr(before), repr(after))
        yield outcomes
    finally:
        client.close()
        server.stop()


CASES = [(name, wants) for name, _argv, wants in [*_cases(Path("/x")), *_id_cases()]]


@pytest.mark.parametrize(("name", "wants_error_line"), CASES, ids=[c[0] for c in CASES])
def test_cli_case(cli_run: dict[str, Outcome], name: str, wants_error_line: bool) -> None:
    got = cli_run[name]
    assert got.returncode != 0, (got.argv, got.stdout, got.stderr)
    assert "Traceback" not in got.stderr and "Traceback" not in got.stdout, got.stderr
    lines = [line for line in got.stderr.splitlines() if line.strip()]
    if wants_error_line or any(line.startswith("[ERROR]") for line in lines):
        assert len(lines) == 1 and lines[0].startswith("[ERROR] "), (got.argv, got.stderr)
        assert len(lines[0]) > len("[ERROR] ") + 10
    else:  # the option parser's usage error (a bad number, an out-of-range option)
        assert got.returncode == 2 and "Error" in got.stderr, (got.argv, got.stderr)
    if name.startswith("run-"):  # a refused `cfn run` announces no task id
        assert "task id" not in got.stdout, got.stdout


def test_cli_corpus_wrote_nothing(cli_run: dict[str, Outcome]) -> None:
    unchanged = cli_run["__unchanged__"]
    assert unchanged.returncode == 0, f"before {unchanged.stdout}\nafter {unchanged.stderr}"
    assert len(CASES) >= 100
