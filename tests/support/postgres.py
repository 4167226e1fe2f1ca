"""A real PostgreSQL for tests and benchmarks: Debian's binaries, a temp dir, a free port.

initdb refuses to run as root, so as root the server runs as the unprivileged
``postgres`` user (created by Debian's package; created here when missing) in
a temp dir made over to it. The server listens on 127.0.0.1 only, with trust
auth and durability switched off (fsync, full-page writes): it holds test
data for the length of one run.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import PORT_TRIES, free_port

SUPERUSER = "cfn"
SERVICE_USER = "postgres"


def pg_bindir() -> Path | None:
    """Debian's newest ``/usr/lib/postgresql/N/bin``, else wherever ``initdb`` is on PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _ensure_service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
        )
        return pwd.getpwnam(SERVICE_USER)


@dataclass
class PostgresServer:
    """One postgres process of our own; ``database()`` hands out fresh databases."""

    port: int = field(default_factory=free_port)
    workdir: Path | None = None
    bindir: Path | None = None
    _as_root: bool = False

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        assert self.bindir is not None
        argv = [str(self.bindir / args[0]), *args[1:]]
        return ["runuser", "-u", SERVICE_USER, "--", *argv] if self._as_root else argv

    def start(self) -> PostgresServer:
        self.bindir = self.bindir or pg_bindir()
        if self.bindir is None:
            raise RuntimeError(
                "PostgreSQL binaries missing: run `make test` (scripts/bootstrap.sh installs "
                "Debian's postgresql)"
            )
        self._as_root = os.geteuid() == 0
        self.workdir = Path(tempfile.mkdtemp(prefix="cfn-pg-"))
        data = self.workdir / "data"
        if self._as_root:
            user = _ensure_service_user()
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
        self.workdir.chmod(0o700)
        subprocess.run(
            self._cmd(
                "initdb",
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd="/",
        )
        log = self.workdir / "postgres.log"
        for _attempt in range(PORT_TRIES):
            if self._pg_ctl_start(data, log):
                return self
            # The port was taken between free_port() and the bind: another one.
            self.port = free_port()
        raise RuntimeError(f"PostgreSQL found no free port in {PORT_TRIES} tries; see {log}")

    def _pg_ctl_start(self, data: Path, log: Path) -> bool:
        """Start the server; False when it could not bind its port (anything else raises)."""
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                "-c unix_socket_directories=''",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        seen = log.stat().st_size if log.exists() else 0
        result = subprocess.run(
            self._cmd(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd="/",
        )
        if result.returncode == 0:
            return True
        with contextlib.suppress(OSError), open(log, "rb") as handle:
            handle.seek(seen)
            if b"could not bind" in handle.read():
                return False
        raise subprocess.CalledProcessError(
            result.returncode, result.args, stderr=result.stderr
        )

    def database(self, prefix: str = "t") -> str:
        """A new, empty database; returns its URL."""
        import psycopg
        from psycopg import sql

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} STRATEGY FILE_COPY").format(sql.Identifier(name))
            )
        return self.url(name)

    def drop(self, url: str) -> None:
        import psycopg
        from psycopg import sql

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def stop(self) -> None:
        if self.workdir is None:
            return
        data = self.workdir / "data"
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(
                self._cmd("pg_ctl", "stop", "-D", str(data), "-m", "immediate", "-w"),
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
            )
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None
