"""The real ``cfn`` binary (``python -m cfn``) on both engines: good paths and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cfn.settings import Settings
from cfn.store import migrate
from cfn.store.repository import Store
from tests.support.servers import cfn_env

CFN = [sys.executable, "-m", "cfn"]


@dataclass
class Cli:
    project: Path
    env: dict[str, str]
    settings: Settings

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*CFN, *args],
            cwd=self.project,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.start(*args)
        stdout, stderr = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def store(self) -> Store:
        return Store.open(self.settings)


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Cli:
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "skills" / "review").mkdir(parents=True)
    (project / "skills" / "review" / "SKILL.md").write_text("# review\n")
    if db_url.startswith("sqlite:///"):
        db_path = db_url.removeprefix("sqlite:///")
        env = cfn_env(tmp_path, DB_PATH=db_path)
        settings = Settings(cfn_state_dir=tmp_path / ".cfn", db_path=Path(db_path))
    else:
        env = cfn_env(tmp_path, DATABASE_URL=db_url)
        settings = Settings(cfn_state_dir=tmp_path / ".cfn", database_url=db_url)
    return Cli(project, env, settings)


def test_skills_commands_end_to_end(cli: Cli) -> None:
    added = cli.run("skills", "add", "skills/review")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added: review sha256:")

    agent = "reviewer'); DROP TABLE skills; --"
    approved = cli.run(
        "skills",
        "approve",
        "review",
        "--agent-id",
        agent,
        "--decision",
        "approve",
        "--confidence",
        "0.85",
        "--metadata",
        '{"notes": "a;b -- c", "n": 1}',
    )
    assert approved.returncode == 0, approved.stderr

    history = cli.run("skills", "history", "review", "--json")
    assert history.returncode == 0, history.stderr
    [entry] = json.loads(history.stdout)
    assert (entry["agent_id"], entry["decision"], entry["confidence"]) == (agent, "APPROVE", 0.85)
    assert json.loads(entry["metadata"]) == {"notes": "a;b -- c", "n": 1}

    (cli.project / "skills" / "review" / "SKILL.md").write_text("# review v2\n")
    listed = cli.run("skills", "list")
    assert listed.returncode == 0 and "review" in listed.stdout and "1 skill(s)" in listed.stdout
    shown = cli.run("skills", "show", "review")
    assert shown.returncode == 0, shown.stderr
    assert "changed since added" in shown.stdout and "APPROVE" in shown.stdout


def test_bad_input_is_one_error_line_and_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    with cli.store() as store:
        store.upsert_skill("review", "0" * 64, "skills/review/SKILL.md")
    (tmp_path / "outside.md").write_text("outside the project")
    approve = ["skills", "approve", "review", "--agent-id", "a"]
    cases: list[tuple[list[str], int, str]] = [
        (["skills", "add", str(tmp_path / "outside.md")], 2, "outside the project"),
        (["skills", "add", "skills/nope.md"], 2, "does not exist"),
        ([*approve, "--decision", "MAYBE", "--confidence", "0.5"], 2, "unknown decision"),
        ([*approve, "--decision", "APPROVE", "--confidence", "1.01"], 2, "outside [0, 1]"),
        ([*approve, "--decision", "APPROVE", "--confidence", "high"], 2, "not a number"),
        (
            [*approve, "--decision", "DEFER", "--confidence", "1", "--metadata", "{x"],
            2,
            "not valid JSON",
        ),
        (
            [
                "skills",
                "approve",
                "ghost",
                "--agent-id",
                "a",
                "--decision",
                "DEFER",
                "--confidence",
                "1",
            ],
            1,
            "no skill named 'ghost'",
        ),
    ]
    # Independent invocations: run them side by side.
    procs = [(cli.start(*args), code, message) for args, code, message in cases]
    for proc, code, message in procs:
        stdout, stderr = proc.communicate(timeout=60)
        lines = stderr.strip().splitlines()
        assert proc.returncode == code, (proc.args, stderr)
        assert len(lines) == 1 and lines[0].startswith("[ERROR] "), (proc.args, stderr)
        assert message in lines[0], (proc.args, lines[0])
        assert stdout == ""
    with cli.store() as store:
        assert [s.name for s in store.list_skills()] == ["review"]
        assert store.row_counts()["approval_history"] == 0


def test_db_commands(cli: Cli) -> None:
    """upgrade, downgrade (the seed's rollback), current; bad revisions and auto-upgrade on
    first use are covered in-process by test_schema.py."""
    upgraded = cli.run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "empty → 0005" in upgraded.stdout
    with cli.store() as store:
        store.upsert_skill("kept", "0" * 64, "skills/kept.md")
        store.create_task("t1", "mvp", "epic")
    down = cli.run("db", "downgrade")
    assert down.returncode == 0 and "0005 → 0004" in down.stdout, down.stderr
    current = cli.run("db", "current")
    assert current.returncode == 1 and current.stdout.startswith("0004 (head is 0005)")
    with cli.store() as store:  # opening brings it back up; the seed tables kept their rows
        assert migrate.current(store.engine) == "0005"
        assert [s.name for s in store.list_skills()] == ["kept"]


def test_the_database_file_is_for_its_owner_only(tmp_path: Path) -> None:
    """It holds every task's records: 0600, and an older 0644 one is tightened."""
    settings = Settings(cfn_state_dir=tmp_path / ".cfn")
    with Store.open(settings) as store:
        store.create_task("t1", "mvp", "x")
    db = tmp_path / ".cfn" / "cfn.db"
    assert db.stat().st_mode & 0o777 == 0o600
    db.chmod(0o644)
    with Store.open(settings) as store:
        assert store.get_task("t1").status
    assert db.stat().st_mode & 0o777 == 0o600
    for name in (f"{db}-wal", f"{db}-shm"):
        if Path(name).exists():
            assert Path(name).stat().st_mode & 0o777 == 0o600


def test_the_state_dir_is_for_its_owner_only(tmp_path: Path) -> None:
    """cfn's state dir (secrets, database, logs, contexts) is made 0700 by the first
    command, and an older 0755 one is narrowed; another user's is left alone."""

    def upgrade(state: Path) -> None:
        done = subprocess.run(
            [*CFN, "db", "upgrade"],
            env=cfn_env(tmp_path, CFN_STATE_DIR=str(state)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr

    fresh = tmp_path / "fresh" / ".cfn"
    upgrade(fresh)
    assert fresh.stat().st_mode & 0o777 == 0o700
    older = tmp_path / "older" / ".cfn"
    older.mkdir(parents=True, mode=0o755)
    older.chmod(0o755)
    upgrade(older)
    assert older.stat().st_mode & 0o777 == 0o700
    assert (older / "cfn.db").stat().st_mode & 0o777 == 0o600
