"""Redis connections: a primary, an optional fallback, or a Sentinel-watched master.

This is the seed's ``RedisManager.withFallback``: an operation that fails on
the primary with a connection-level error is run again on the fallback, with
one warning logged at the switch. Unlike the seed, the manager then *stays* on
the fallback (it does not hammer a dead primary on every call) and only goes
back when the fallback fails in turn. When both fail the caller gets one
``RedisUnavailableError`` naming both URLs, passwords masked.

With Sentinel (``redis+sentinel://`` in REDIS_URL, or CFN_REDIS_SENTINELS) the
primary is whatever master the sentinels name, re-discovered on reconnect, so
the manager follows the master through a failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import ConstantBackoff
from redis.exceptions import (
    BusyLoadingError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cfn.errors import ConfigError, RedisUnavailableError

if TYPE_CHECKING:
    # Only for types: agents that just report a completion start without pydantic-settings.
    from cfn.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors that mean "this server cannot serve us now": worth the fallback.
FAILOVER_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    OSError,
)


def is_wrong_type(exc: BaseException) -> bool:
    """Whether Redis refused a command for the key's type (WRONGTYPE): what another
    writer of the key (an agent's user may write some of its task's keys) can cause."""
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


#: How long operations on a Sentinel-followed master wait for a failover to finish.
SENTINEL_FAILOVER_WINDOW = 30.0


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    master: str
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[user:pass@]h1:p1[,h2:p2]/master[/db]``."""
    rest = url.split("://", 1)[1]
    auth, _, hosts_and_path = rest.rpartition("@")
    hosts, _, path = hosts_and_path.partition("/")
    username = password = None
    if auth:
        user, _, pw = auth.partition(":")
        username, password = unquote(user) or None, unquote(pw) or None
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"sentinel URL {mask_url(url)}: {item!r} is not host:port")
        sentinels.append((host, int(port)))
    segments = [s for s in path.split("/") if s]
    if not segments:
        raise ConfigError(f"sentinel URL {mask_url(url)} names no master (…/mymaster)")
    db = 0
    if len(segments) > 1:
        if not segments[1].isdigit():
            raise ConfigError(f"sentinel URL {mask_url(url)}: db {segments[1]!r} is not a number")
        db = int(segments[1])
    return SentinelTarget(sentinels, segments[0], db, username, password)


def sentinel_url(
    sentinels: list[str], master: str, username: str | None = None, password: str | None = None
) -> str:
    """The ``redis+sentinel://`` URL of CFN_REDIS_SENTINELS (``host:port`` items) and
    the master's name, with the master's credentials: what agents are given."""
    auth = ""
    if username or password:
        auth = f"{quote(username or '', safe='')}:{quote(password or '', safe='')}@"
    return f"redis+sentinel://{auth}{','.join(sentinels)}/{master}"


async def sentinel_master_address(url: str, timeout: float = 5.0) -> tuple[str, int]:
    """The address the sentinels of ``url`` name for its master right now."""
    target = parse_sentinel_url(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        target.sentinels, sentinel_kwargs={"socket_connect_timeout": timeout}
    )
    try:
        host, port = await sentinel.discover_master(target.master)
    except RedisError as exc:
        raise RedisUnavailableError(
            f"no master {target.master!r} from the sentinels of {mask_url(url)}: {exc}"
        ) from None
    finally:
        for client in sentinel.sentinels:
            await client.aclose()
    return str(host), int(port)


class ConnectionSettings(Protocol):
    """What building a client reads: ``Settings`` has it, so do the seed's defaults."""

    @property
    def redis_connect_timeout(self) -> float: ...
    @property
    def redis_retry_delay_on_failover(self) -> float: ...
    @property
    def redis_max_retries_per_request(self) -> int: ...
    @property
    def redis_username(self) -> str: ...
    @property
    def redis_password(self) -> str: ...


@dataclass(frozen=True)
class _SeedDefaults:
    """The connection settings ``_client_options`` and friends read, at the seed's values."""

    redis_connect_timeout: float = 10.0
    redis_retry_delay_on_failover: float = 0.1
    redis_max_retries_per_request: int = 3
    redis_username: str = ""
    redis_password: str = ""


SEED_DEFAULTS = _SeedDefaults()


def _client_options(settings: ConnectionSettings) -> dict[str, Any]:
    return {
        "socket_connect_timeout": settings.redis_connect_timeout,
        # No read timeout: BLPOP and pub/sub waits block for as long as asked.
        "socket_timeout": None,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(
            ConstantBackoff(settings.redis_retry_delay_on_failover),
            settings.redis_max_retries_per_request,
        ),
        "decode_responses": True,
        # Values come from agents (a bash agent can LPUSH any bytes): bytes that are not
        # UTF-8 read as U+FFFD, which then fails validation, instead of crashing a reader.
        "encoding_errors": "replace",
    }


