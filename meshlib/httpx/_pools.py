"""Keep-alive HTTP/1.1 connections per endpoint: httpcore connections in our own idle lists.

Why not ``httpcore.ConnectionPool``: its per-request bookkeeping walks every request and
connection of the pool (cost grows with the square of the connections: encode/httpx#3215,
DESIGN.md section 7) and costs 40–60 µs per request even with a single connection on the
bench machine — more than the whole mesh flow. A mesh transport needs less from a pool: the
cluster's limits are enforced by ``ClusterState`` before a request gets here, the endpoint is
chosen already, and the connections of one endpoint are interchangeable. So a pool here is a
LIFO list of idle ``httpcore.HTTPConnection`` objects (TLS, SNI and HTTP/1.1 stay httpcore's):
take the warmest one that the server has not hung up, or open a new one; put it back when its
response ends. Lists are used without a lock: ``list.pop``/``append`` are atomic.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import httpcore

from meshlib._model.commands import ConnectionSettings

__all__ = [
    "DEFAULT_KEEPALIVE_EXPIRY",
    "DEFAULT_MAX_IDLE",
    "AsyncPools",
    "Lease",
    "PoolKey",
    "SyncPools",
    "connector",
]

DEFAULT_KEEPALIVE_EXPIRY = 5.0
"""httpx's default idle keep-alive; a DestinationRule ``idleTimeout`` can only shorten it."""
DEFAULT_MAX_IDLE = 256
"""Idle connections kept per endpoint; one more is closed when its response ends."""

PoolKey = tuple[bytes, str, int, Hashable, ConnectionSettings]
"""(scheme, address, port, TLS: None plaintext, else what selects the context, the cluster's
connection settings)."""

_C = TypeVar("_C", httpcore.HTTPConnection, httpcore.AsyncHTTPConnection)


class Lease(Generic[_C]):
    """One open connection and its use count; lives as long as the connection."""

    __slots__ = ("connection", "group", "uses")

    def __init__(self, connection: _C, group: _Group[_C]) -> None:
        self.connection: _C = connection
        self.group: _Group[_C] = group
        self.uses = 0


class _Group(Generic[_C]):
    """The connections of one pool key."""

    __slots__ = ("connect", "idle", "leases", "max_uses")

    def __init__(self, connect: Callable[[], _C], max_uses: int) -> None:
        self.connect: Callable[[], _C] = connect
        self.max_uses = max_uses
        self.idle: list[Lease[_C]] = []
        self.leases: set[Lease[_C]] = set()
        """Every open connection, idle or busy (changed under the pools' lock)."""


