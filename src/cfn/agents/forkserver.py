"""The agent server: one preloaded Python process that forks builtin agents (and,
through the CLI's request kind, short ``cfn`` commands: cfn.cli.served).

Starting ``python -m cfn agent run`` costs over a second of CPU, nearly all of
it importing the runtime, the provider SDKs and the MCP client. The agent
server imports them once; each builtin agent is then a ``fork()`` of it, which
takes milliseconds and shares the imported code copy-on-write.

One server per host and cfn checkout (its directory is keyed by the code's
location and the interpreter), started on demand by the process spawner through
:class:`cfn.system.daemon.Daemon`, reused by every task and state directory,
and gone after ``CFN_AGENT_SERVER_IDLE`` seconds without an agent. A server
whose code changed on disk (a ``git pull``, an edit) refuses further forks and
exits once its children are done; the next spawn starts a fresh one.

Wire format: :mod:`cfn.system.forkwire`, one connection per agent or command.

An agent's request (kind ``S``, with the agent's log and the spawner's ready
pipe) is ``{"spec": {...}, "env": {...}}``: what :mod:`cfn.agents.shim` is
asked to run and the agent's environment. The parent never reads a request: the
agent's environment carries its credentials, and whatever the parent's heap held
would be copied into every later agent's address space. For the same reason the
server starts with a scrubbed environment (:func:`server_environment`) and never
reads cfn's settings.

The child becomes the agent's supervisor (a session of its own, the log as
stdout and stderr, the agent's environment and workspace), which forks the agent
itself: no new Python for either. The agent, before any of its own code runs:
its own process group, the agent's cgroups joined, default signal handlers, and
``/proc/self/comm`` set to the agent's tag (its ``/proc/<pid>/environ`` is the
server's, so re-attaching recognises a forked agent by that tag). Then it does
in-process what ``cfn agent run --context FILE`` does
(``cfn.agents.runtime.run_agent``) and ``_exit``s with its status.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cfn.agents import shim
from cfn.errors import CfnError
from cfn.settings import Settings, early
from cfn.system import forkwire as wire
from cfn.system import sandbox
from cfn.system.daemon import Daemon, is_ours, record_of, wait_until
from cfn.system.unix import bind_unix, connect_unix

log = logging.getLogger(__name__)

SOCKET = early.SERVER_SOCKET
#: How the server is started: the CLI runs it, with the CLI's own kind of request.
SERVE_COMMAND = [sys.executable, "-m", "cfn", "agents", "server", "serve"]
#: What a forked child runs: (the client's connection, the descriptors it passed) -> exit code.
Child = Callable[[socket.socket, list[int]], int]
RECORD = "instance.json"
LOG = "server.log"
START_TIMEOUT = 60.0
#: Environment the server keeps (its own environ block is what every forked agent
#: can read in its memory and in /proc/<pid>/environ: nothing else goes in).
KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


# --- where and which -------------------------------------------------------------------------


def code_stamp(root: Path | None = None) -> str:
    """Changes whenever a module of cfn changes on disk (mtimes and sizes of its .py files)."""
    digest = hashlib.sha256()
    top = root or Path(early.package_dir())
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    digest.update(f"{path}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return digest.hexdigest()[:16]


def _private_dir(path: Path) -> None:
    """Create ``path`` (and its parent) 0700 and refuse one someone else owns or can enter."""
    for part in (path.parent, path):
        part.mkdir(mode=0o700, exist_ok=True)
        st = part.lstat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077 or not part.is_dir():
            raise CfnError(f"{part} is not a private directory of this user; not using it")


def server_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: locale and paths only, never a secret."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k in KEPT_ENV or k.startswith("PYTHON")}


# --- the spawner's side ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    socket: Path
    stamp: str
    started_at: float


class AgentServer:
    """Start, find and stop the agent server of this checkout."""

    def __init__(self, directory: Path, *, idle: float = 600.0, preload: bool = True) -> None:
        self.dir = directory
        self.daemon = Daemon(self.dir, record=RECORD, log=LOG)
        self.idle = idle
        #: False: a server that imports nothing ahead (its children import what they use;
        #: for tests of the lifecycle, which has nothing to do with what is preloaded).
        self.preload = preload

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentServer:
        return cls(settings.agent_server_dir, idle=settings.cfn_agent_server_idle)

    @property
    def socket(self) -> Path:
        return self.dir / SOCKET

    def running(self, stamp: str | None = None) -> ServerInfo | None:
        """The live server of this checkout (of this code, when ``stamp`` is given)."""
        data = self.daemon.read_record()
        pid, start = data.get("pid"), data.get("pid_start")
        if not is_ours(pid, start, _is_server_argv):
            return None
        if stamp is not None and data.get("stamp") != stamp:
            return None
        assert isinstance(pid, int)
        return ServerInfo(pid, self.socket, str(data.get("stamp")), float(data.get("at") or 0))

    def ensure(self, *, wait: bool = True) -> ServerInfo:
        """The server of this code, started first when there is none (or only a stale
        one); with ``wait``, once it takes requests (CfnError when it does not start)."""
        stamp = code_stamp()
        info = self.running(stamp)
        if info is None:
            _private_dir(self.dir)
            with self.daemon.locked():
                info = self.running(stamp) or self._launch(stamp)
        if wait and not _connectable(self.socket):
            pid = info.pid
            ready = wait_until(
                lambda: _connectable(self.socket),
                START_TIMEOUT,
                exited=lambda: self.running(stamp) is None,
            )
            if not ready:
                with contextlib.suppress(ProcessLookupError):
                    if self.running(stamp) is not None:
                        os.kill(pid, signal.SIGKILL)
                why = self.daemon.log_tail() or f"see {self.daemon.log_file}"
                raise CfnError(f"the agent server did not start: {why}")
        return info

    def _launch(self, stamp: str) -> ServerInfo:
        """Start a server (the lock held); it is recorded at once and ready moments later."""
        stale = self.running()
        if stale is not None:
            # Old code: it exits by itself once its children are done; no new ones.
            with contextlib.suppress(ProcessLookupError):
                os.kill(stale.pid, signal.SIGUSR1)
        self.socket.unlink(missing_ok=True)
        proc = self.daemon.spawn(
            [
                *SERVE_COMMAND,
                str(self.dir),
                repr(self.idle),
                *([] if self.preload else ["--no-preload"]),
            ],
            env=server_environment(),
            cwd="/",
        )
        now = time.time()
        self.daemon.write_record(record_of(proc.pid, stamp=stamp, at=now))
        # Detached and recorded: its exit is reaped by init, not by this process.
        proc.returncode = 0
        return ServerInfo(proc.pid, self.socket, stamp, now)

    def agents(self, pid: int) -> list[int]:
        """The agents the server ``pid`` forked that still run."""
        try:
            raw = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in raw.split()]

    def start(self) -> ServerInfo:
        """Start the server ahead of the first agent (``ensure`` does it on demand)."""
        return self.ensure()

    def start_background(self) -> None:
        """Start the server if it is not running, without waiting for it (what a plain
        ``cfn`` command does so that the next one is forked); never raises."""
        with contextlib.suppress(CfnError, OSError):
            self.ensure(wait=False)

    def stop(self, grace: float = 5.0) -> bool:
        """Stop the server (running agents keep running; their exit status is then lost)."""
        stopped = self.daemon.stop_recorded(grace)
        self.socket.unlink(missing_ok=True)
        self.daemon.clear_record()
        return stopped


def _is_server_argv(argv: list[str]) -> bool:
    return argv[1 : len(SERVE_COMMAND)] == SERVE_COMMAND[1:]


def _connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            connect_unix(probe, str(path))
        except OSError:
            return False
    return True


# --- the server ------------------------------------------------------------------------------


class Server:
    def __init__(self, directory: Path, idle: float, kinds: Mapping[bytes, Kind]) -> None:
        self.dir = directory
        self.idle = idle
        self.kinds = dict(kinds)
        self.stamp = code_stamp()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, socket.socket | None] = {}
        self.accepting = True
        self.inode = -1
        self.last_active = time.monotonic()
        wake_r, self.wake_w = os.pipe()
        self.wake_r = wake_r
        os.set_blocking(wake_r, False)
        os.set_blocking(self.wake_w, False)

    def open(self) -> None:
        path = self.dir / SOCKET
        path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            bind_unix(self.listener, str(path))
        finally:
            os.umask(old)
        self.inode = path.stat().st_ino
        self.listener.listen(64)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(signum, lambda *_: None)
        self.selector.register(self.wake_r, selectors.EVENT_READ, "signal")

    def serve(self) -> None:
        while self.accepting or self.children:
            timeout = None
            if self.accepting and not self.children:
                timeout = max(0.0, self.last_active + self.idle - time.monotonic())
            events = self.selector.select(timeout)
            if not events and self.accepting and not self.children:
                self.close_listener()  # idle for long enough
                continue
            for key, _mask in events:
                if key.data == "accept":
                    self.accept()
                elif key.data == "signal":
                    self.on_signals()
        self.close_listener()

    def close_listener(self) -> None:
        if self.accepting:
            self.accepting = False
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.listener)
            self.listener.close()
            with contextlib.suppress(OSError):
                # Only if it is still ours (a newer server may have bound the path).
                if (self.dir / SOCKET).stat().st_ino == self.inode:
                    (self.dir / SOCKET).unlink()

    def on_signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            received = os.read(self.wake_r, 512)
            if signal.SIGTERM in received or signal.SIGINT in received:
                raise SystemExit(0)
            if signal.SIGUSR1 in received:
                self.close_listener()  # replaced by a newer server: finish and go
        self.reap()

    def reap(self) -> None:
        while self.children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            self.last_active = time.monotonic()
            if conn is not None:
                line = wire.exit_line(status, usage.ru_utime, usage.ru_stime, usage.ru_maxrss)
                with contextlib.suppress(OSError):
                    conn.sendall(line)
                conn.close()

    def accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.last_active = time.monotonic()
        conn.settimeout(5.0)
        try:
            header, fds, _flags, _addr = socket.recv_fds(conn, 1, 4)
        except OSError:
            conn.close()
            return
        try:
            kind = self.kinds.get(header)
            if kind is None:
                self.refuse(conn, f"unknown request {header!r}")
            elif len(fds) != kind.fds:
                self.refuse(conn, f"expected {kind.fds} file descriptor(s) with {header!r}")
            elif code_stamp() != self.stamp:
                self.refuse(conn, "stale: cfn's code changed since this server started")
                self.close_listener()
            else:
                self.fork(conn, fds, kind.child)
        finally:
            for fd in fds:
                os.close(fd)

    def refuse(self, conn: socket.socket, reason: str) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(wire.error_line(reason))
        conn.close()

    def fork(self, conn: socket.socket, fds: list[int], child: Child) -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns (coverage cannot see it)
            code = 127
            try:
                self.leave()
                code = child(conn, fds)
            except KeyboardInterrupt:
                code = 130  # Ctrl-C relayed before the child got to its own handling
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.write(2, f"[cfn] not started: {exc!r}\n".encode())
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.children[pid] = conn
        with contextlib.suppress(OSError):
            conn.sendall(wire.pid_line(pid))

    def leave(self) -> None:
        """In a forked child: drop everything of the server's (signals, sockets, pipes)."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.selector.close()
        self.listener.close()
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        for other in self.children.values():
            if other is not None:
                other.close()
        # The server's objects stay frozen: collecting them would cost ~0.2 s and copy
        # every page they sit on into this child.