def _client_from_url(url: str, settings: ConnectionSettings) -> tuple[aioredis.Redis, int]:
    options = _client_options(settings)
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(
            f"unsupported Redis URL {mask_url(url)}: use redis://, rediss://, unix:// "
            "or redis+sentinel://"
        )
    if parts.username is None and settings.redis_username:
        options["username"] = settings.redis_username
    if parts.password is None and settings.redis_password:
        options["password"] = settings.redis_password
    try:
        client = aioredis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: {exc}") from None
    db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
    return client, db


class _SentinelMasterConnection(SentinelManagedConnection):
    """A connection to the Sentinel-named master that re-opens only through the sentinels.

    redis-py asks the sentinels when the pool hands out a closed connection, but
    its retry of a command whose connection was closed under it (as
    ``RedisManager`` closes every connection to a replaced master) re-opens the
    same connection at the address it last had: the replaced master, which may
    still answer for seconds. That connection then went back to the pool and
    served later reads from the old master with ``generation`` already bumped,
    so nothing told the reader (a collector judged an agent on a failure record
    only the old master held). Here every re-open asks the sentinels.
    (redis-py issue #3874, open as of redis-py 8.2.0; ``test_stale_master.py``
    ``test_a_command_retried_after_the_move_runs_on_the_new_master`` pins it.)
    """

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            # SentinelManagedConnection.connect: asks the sentinels for the master.
            await self.connect()  # type: ignore[no-untyped-call,unused-ignore]
        await super().send_packed_command(command, check_health)


def _client_from_sentinel(target: SentinelTarget, settings: ConnectionSettings) -> aioredis.Redis:
    options = _client_options(settings)
    options["connection_class"] = _SentinelMasterConnection
    username = target.username or settings.redis_username or None
    password = target.password or settings.redis_password or None
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        target.sentinels,
        sentinel_kwargs={"socket_connect_timeout": settings.redis_connect_timeout},
        **options,
    )
    client: aioredis.Redis = sentinel.master_for(
        target.master, db=target.db, username=username, password=password
    )
    return client


@dataclass
class _Member:
    label: str
    client: aioredis.Redis
    db: int
    #: Followed through a Sentinel: a failed master is replaced by a promoted replica.
    sentinel: bool = False
    #: The master address last seen in use (Sentinel only): a change means a failover.
    master: tuple[str, int] | None = None


