"""An httpcore network backend on asyncio's own readiness callbacks and a non-blocking socket.

httpcore's default async backend runs TLS through anyio's ``TLSStream``: a Python loop over
``ssl.MemoryBIO`` objects under anyio's stream and cancellation layers, several Python frames per
read and per write. Here the socket is a non-blocking ``ssl.SSLSocket``: OpenSSL
reads and writes the socket itself, and a read that would block waits for one readiness callback
(``loop.add_reader``). With 50 requests in flight on one client this takes about an eighth off the
client's CPU per request (``docs/performance.md``). Under any other event loop (trio, or one
without ``add_reader``) it hands the connection to httpcore's anyio backend.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import sniffio

from meshlib.httpx._sync_backend import (
    answer_may_wait,
    extra_info,
    try_handshake,
    try_read,
    try_write,
    wrap_tls,
)

# httpcore's interface fixes the ``timeout`` parameters of these async methods.
# ruff: noqa: ASYNC109

__all__ = ["AsyncioBackend"]


def _wake(future: asyncio.Future[bool], ready: bool) -> None:
    if not future.done():
        future.set_result(ready)


class AsyncioStream(httpcore.AsyncNetworkStream):
    __slots__ = ("_answer_due", "_fd", "_loop", "_reading", "_sock", "_writing")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock = sock
        self._loop = loop
        self._fd = sock.fileno()
        self._answer_due = False
        """A write came last: the next read waits before it tries (``SyncStream.read``)."""
        self._reading: asyncio.Future[bool] | None = None
        self._writing: asyncio.Future[bool] | None = None
        """The waits in progress: ``aclose`` (from another task) ends them."""

    async def _wait(self, write: bool, deadline: float | None) -> None:
        """Until the socket is writable (or readable); TimeoutError once ``deadline`` passed."""
        loop = self._loop
        future: asyncio.Future[bool] = loop.create_future()
        fd = self._fd
        if write:
            loop.add_writer(fd, _wake, future, True)
            self._writing = future
        else:
            loop.add_reader(fd, _wake, future, True)
            self._reading = future
        timer = None if deadline is None else loop.call_at(deadline, _wake, future, False)
        try:
            ready = await future
        finally:
            if timer is not None:
                timer.cancel()
            # Unless aclose took the registration away already (the descriptor may be reused).
            if write and self._writing is future:
                self._writing = None
                loop.remove_writer(fd)
            elif not write and self._reading is future:
                self._reading = None
                loop.remove_reader(fd)
        if not ready:
            raise TimeoutError

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else self._loop.time() + timeout

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        sock = self._sock
        deadline = None
        try:
            if self._answer_due:
                # The answer to a request is never there yet: waiting first spares OpenSSL's
                # want-read error, about 4 % of the client's CPU with 50 requests in flight.
                self._answer_due = False
                if answer_may_wait(sock, timeout):
                    deadline = self._deadline(timeout)
                    await self._wait(False, deadline)
            while True:
                wait = try_read(sock, max_bytes)
                if not isinstance(wait, bool):
                    return wait
                if deadline is None:
                    deadline = self._deadline(timeout)
                await self._wait(wait, deadline)
        except TimeoutError as error:
            raise httpcore.ReadTimeout("timed out") from error
        except OSError as error:  # ssl.SSLError included
            raise httpcore.ReadError(str(error)) from error

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        sock = self._sock
        deadline = None
        self._answer_due = True
        try:
            while view:
                wait = try_write(sock, view)
                if not isinstance(wait, bool):
                    view = wait
                    continue
                if deadline is None:
                    deadline = self._deadline(timeout)
                await self._wait(wait, deadline)
        except TimeoutError as error:
            raise httpcore.WriteTimeout("timed out") from error
        except OSError as error:
            raise httpcore.WriteError(str(error)) from error

    async def aclose(self) -> None:
        self._release()
        self._sock.close()

    def _release(self) -> None:
        """Take the socket out of the loop before it closes: a closed descriptor leaves epoll
        silently, so a task waiting on it would never wake, and the next socket given the same
        number would find it still registered. The waiting task wakes and fails its read."""
        loop = self._loop
        reading, writing = self._reading, self._writing
        self._reading = self._writing = None
        if reading is not None:
            loop.remove_reader(self._fd)
            _wake(reading, True)
        if writing is not None:
            loop.remove_writer(self._fd)
            _wake(writing, True)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        sock = self._sock
        try:
            sock = wrap_tls(sock, ssl_context, server_hostname)
            tls = AsyncioStream(sock, self._loop)
            deadline = tls._deadline(timeout)
            while (wait := try_handshake(sock)) is not None:
                await tls._wait(wait, deadline)
            return tls
        except TimeoutError as error:
            sock.close()
            raise httpcore.ConnectTimeout("timed out") from error
        except OSError as error:  # ssl.SSLError included: a refused certificate, a reset
            sock.close()
            raise httpcore.ConnectError(str(error)) from error
        except BaseException:  # cancelled mid-handshake: the socket is of no further use
            sock.close()
            raise

    def get_extra_info(self, info: str) -> Any:
        return extra_info(self._sock, info)


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's ``AsyncNetworkBackend`` for asyncio, over non-blocking (TLS) sockets."""

    def __init__(self) -> None:
        self._fallback: httpcore.AsyncNetworkBackend | None = None

    def _other(self) -> httpcore.AsyncNetworkBackend | None:
        """httpcore's anyio backend when the running loop is not asyncio's, else ``None``."""
        if sniffio.current_async_library() == "asyncio" and _has_readiness_callbacks():
            return None
        if self._fallback is None:
            self._fallback = httpcore.AnyIOBackend()
        return self._fallback

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        other = self._other()
        if other is not None:
            return await other.connect_tcp(host, port, timeout, local_address, socket_options)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                sock = await _connect(loop, host, port, local_address)
        except TimeoutError as error:
            raise httpcore.ConnectTimeout("timed out") from error
        except (OSError, UnicodeError) as error:  # UnicodeError: a name IDNA cannot encode
            raise httpcore.ConnectError(str(error)) from error
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
        except OSError as error:
            sock.close()
            raise httpcore.ConnectError(str(error)) from error
        return AsyncioStream(sock, loop)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        other = self._fallback or httpcore.AnyIOBackend()
        self._fallback = other
        return await other.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        other = self._other()
        if other is not None:
            await other.sleep(seconds)
        else:
            await asyncio.sleep(seconds)


