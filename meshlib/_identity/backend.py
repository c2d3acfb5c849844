"""httpcore network backends that present the current SVID and check the peer's SPIFFE ID.

The check sits in ``start_tls``, once per connection, so a request is never written to a peer with
the wrong identity (a check after the response would already have sent it; PLUMBING-NOTES §3b).
The ``ssl_context`` httpcore passes is replaced by the identity's current one: that is how a pool
built before a rotation opens its next connection with the new certificate.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from typing import Any

import httpcore

from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.tls import PeerPolicy, PeerRejected

# httpcore's interface fixes the ``timeout`` parameters of these async methods.
# ruff: noqa: ASYNC109

__all__ = ["AsyncMeshNetworkBackend", "MeshNetworkBackend", "PolicyLookup", "pool_ssl_context"]

PolicyLookup = Callable[[str | None], PeerPolicy | None]
"""Maps the SNI name to what the peer must present; ``None`` means the identity's trust domain."""


def pool_ssl_context() -> ssl.SSLContext:
    """A context for the pool's ``ssl_context=`` argument; the backend never uses it.

    httpcore calls ``set_alpn_protocols`` on the pool's context at every connect. Handing it the
    identity's shared context would mutate a context in use, so give each pool its own dummy.
    """
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class _Checker:
    __slots__ = ("_identity", "_lock", "_lookup", "handshakes", "http2", "rejected")

    def __init__(
        self, identity: RotatingIdentity, lookup: PolicyLookup | None, http2: bool
    ) -> None:
        self._identity = identity
        self._lookup = lookup
        self._lock = threading.Lock()
        self.http2 = http2
        self.handshakes = 0
        self.rejected = 0

    def context(self) -> ssl.SSLContext:
        return self._identity.current_client_context(self.http2)

    def verify(self, ssl_object: Any, server_hostname: str | None) -> None:
        policy = self._lookup(server_hostname) if self._lookup is not None else None
        if policy is None:
            policy = self._identity.peer_policy()
        der = ssl_object.getpeercert(True) if ssl_object is not None else None
        try:
            policy.check(der, peer=f"server {server_hostname or '(no SNI)'}")
        except PeerRejected as error:
            with self._lock:
                self.rejected += 1
            raise httpcore.ConnectError(str(error)) from error
        with self._lock:
            self.handshakes += 1


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, checker: _Checker) -> None:
        self._inner = inner
        self._checker = checker

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(self._checker.context(), server_hostname, timeout)
        try:
            self._checker.verify(stream.get_extra_info("ssl_object"), server_hostname)
        except httpcore.ConnectError:
            stream.close()
            raise
        return stream

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, checker: _Checker) -> None:
        self._inner = inner
        self._checker = checker

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.start_tls(self._checker.context(), server_hostname, timeout)
        try:
            self._checker.verify(stream.get_extra_info("ssl_object"), server_hostname)
        except httpcore.ConnectError:
            await stream.aclose()
            raise
        return stream

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class MeshNetworkBackend(httpcore.NetworkBackend):
    """For ``httpcore.ConnectionPool(network_backend=...)``; ``http2`` must match the pool's."""

    def __init__(
        self,
        identity: RotatingIdentity,
        *,
        http2: bool = False,
        policy_for: PolicyLookup | None = None,
        inner: httpcore.NetworkBackend | None = None,
    ) -> None:
        self._checker = _Checker(identity, policy_for, http2)
        self._inner = inner or httpcore.SyncBackend()

    @property
    def handshakes(self) -> int:
        """Handshakes whose peer passed the identity check."""
        return self._checker.handshakes

    @property
    def rejected(self) -> int:
        return self._checker.rejected

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(stream, self._checker)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        return _Stream(
            self._inner.connect_unix_socket(path, timeout, socket_options), self._checker
        )

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class AsyncMeshNetworkBackend(httpcore.AsyncNetworkBackend):
    """The async twin of :class:`MeshNetworkBackend` (anyio underneath, asyncio or trio)."""

    def __init__(
        self,
        identity: RotatingIdentity,
        *,
        http2: bool = False,
        policy_for: PolicyLookup | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._checker = _Checker(identity, policy_for, http2)
        self._inner = inner or httpcore.AnyIOBackend()

    @property
    def handshakes(self) -> int:
        return self._checker.handshakes

    @property
    def rejected(self) -> int:
        return self._checker.rejected

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _AsyncStream(stream, self._checker)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return _AsyncStream(stream, self._checker)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