def supervisor_child(conn: socket.socket, fds: list[int]) -> int:
    """In the forked child: become the agent's supervisor (cfn.agents.shim), in a session
    of its own, with the agent's log as stdout and stderr; its agent is forked from it."""
    os.setsid()
    log_fd, ready_fd = fds
    request = wire.take_request(conn, log_fd)
    os.close(log_fd)
    spec = request.get("spec")
    if not isinstance(spec, dict):
        raise ValueError("malformed request: no spec")
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})
    os.chdir(str(spec["cwd"]))
    return shim.run(spec, ready_fd, become_agent)


def become_agent(supervisor: shim.Supervisor) -> None:
    """In the agent, forked from its supervisor: its own process group in the agent's
    cgroups (before any agent code runs), named by its tag, then what ``cfn agent run
    --context FILE --supervised`` does (``cfn.agents.runtime.run_agent``); never returns.

    The environment and working directory are the supervisor's, set from the request.
    """
    supervisor.leave_in_agent()
    spec = supervisor.spec
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(shim.comm_tag(str(spec["name"])))
    context = Path(str(spec["context"]))
    sys.argv = ["cfn", "agent", "run", "--context", str(context), "--supervised"]
    # As ``cfn agent run`` would: warnings and errors on stderr (the agent's log).
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)
    from cfn.agents.runtime import run_agent
    from cfn.settings import load_settings

    try:
        code, message = run_agent(context, load_settings(), supervised=True)
    except CfnError as exc:  # the settings themselves
        code, message = exc.exit_code, f"[ERROR] {exc}"
    if message:
        os.write(2, message.encode(errors="replace") + b"\n")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def preload() -> None:
    """What forked agents use, imported once by the server."""
    import mcp.client.session
    import mcp.client.streamable_http  # noqa: F401
    from redis.utils import get_lib_version

    import cfn.agents.claude_code
    import cfn.agents.mcp_tools
    import cfn.agents.runtime
    import cfn.providers.clients.anthropic_http  # the LLM gateway's, when forked from here
    import cfn.providers.clients.offline
    import cfn.providers.clients.openai_http
    import cfn.providers.gateway.client  # how an agent calls the LLM gateway
    import cfn.store.repository  # noqa: F401  (the LLM gateway records calls)

    # Cached once read (redis-py sends it on every connection): reading the package's
    # metadata costs each forked child ~3 ms otherwise.
    get_lib_version()
    # Whether bwrap works here, found once (~50 ms) for every agent forked later.
    sandbox.warm()


@dataclass(frozen=True)
class Kind:
    """One kind of request: how many file descriptors come with it, what the child runs."""

    fds: int
    child: Child


#: The agents' kind (their supervisors: the log and the ready pipe come with it); the
#: CLI adds its own (cfn.cli.served).
AGENT = {wire.SUPERVISOR: Kind(2, supervisor_child)}


def serve(directory: Path, idle: float, kinds: Mapping[bytes, Kind]) -> int:
    """Run the server (what ``cfn agents server serve`` does), preloaded by the caller."""
    # The imported code is shared by every fork: keep the collector from touching
    # (and so copying) those objects' pages in each child.
    gc.collect()
    gc.freeze()
    server = Server(directory, idle, kinds)
    server.open()
    log.warning("agent server %s ready on %s", os.getpid(), directory / SOCKET)
    try:
        server.serve()
    finally:
        server.close_listener()
    log.warning("agent server %s done", os.getpid())
    return 0