def _has_readiness_callbacks() -> bool:
    # A proactor loop (Windows) has no add_reader; selector loops and uvloop have.
    proactor = getattr(asyncio, "ProactorEventLoop", None)
    return proactor is None or not isinstance(asyncio.get_running_loop(), proactor)


HAPPY_EYEBALLS_DELAY = 0.25
"""Seconds before the next address is tried alongside the ones still connecting (RFC 8305's
recommended delay, and anyio's)."""


async def _connect(
    loop: asyncio.AbstractEventLoop, host: str, port: int, local_address: str | None
) -> socket.socket:
    """The first connection up among the addresses ``host`` resolves to: each next address
    starts ``HAPPY_EYEBALLS_DELAY`` after the previous one, or at once when it failed."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        try:
            # ASCII names go to the resolver as given; Python's own IDNA codec would refuse
            # names (an empty or long label) the resolver answers with a plain "not found".
            name = host.encode("ascii")
        except UnicodeEncodeError:
            name = host.encode("idna")
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        targets: list[tuple[Any, Any]] = [(info[0], info[4]) for info in infos]
    else:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        targets = [(family, (str(literal), port))]
    if not targets:
        raise OSError(f"{host!r} resolved to no address")
    if len(targets) == 1:  # an IP address (the mesh's endpoints): no race to run
        return await _connect_one(loop, *targets[0], local_address)
    errors: list[OSError] = []
    attempts: set[asyncio.Task[socket.socket]] = set()
    try:
        for family, address in targets:
            attempts.add(loop.create_task(_connect_one(loop, family, address, local_address)))
            connected = await _first(attempts, errors, HAPPY_EYEBALLS_DELAY)
            if connected is not None:
                return connected
        while attempts:
            connected = await _first(attempts, errors, None)
            if connected is not None:
                return connected
    finally:
        # The others: a cancelled one closes its own socket; one that connected meanwhile
        # (done before its cancel lands) is closed once it is.
        for attempt in attempts:
            attempt.cancel()
            attempt.add_done_callback(_close_connected)
    raise errors[-1]  # every attempt failed: each added its error


def _close_connected(attempt: asyncio.Task[socket.socket]) -> None:
    if not attempt.cancelled() and attempt.exception() is None:  # pragma: no cover - a race
        attempt.result().close()


async def _first(
    attempts: set[asyncio.Task[socket.socket]], errors: list[OSError], wait: float | None
) -> socket.socket | None:
    """A socket from the first attempt to connect within ``wait``; failed ones go to ``errors``."""
    done, _ = await asyncio.wait(attempts, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
    for attempt in done:
        attempts.discard(attempt)
        error = attempt.exception()
        if error is None:
            return attempt.result()
        assert isinstance(error, OSError)
        errors.append(error)
    return None


async def _connect_one(
    loop: asyncio.AbstractEventLoop, family: Any, address: Any, local_address: str | None
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if local_address is not None:
            sock.bind((local_address, 0))
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock
