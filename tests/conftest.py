from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cfn.coordination.connection import RedisManager
from cfn.settings import Settings
from tests.support.cgroups import private_cgroups
from tests.support.runlog import RunLog, keep_failure_files, measured
from tests.support.servers import RedisServer

CFN = [sys.executable, "-m", "cfn"]

#: Session fixtures too costly to start once per pytest-xdist worker: the tests using
#: them share one worker (`make test` runs ``--dist loadgroup``).
SHARED_SESSION_FIXTURES = {"stack": "mcp-stack"}


#: Test paths whose tests need cfn's container images (tests/deploy/conftest.py engine).
IMAGE_PATHS = ("tests/deploy", "tests/health")
_image_build: threading.Thread | None = None


def _build_images_early() -> None:
    """The image build, off the critical path: see pytest_configure."""
    from cfn.system.podman import connect
    from tests.deploy.conftest import build_images, image_settings

    settings = image_settings()
    started = time.monotonic()
    try:
        client = connect(settings)
        try:
            build_images(settings, client)
        finally:
            client.close()
    except Exception as exc:  # the engine fixture builds again and reports the error
        if _run_log is not None:
            _run_log.write("images", error=str(exc)[:300])
        return
    if _run_log is not None:
        _run_log.write("images", seconds=round(time.monotonic() - started, 1))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, the controller builds cfn's images in the background at once.

    The build (debootstrap, wheels, three images: minutes on a fresh machine) used to
    happen in the first worker that needed an image, while every other worker needing
    one waited on its lock. Started here, it overlaps the rest of the suite; the
    workers' ``engine`` fixture then waits on the same lock only if it is not done.
    """
    global _image_build, _podman_was_running
    if hasattr(config, "workerinput"):
        return
    _podman_was_running = _podman_running()
    _start_agent_server()
    if not config.getoption("numprocesses", None):
        return
    root = Path(__file__).resolve().parent.parent
    paths = [Path(a.split("::")[0]).resolve() for a in config.args] or [root / "tests"]
    wanted = [root / p for p in IMAGE_PATHS]
    if any(p in w.parents or p == w or w in p.parents for p in paths for w in wanted):
        _image_build = threading.Thread(target=_build_images_early, daemon=True)
        _image_build.start()


def _start_agent_server() -> None:
    """Start the agent server the tests' ``cfn`` subprocesses fork from (this checkout's
    default one: ``cfn_env`` leaves no CFN_ variable), without waiting. Started here, it
    is up when the first tests run, instead of their first commands each running plain
    (about a CPU-second apiece) while the first of them starts it."""
    from cfn.agents.forkserver import AgentServer
    from cfn.settings import early
    from tests.support.servers import outside_env

    path = early.launcher_socket(outside_env())
    if path is not None:
        AgentServer(Path(path).parent).start_background()


_run_log: RunLog | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    """The controlling process keeps a record of the run (tests/support/runlog.py)."""
    global _run_log
    if not hasattr(session.config, "workerinput"):
        try:
            _run_log = RunLog(session.config)
        except OSError:  # a read-only home: the run goes on unrecorded
            _run_log = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    yield from measured(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    yield from measured(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield from measured(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    """A failed test's files are kept outside its temporary folder (runlog.py)."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed:
        kept = keep_failure_files(item, report)
        if kept is not None:
            report.sections.append(("kept files", str(kept)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _run_log is not None:
        _run_log.report(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _run_log is not None:
        _run_log.finish(int(exitstatus))
    if not hasattr(session.config, "workerinput"):
        _stop_test_gateways(session.config)


def _stop_test_gateways(config: pytest.Config) -> None:
    """The LLM gateways the run's tests started (every loop with agents starts one) end
    with the run, whatever environment started them; each records itself under its
    test's state directory (.cfn/llm-gateway/instance.json)."""
    from cfn.system.instances import llm_gateway_daemon

    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    for record in base.glob("**/llm-gateway/instance.json"):
        try:
            llm_gateway_daemon(record.parent.parent).stop_recorded(5.0)
        except OSError:
            continue


def pytest_unconfigure(config: pytest.Config) -> None:
    if _image_build is not None:
        _image_build.join()
    if not hasattr(config, "workerinput") and _podman_was_running is False:
        _stop_podman()


#: Whether the checkout's podman service ran before this run (None: not known).
_podman_was_running: bool | None = None


def _podman_running() -> bool | None:
    from cfn.system.podman import PodmanService
    from tests.deploy.conftest import image_settings

    try:
        return PodmanService(image_settings()).pid() is not None
    except Exception:  # no podman here: nothing to stop afterwards either
        return None


def _stop_podman() -> None:
    """The podman service this run started goes with it (it runs with --time=0: a fresh
    clone's service, left behind, would burn CPU on this machine for good)."""
    from cfn.system.podman import PodmanService
    from tests.deploy.conftest import image_settings

    with contextlib.suppress(Exception):
        PodmanService(image_settings()).stop()


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the tests of one expensive fixture on one xdist worker, so it is built once.

    A module-scoped fixture (the security corpora run every case in their setup) would
    otherwise be set up again on each worker that gets one of the module's tests.
    """
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        group = None
        for name in info.names_closure:
            defs = info.name2fixturedefs.get(name)
            if not defs:
                continue
            if defs[-1].scope == "module":
                group = item.nodeid.split("::", 1)[0]
                break
            if defs[-1].scope == "session" and name in SHARED_SESSION_FIXTURES:
                group = SHARED_SESSION_FIXTURES[name]
                break
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", autouse=True)
def _private_cgroups() -> Iterator[None]:
    """Agents' cgroups are private to this pytest process (see tests/support/cgroups.py)."""
    with private_cgroups(f"cfn-tests-{os.getpid()}"):
        yield


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's REDIS_URL etc.; state goes to tmp_path."""
    for name in list(os.environ):
        if name.startswith(("REDIS_", "CFN_", "DATABASE_URL", "DB_PATH")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CFN_STATE_DIR", str(tmp_path / ".cfn"))
    # An LLM gateway a test starts on first need (every loop with agents does) goes
    # away soon after its test; the default is an hour.
    monkeypatch.setenv("CFN_LLM_GATEWAY_IDLE", "20")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fallback(tmp_path: Path) -> Iterator[RedisServer]:
    """A second redis-server, for REDIS_FALLBACK_1."""
    server = RedisServer(tmp_path / "fallback").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(cfn_state_dir=tmp_path / ".cfn")


@pytest.fixture
async def manager(redis_server: RedisServer, settings: Settings) -> AsyncIterator[RedisManager]:
    mgr = RedisManager.from_url(redis_server.url, settings)
    try:
        yield mgr
    finally:
        await mgr.close()
