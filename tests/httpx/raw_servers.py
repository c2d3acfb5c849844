"""Raw socket servers on 127.0.0.1 for the network backends' tests: one connection each."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable

HOST = "api.test"
JOIN_TIMEOUT = 10.0


class OneShotServer:
    """Accepts one connection on 127.0.0.1 (TLS when given a context) and runs ``script`` on it;
    without a script it reads nothing, sends nothing and keeps the connection until closed."""

    def __init__(
        self,
        script: Callable[[socket.socket], None] | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.done = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.script = script
        self.context = context
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                if self.done.is_set():
                    return  # closed before anyone connected: the test did not need to
                raise
            with conn:
                if self.context is not None:
                    try:
                        conn = self.context.wrap_socket(conn, server_side=True)
                    except (ssl.SSLError, OSError):
                        return  # the client refused the handshake: what some tests want
                if self.script is None:
                    self.done.wait(JOIN_TIMEOUT)
                else:
                    self.script(conn)
        except BaseException as error:
            self.error = error

    def close(self) -> None:
        self.done.set()
        self.listener.close()
        self.thread.join(JOIN_TIMEOUT)
        if self.error is not None:
            raise self.error


def echo_line(conn: socket.socket) -> None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    conn.sendall(data.upper())


def refused_port() -> int:
    """A port of 127.0.0.1 that nothing listens on."""
    closed = socket.create_server(("127.0.0.1", 0))
    port: int = closed.getsockname()[1]
    closed.close()
    return port


def fill_queue(listener: socket.socket) -> list[socket.socket]:
    """Connections that fill ``listener``'s accept queue (``listen(0)``): the kernel then
    drops new SYNs, so a further connect hangs until the queue drains."""
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(listener.getsockname())
        fillers.append(filler)
    return fillers
