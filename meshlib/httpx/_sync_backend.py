"""An httpcore network backend for threads, on non-blocking sockets.

httpcore's ``SyncStream`` gives the socket its timeout again before every read and write. With a
timeout set, CPython switches the descriptor's blocking mode on each of those calls (an
``ioctl``), waits in ``poll`` before every TLS write, and the errors pass through a generator
based context manager. Here the socket is non-blocking from the start: a read or write is tried
at once, and only one that would block waits in ``poll`` for the time its timeout has left. On
the bench's mTLS request: 7 system calls (the idle check, the write, the wait for the answer,
two reads per TLS record) where httpcore's stream makes 10 to 12.
"""

from __future__ import annotations

import math
import select
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore

__all__ = [
    "SyncBackend",
    "SyncStream",
    "answer_may_wait",
    "extra_info",
    "readable",
    "try_handshake",
    "try_read",
    "try_write",
    "wrap_tls",
]

_WOULD_BLOCK_READ = (BlockingIOError, ssl.SSLWantReadError)
_WOULD_BLOCK_WRITE = (BlockingIOError, ssl.SSLWantWriteError)


def _ready(fd: int, write: bool, timeout: float | None) -> bool:
    """Whether ``fd`` turns writable (or readable: data, EOF or an error) within ``timeout``.
    A closed socket (``fd`` -1) is ready: the read or write that follows fails at once."""
    if fd < 0:
        return True
    poll = getattr(select, "poll", None)
    if poll is None:  # Windows: select() has no descriptor limit there
        wanted = [fd]
        readers, writers, _ = select.select(
            [] if write else wanted, wanted if write else [], [], timeout
        )
        return bool(readers or writers)
    poller = poll()
    poller.register(fd, select.POLLOUT if write else select.POLLIN)
    # poll counts milliseconds: round up, or a wait with time left would return at once.
    return bool(poller.poll(None if timeout is None else math.ceil(timeout * 1000)))


def readable(sock: socket.socket) -> bool:
    """Data or EOF is waiting: an idle connection in that state cannot be reused."""
    return _ready(sock.fileno(), False, 0.0)


# What both backends do with a non-blocking socket; each waits its own way (poll or asyncio).


def try_read(sock: socket.socket, max_bytes: int) -> bytes | bool:
    """What ``sock`` has (``b""`` at its end) or, when nothing is there yet, which way to wait:
    ``True`` for writable (OpenSSL must send first), ``False`` for readable."""
    try:
        return sock.recv(max_bytes)
    except _WOULD_BLOCK_READ:
        return False
    except ssl.SSLWantWriteError:  # pragma: no cover - OpenSSL must send first
        return True


def try_write(sock: socket.socket, view: memoryview) -> memoryview | bool:
    """What is left of ``view`` after one send or, when it would block, which way to wait."""
    try:
        return view[sock.send(view) :]
    except _WOULD_BLOCK_WRITE:
        return True
    except ssl.SSLWantReadError:  # pragma: no cover - OpenSSL must receive first
        return False


def wrap_tls(
    sock: socket.socket, ssl_context: ssl.SSLContext, server_hostname: str | None
) -> ssl.SSLSocket:
    """The TLS socket over ``sock``, its handshake still to do (``try_handshake``).

    It takes the descriptor over: from here on it is the one to close. A peer that closes
    without close_notify ends the stream (recv returns b""), as with httpcore's own backends:
    HTTP/1.1 frames its own messages.
    """
    return ssl_context.wrap_socket(
        sock,
        server_hostname=server_hostname,
        do_handshake_on_connect=False,
        suppress_ragged_eofs=True,
    )


def try_handshake(sock: ssl.SSLSocket) -> bool | None:
    """``None`` once the handshake is done, else which way to wait (``True``: writable)."""
    try:
        sock.do_handshake()
    except ssl.SSLWantReadError:
        return False
    except ssl.SSLWantWriteError:  # pragma: no cover - a ClientHello fits the buffer
        return True
    return None


def answer_may_wait(sock: socket.socket, timeout: float | None) -> bool:
    """Whether the first read after a write may wait for the socket before it tries: not when
    OpenSSL holds decrypted bytes already (the rest of a record an earlier read did not take:
    the socket would never turn readable for them), nor with no time to wait at all."""
    if timeout is not None and timeout <= 0:
        return False
    return not (isinstance(sock, ssl.SSLSocket) and sock.pending())


def extra_info(sock: socket.socket, info: str) -> Any:
    """httpcore's ``get_extra_info`` of a stream over ``sock``."""
    if info == "is_readable":  # first: asked before every request on a kept connection
        return readable(sock)
    if info == "ssl_object":
        return sock if isinstance(sock, ssl.SSLSocket) else None
    if info == "socket":
        return sock
    if info == "client_addr":
        return sock.getsockname()[:2]  # (host, port) for IPv6 too, as anyio gives it
    if info == "server_addr":
        return sock.getpeername()[:2]
    return None


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _wait(sock: socket.socket, write: bool, deadline: float | None) -> None:
    """Until ``sock`` is writable (or readable); TimeoutError once ``deadline`` passed."""
    left = None
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
    if not _ready(sock.fileno(), write, left):
        raise TimeoutError


class SyncStream(httpcore.NetworkStream):
    __slots__ = ("_answer_due", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._answer_due = False
        """A write came last: the next read waits before it tries (see ``read``)."""

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        sock = self._sock
        deadline = None
        try:
            if self._answer_due:
                # Right after a request the answer is not there yet. A read tried first would
                # fail, and OpenSSL's want-read error costs more CPU than this wait (measured:
                # about 20 µs per request on the bench machine).
                self._answer_due = False
                if answer_may_wait(sock, timeout):
                    deadline = _deadline(timeout)
                    _wait(sock, False, deadline)
            while True:
                wait = try_read(sock, max_bytes)
                if not isinstance(wait, bool):
                    return wait
                if deadline is None:
                    deadline = _deadline(timeout)
                _wait(sock, wait, deadline)
        except TimeoutError as error:
            raise httpcore.ReadTimeout("timed out") from error
        except OSError as error:  # ssl.SSLError included
            raise httpcore.ReadError(str(error)) from error

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
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
                    deadline = _deadline(timeout)
                _wait(sock, wait, deadline)
        except TimeoutError as error:
            raise httpcore.WriteTimeout("timed out") from error
        except OSError as error:
            raise httpcore.WriteError(str(error)) from error

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        sock = self._sock
        try:
            sock = wrap_tls(sock, ssl_context, server_hostname)
            deadline = _deadline(timeout)
            while (wait := try_handshake(sock)) is not None:
                _wait(sock, wait, deadline)
            return SyncStream(sock)
        except TimeoutError as error:
            sock.close()
            raise httpcore.ConnectTimeout("timed out") from error
        except OSError as error:  # ssl.SSLError included: a refused certificate, a reset
            sock.close()
            raise httpcore.ConnectError(str(error)) from error
        except BaseException:  # pragma: no cover - interrupted (Ctrl-C) mid-handshake
            sock.close()
            raise

    def get_extra_info(self, info: str) -> Any:
        return extra_info(self._sock, info)


class SyncBackend(httpcore.NetworkBackend):
    """httpcore's ``NetworkBackend`` over non-blocking (TLS) sockets."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        source = None if local_address is None else (local_address, 0)
        try:
            # Each address the name resolves to in turn, as httpcore's own backend does.
            sock = socket.create_connection((host, port), timeout, source_address=source)
        except TimeoutError as error:
            raise httpcore.ConnectTimeout("timed out") from error
        except (OSError, UnicodeError) as error:  # UnicodeError: a name IDNA cannot encode
            raise httpcore.ConnectError(str(error)) from error
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            raise httpcore.ConnectError(str(error)) from error
        return SyncStream(sock)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return httpcore.SyncBackend().connect_unix_socket(path, timeout, socket_options)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