class _Pools(Generic[_C]):
    __slots__ = ("_groups", "_lock", "closed", "max_idle")

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max(0, max_idle)
        self._groups: dict[PoolKey, _Group[_C]] = {}
        self._lock = threading.Lock()
        self.closed = False

    def _group(self, key: PoolKey, factory: Callable[[PoolKey], Callable[[], _C]]) -> _Group[_C]:
        group = self._groups.get(key)
        if group is not None:
            return group
        connect = factory(key)  # may build an SSLContext: outside the lock
        with self._lock:
            if self.closed:
                raise RuntimeError("the mesh transport is closed")
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(connect, key[4].max_requests_per_connection)
            return group

    def _take(self, group: _Group[_C], stale: list[_C]) -> Lease[_C]:
        """The warmest idle connection still usable, or a new one; unusable ones go to ``stale``."""
        if self.closed:
            raise RuntimeError("the mesh transport is closed")
        idle = group.idle
        if len(idle) > 1 and idle[0].connection.has_expired():
            # The coldest one too: connections below the top of the stack are checked at
            # least as often as the endpoint is used, as httpcore's pool does.
            self._forget(idle[0], stale)
        while idle:
            try:
                lease = idle.pop()
            except IndexError:  # another thread took the last one
                break
            if lease.connection.has_expired():  # idle too long, or the server hung up
                self._forget(lease, stale)
                continue
            lease.uses += 1
            return lease
        lease = Lease(group.connect(), group)
        with self._lock:
            group.leases.add(lease)
        lease.uses = 1
        return lease

    def put_back(self, lease: Lease[_C]) -> _C | None:
        """After the response ended: keep the connection, or return it to be closed (no I/O:
        ``release`` closes it; an async caller may close it under its own shield)."""
        group = lease.group
        connection = lease.connection
        if (
            connection.is_idle()
            and not connection.is_closed()  # is_idle() is also True after a failed connect
            and not self.closed
            and (group.max_uses == 0 or lease.uses < group.max_uses)
            and len(group.idle) < self.max_idle
        ):
            group.idle.append(lease)
            return None
        stale: list[_C] = []
        self._forget(lease, stale)
        return stale[0] if stale else None

    def _forget(self, lease: Lease[_C], stale: list[_C]) -> None:
        group = lease.group
        with self._lock:
            if lease not in group.leases:
                return  # already forgotten by another thread
            group.leases.discard(lease)
            with contextlib.suppress(ValueError):  # it was busy, not idle
                group.idle.remove(lease)
        if not lease.connection.is_closed():
            stale.append(lease.connection)

    def _take_all(self) -> list[_C]:
        with self._lock:
            self.closed = True
            idle = [lease.connection for group in self._groups.values() for lease in group.idle]
            # Busy connections close when their response ends (``put_back`` sees ``closed``).
            for group in self._groups.values():
                group.leases.difference_update(group.idle)
                group.idle.clear()
            return idle

    def connection_count(self) -> int:
        with self._lock:
            return sum(len(group.leases) for group in self._groups.values())


def connector(
    connection_class: type[_C],
    key: PoolKey,
    ssl_context: ssl.SSLContext | None,
    backend: httpcore.NetworkBackend | httpcore.AsyncNetworkBackend | None,
    keepalive_expiry: float,
) -> Callable[[], _C]:
    """What opens a new connection of one pool key (HTTP/1.1, the key's TLS and idle limit)."""
    origin = httpcore.Origin(key[0], key[1].encode("ascii"), key[2])
    idle_timeout = key[4].idle_timeout
    if idle_timeout is not None and idle_timeout < keepalive_expiry:
        keepalive_expiry = idle_timeout

    def connect() -> _C:
        return connection_class(
            origin,
            ssl_context,
            keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend,  # type: ignore[arg-type]
        )

    return connect


class SyncPools(_Pools[httpcore.HTTPConnection]):
    def acquire(
        self,
        key: PoolKey,
        factory: Callable[[PoolKey], Callable[[], httpcore.HTTPConnection]],
    ) -> Lease[httpcore.HTTPConnection]:
        stale: list[httpcore.HTTPConnection] = []
        lease = self._take(self._group(key, factory), stale)
        for connection in stale:
            connection.close()
        return lease

    def release(self, lease: Lease[httpcore.HTTPConnection]) -> None:
        connection = self.put_back(lease)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        for connection in self._take_all():
            connection.close()


class AsyncPools(_Pools[httpcore.AsyncHTTPConnection]):
    async def acquire(
        self,
        key: PoolKey,
        factory: Callable[[PoolKey], Callable[[], httpcore.AsyncHTTPConnection]],
    ) -> Lease[httpcore.AsyncHTTPConnection]:
        stale: list[httpcore.AsyncHTTPConnection] = []
        lease = self._take(self._group(key, factory), stale)
        for connection in stale:
            await connection.aclose()
        return lease

    async def release(self, lease: Lease[httpcore.AsyncHTTPConnection]) -> None:
        connection = self.put_back(lease)
        if connection is not None:
            await connection.aclose()

    async def aclose(self) -> None:
        for connection in self._take_all():
            await connection.aclose()
