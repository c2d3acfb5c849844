"""httpcore connection pools per endpoint, split into small shards.

Why per endpoint: a cluster's limits are enforced by ``ClusterState`` already, an endpoint's
expected peer identity belongs to its pool's network backend, and a pool never mixes
endpoints. Why shards: httpcore's per-request pool bookkeeping walks every request and
connection of its pool, so its cost grows with the square of the connections in one pool
(encode/httpx#3215, DESIGN.md section 7). Requests go to the least busy shard of at most
``shard_size`` connections; a new shard opens only when every shard is full.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import httpcore

__all__ = [
    "DEFAULT_KEEPALIVE_EXPIRY",
    "DEFAULT_MAX_SHARDS",
    "DEFAULT_SHARD_SIZE",
    "AsyncPools",
    "PoolKey",
    "SyncPools",
]

DEFAULT_SHARD_SIZE = 2
"""Connections per httpcore pool: small enough to keep its bookkeeping flat (bench_http)."""
DEFAULT_MAX_SHARDS = 128
"""Per endpoint: 256 connections; further requests wait inside the least busy shard."""
DEFAULT_KEEPALIVE_EXPIRY = 5.0
"""httpx's default idle keep-alive."""

PoolKey = tuple[bytes, str, int, Hashable]
"""(scheme, address, port, TLS identity: None plaintext, context and peers for mTLS)."""

_P = TypeVar("_P", httpcore.ConnectionPool, httpcore.AsyncConnectionPool)


class _Group(Generic[_P]):
    """The shards of one endpoint with their in-flight counts (a lease is a shard index)."""

    __slots__ = ("busy", "factory", "shards")

    def __init__(self, factory: Callable[[], _P]) -> None:
        self.factory: Callable[[], _P] = factory
        self.shards: list[_P] = []
        self.busy: list[int] = []


class _Pools(Generic[_P]):
    __slots__ = ("_groups", "_lock", "closed", "max_shards", "shard_size")

    def __init__(self, shard_size: int, max_shards: int) -> None:
        self.shard_size = max(1, shard_size)
        self.max_shards = max(1, max_shards)
        self._groups: dict[PoolKey, _Group[_P]] = {}
        self._lock = threading.Lock()
        self.closed = False

    def acquire(
        self, key: PoolKey, factory: Callable[[PoolKey], Callable[[], _P]]
    ) -> tuple[_Group[_P], int]:
        """A shard for one request; give it back with ``release`` when its response ends.

        ``factory(key)`` makes the shard factory of a new group (called once per group).
        """
        with self._lock:
            if self.closed:
                raise RuntimeError("the mesh transport is closed")
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(factory(key))
            busy = group.busy
            best = -1
            lowest = self.shard_size
            for index, count in enumerate(busy):  # a handful of shards
                if count < lowest:
                    best, lowest = index, count
            if best < 0:
                if len(busy) < self.max_shards:
                    group.shards.append(group.factory())
                    busy.append(0)
                    best = len(busy) - 1
                else:
                    best = min(range(len(busy)), key=busy.__getitem__)
            busy[best] += 1
            return group, best

    def release(self, group: _Group[_P], index: int) -> None:
        with self._lock:
            group.busy[index] -= 1

    def take_all(self) -> list[_P]:
        with self._lock:
            self.closed = True
            pools = [pool for group in self._groups.values() for pool in group.shards]
            self._groups = {}
            return pools

    def retire(self, keep: Callable[[PoolKey], bool]) -> list[_P]:
        """Idle shards of groups ``keep`` rejects (e.g. an SSLContext that rotated away)."""
        idle: list[_P] = []
        with self._lock:
            for key in [k for k in self._groups if not keep(k)]:
                group = self._groups[key]
                if not any(group.busy):
                    idle.extend(group.shards)
                    del self._groups[key]
        return idle

    def connection_count(self) -> int:
        with self._lock:
            return sum(len(p.connections) for g in self._groups.values() for p in g.shards)


class SyncPools(_Pools[httpcore.ConnectionPool]):
    def new_pool(
        self,
        ssl_context: ssl.SSLContext | None,
        backend: httpcore.NetworkBackend | None,
        keepalive_expiry: float,
    ) -> Callable[[], httpcore.ConnectionPool]:
        size = self.shard_size

        def factory() -> httpcore.ConnectionPool:
            return httpcore.ConnectionPool(
                ssl_context=ssl_context,
                max_connections=size,
                max_keepalive_connections=size,
                keepalive_expiry=keepalive_expiry,
                http1=True,
                http2=False,
                network_backend=backend,
            )

        return factory

    def close(self) -> None:
        for pool in self.take_all():
            pool.close()


class AsyncPools(_Pools[httpcore.AsyncConnectionPool]):
    def new_pool(
        self,
        ssl_context: ssl.SSLContext | None,
        backend: httpcore.AsyncNetworkBackend | None,
        keepalive_expiry: float,
    ) -> Callable[[], httpcore.AsyncConnectionPool]:
        size = self.shard_size

        def factory() -> httpcore.AsyncConnectionPool:
            return httpcore.AsyncConnectionPool(
                ssl_context=ssl_context,
                max_connections=size,
                max_keepalive_connections=size,
                keepalive_expiry=keepalive_expiry,
                http1=True,
                http2=False,
                network_backend=backend,
            )

        return factory

    async def aclose(self) -> None:
        for pool in self.take_all():
            await pool.aclose()