class RedisManager:
    """Runs Redis operations on the active server, failing over when it dies."""

    def __init__(self, primary: _Member, fallback: _Member | None = None) -> None:
        self._members = [primary] + ([fallback] if fallback else [])
        self._active = 0
        #: Bumped at every switch between servers, so readers can start over.
        self.generation = 0
        #: Set (and replaced) when a Sentinel-followed master moves: wakes watchers.
        self._moved = asyncio.Event()
        #: Listens for the sentinels' ``+switch-master`` (started on first use).
        self._follower: asyncio.Task[None] | None = None
        self._follower_pubsub: Any = None
        self._closing = False

    # --- construction ---------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        settings: ConnectionSettings | None = None,
        fallback_url: str | None = None,
    ) -> RedisManager:
        if settings is None:
            # The seed's defaults (10 s connect timeout, 3 retries, 100 ms apart),
            # without reading the environment: an agent that only reports starts fast.
            settings = SEED_DEFAULTS
        primary = cls._member(url, settings, "primary")
        fallback = cls._member(fallback_url, settings, "fallback") if fallback_url else None
        return cls(primary, fallback)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisManager:
        """Primary from REDIS_URL / CFN_REDIS_SENTINELS, else the embedded redis-server."""
        if settings.cfn_redis_sentinels:
            target = SentinelTarget(
                [
                    (h, int(p))
                    for h, _, p in (s.rpartition(":") for s in settings.cfn_redis_sentinels)
                ],
                settings.cfn_redis_sentinel_master,
                0,
                None,
                None,
            )
            label = "sentinel " + ",".join(settings.cfn_redis_sentinels) + f"/{target.master}"
            primary = _Member(label, _client_from_sentinel(target, settings), 0, sentinel=True)
        elif settings.redis_url:
            primary = cls._member(settings.redis_url, settings, "primary")
        else:
            from cfn.coordination.embedded import EmbeddedRedis

            url = EmbeddedRedis(settings).ensure_running()
            client, db = _client_from_url(url, settings)
            primary = _Member(mask_url(url), client, db)
        fallback = (
            cls._member(settings.redis_fallback_1, settings, "fallback")
            if settings.redis_fallback_1
            else None
        )
        return cls(primary, fallback)

    @staticmethod
    def _member(url: str, settings: ConnectionSettings, _role: str) -> _Member:
        if url.startswith("redis+sentinel://"):
            target = parse_sentinel_url(url)
            client = _client_from_sentinel(target, settings)
            return _Member(mask_url(url), client, target.db, sentinel=True)
        client, db = _client_from_url(url, settings)
        return _Member(mask_url(url), client, db)

    # --- use ---------------------------------------------------------------------------

    @property
    def client(self) -> aioredis.Redis:
        """The server operations currently go to."""
        return self._members[self._active].client

    @property
    def db(self) -> int:
        return self._members[self._active].db

    @property
    def active_label(self) -> str:
        return self._members[self._active].label

    @property
    def has_fallback(self) -> bool:
        return len(self._members) > 1

    @property
    def follows_sentinel(self) -> bool:
        """The active server is a master named by Sentinel (it can move under us)."""
        return self._members[self._active].sentinel

    async def _note_master(self, member: _Member) -> bool:
        """Follow a Sentinel member's pool to another master: True when it moved.

        Connections still open to the old master (in use when redis-py saw the
        change, so it left them) are closed: a command in flight on one is retried
        on the new master, a subscription re-subscribes there. ``generation`` is
        bumped so readers start over.
        """
        if not member.sentinel:
            return False
        pool = member.client.connection_pool
        address = getattr(pool, "master_address", None)
        if address is None or address == member.master:
            return False
        moved = member.master is not None
        member.master = (str(address[0]), int(address[1]))
        if moved:
            self.generation += 1
            log.warning("Redis master moved to %s:%d (Sentinel failover)", *member.master)
            self._moved.set()
            self._moved = asyncio.Event()
            with contextlib.suppress(RedisError, OSError):  # closing is all we want of them
                await pool.disconnect(inuse_connections=True)
        return moved

    def moved_event(self) -> asyncio.Event:
        """An event set when the Sentinel-followed master next moves.

        A subscription on the old master hears nothing of what the new one takes
        (and a node that becomes a replica gets its data in a full resync, which
        publishes no keyspace events), so watchers re-subscribe when it is set.
        """
        return self._moved

    def _start_follower(self) -> None:
        """Follow the sentinels' ``+switch-master`` announcements (Sentinel only)."""
        if self._closing or (self._follower is not None and not self._follower.done()):
            return
        member = self._members[0]
        if not member.sentinel:
            return
        self._follower = asyncio.get_running_loop().create_task(self._follow(member))

    async def _follow(self, member: _Member) -> None:
        pool = member.client.connection_pool
        manager = getattr(pool, "sentinel_manager", None)
        name = str(getattr(pool, "service_name", ""))
        if manager is None or not name:
            return
        delay = 0.1
        while not self._closing:
            for sentinel in list(manager.sentinels):
                if self._closing:
                    return
                # Its own client without redis-py's retries: a dropped subscription must
                # end here (and close() must be able to end it), not be silently redone.
                kw = sentinel.connection_pool.connection_kwargs
                client = aioredis.Redis(
                    host=kw.get("host", "localhost"),
                    port=kw.get("port", 26379),
                    username=kw.get("username"),
                    password=kw.get("password"),
                    socket_connect_timeout=kw.get("socket_connect_timeout"),
                    retry=Retry(ConstantBackoff(0), 0),
                )
                pubsub = client.pubsub()
                self._follower_pubsub = pubsub
                try:
                    await pubsub.subscribe("+switch-master")
                    # A move may have happened before the subscription: look once.
                    await self.confirm_master()
                    delay = 0.1
                    while not self._closing:
                        message = await pubsub.get_message(timeout=None)
                        if message is None or message.get("type") != "message":
                            continue
                        data = message.get("data")
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        if text.split(" ", 1)[0] == name:
                            await self.confirm_master()
                except (RedisError, OSError) as exc:
                    if not self._closing:
                        log.debug("sentinel subscription lost: %s", _describe(exc))
                finally:
                    self._follower_pubsub = None
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
                    with contextlib.suppress(RedisError, OSError):
                        await client.aclose()
            if not self._closing:
                await asyncio.sleep(delay)  # no sentinel answers: back off, then try again
                delay = min(delay * 2, 2.0)

    def _sentinel_pool(self) -> Any:
        """The active server's connection pool when a Sentinel names it, else None."""
        member = self._members[self._active]
        return member.client.connection_pool if member.sentinel else None

    async def expects_replica(self) -> bool:
        """Whether the sentinels count a live replica of the master (Sentinel only).

        A master with no replica connected while the sentinels know one is up (a
        node re-attaching after a failover, or a replaced master not yet turned
        into a replica) holds writes that one more failure would lose.
        """
        pool = self._sentinel_pool()
        manager = getattr(pool, "sentinel_manager", None)
        if manager is None:
            return False
        try:
            replicas = await manager.discover_slaves(getattr(pool, "service_name", ""))
        except (RedisError, OSError):
            return False
        return bool(replicas)

    async def confirm_master(self, window: float = SENTINEL_FAILOVER_WINDOW) -> bool:
        """Make sure operations go to the master the Sentinel names *now*.

        After a failover the old master may still accept commands for a while
        (until the Sentinel turns it into a replica, when what it took since is
        lost), and pooled connections stay on it. Before a conclusion drawn from
        a *missing* key (an agent never reported) call this: it asks the
        sentinels (waiting out a failover in progress, up to ``window`` seconds),
        closes connections to a replaced master and bumps ``generation`` so
        readers start over. Returns whether the master moved. Without Sentinel it
        does nothing and returns False.
        """
        pool = self._sentinel_pool()
        get_master = getattr(pool, "get_master_address", None)
        if get_master is None:
            return False
        # While a failover is under way the sentinels name no healthy master (the old
        # one is flagged down until the promotion is done): wait for it to settle.
        deadline = time.monotonic() + window
        delay = 0.05
        while True:
            try:
                await get_master()
                break
            except (RedisError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    log.warning("the sentinels name no master: %s", _describe(exc))
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        return await self._note_master(self._members[self._active])

    async def connect(self) -> None:
        """Connect now rather than on first use (REDIS_LAZY_CONNECT=false)."""
        await self.run(lambda r: r.ping())

    async def run(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``operation`` on the active server; on failure, on the other one.

        A Sentinel-followed master that fails is given SENTINEL_FAILOVER_WINDOW to
        be replaced (the Sentinel notices the death, then promotes a replica: a few
        seconds), trying again with backoff, before the failure is reported.
        """
        if self._follower is None and self._members[0].sentinel:
            # Know the master before the first operation connects: noted only after it
            # returned, a failover meanwhile (its connection on the old master) would let
            # the follower's first look record the *new* master as the first one: no move
            # seen, ``generation`` unchanged, watchers on the old master not told. No
            # wait here if no sentinel answers: the operation waits (the window below).
            await self.confirm_master(window=0)
            self._start_follower()
        deadline: float | None = None
        delay = 0.1
        while True:
            try:
                return await self._run_once(operation)
            except RedisUnavailableError:
                if not any(m.sentinel for m in self._members):
                    raise
                now = time.monotonic()
                deadline = deadline or now + SENTINEL_FAILOVER_WINDOW
                if now + delay > deadline:
                    raise
                if delay == 0.1:
                    log.warning("Redis master unreachable; waiting for the Sentinel's failover")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _run_once(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        errors: list[tuple[str, BaseException]] = []
        order = [self._active] + [i for i in range(len(self._members)) if i != self._active]
        for index in order:
            member = self._members[index]
            try:
                result = await operation(member.client)
            except FAILOVER_ERRORS as exc:
                errors.append((member.label, exc))
                continue
            if member.sentinel:  # nothing to follow otherwise (and this is every operation)
                await self._note_master(member)
            if index != self._active:
                failed = self._members[self._active]
                log.warning(
                    "Redis %s failed (%s); using %s from now on",
                    failed.label,
                    _describe(errors[0][1]),
                    member.label,
                )
                self._active = index
                self.generation += 1
            return result
        raise RedisUnavailableError(
            "Redis unavailable: "
            + "; ".join(f"{label} ({_describe(exc)})" for label, exc in errors)
            + ". Check that the server runs (`cfn redis status` for the embedded one) "
            "and that REDIS_URL / REDIS_FALLBACK_1 point at it."
        )

    def report_failure(self, client: aioredis.Redis, exc: BaseException) -> None:
        """A long-lived user (a subscriber) saw ``client`` die: move to the other one."""
        if len(self._members) < 2 or client is not self.client:
            return
        failed = self._members[self._active]
        self._active = (self._active + 1) % len(self._members)
        self.generation += 1
        log.warning(
            "Redis %s failed (%s); using %s from now on",
            failed.label,
            _describe(exc),
            self._members[self._active].label,
        )

    async def close(self) -> None:
        self._closing = True
        follower, self._follower = self._follower, None
        if follower is not None:
            # Cancelling alone is not enough: a cancellation can be lost inside
            # redis-py's reads, and the process would then hang at exit. Closing the
            # subscription's connection ends the read; the flag ends the loop.
            pubsub = self._follower_pubsub
            connection = getattr(pubsub, "connection", None)
            if connection is not None:
                with contextlib.suppress(RedisError, OSError):
                    await connection.disconnect(nowait=True)
            follower.cancel()
            with contextlib.suppress(RuntimeError, ValueError):
                _done, pending = await asyncio.wait({follower}, timeout=5.0)
                if pending:
                    log.warning("the Sentinel follower did not stop within 5 s")
        for member in self._members:
            await member.client.aclose()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."
