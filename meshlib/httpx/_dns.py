"""DNS for mesh destinations, off the request path: a cache refreshed by one daemon thread.

The runtime asks ``addresses(name)`` while building a cluster; the first ask returns ``None``
(the connection then resolves the name itself, as plain httpx would) and queues the name.
The thread resolves queued names at once and every name again each ``interval`` (Envoy's
``dns_refresh_rate``, 5 s); a changed answer bumps ``version`` and the runtime rebuilds the
clusters that use the name. A failed lookup keeps the last good answer (Envoy does the same).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

__all__ = ["DEFAULT_DNS_REFRESH", "DnsResolver", "system_resolve"]

DEFAULT_DNS_REFRESH = 5.0
"""Seconds between refreshes: Envoy's default ``dns_refresh_rate``."""
STOP_TIMEOUT = 5.0

Resolve = Callable[[str], tuple[str, ...]]


def system_resolve(name: str) -> tuple[str, ...]:
    """The IPv4 addresses of ``name``, or its IPv6 ones when it has none (Envoy's
    ``V4_PREFERRED``, what Istio programs without dual stack), sorted so that equal answers
    compare equal."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    v4 = {str(info[4][0]) for info in infos if info[0] == socket.AF_INET}
    return tuple(sorted(v4 or {str(info[4][0]) for info in infos}))


class DnsResolver:
    """A ``meshlib._engine.runtime.Resolver`` backed by ``resolve`` (the system resolver)."""

    def __init__(
        self,
        interval: float = DEFAULT_DNS_REFRESH,
        *,
        resolve: Resolve = system_resolve,
        background: bool = True,
    ) -> None:
        self.interval = interval
        self._resolve = resolve
        self._background = background
        """False: nothing resolves until ``refresh()`` is called (tests drive it by hand)."""
        self._refreshing = threading.Lock()
        """One refresh at a time: two racing swaps could drop each other's answers."""
        self._answers: dict[str, tuple[str, ...]] = {}
        self._names: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._version = 0
        self.failures = 0
        """Lookups that failed (the last good answer stays in use)."""

    @property
    def version(self) -> int:
        return self._version

    def addresses(self, name: str) -> tuple[str, ...] | None:
        answer = self._answers.get(name)
        if answer is None and name not in self._names:
            with self._lock:
                if self._closed:
                    return None
                self._names.add(name)
                if self._thread is None and self._background:
                    self._thread = threading.Thread(
                        target=self._run, name="meshlib-dns", daemon=True
                    )
                    self._thread.start()
            self._wake.set()
        return answer

    def refresh(self) -> bool:
        """Resolve every known name now, in this thread; True when an answer changed."""
        with self._refreshing:
            return self._refresh()

    def _refresh(self) -> bool:
        with self._lock:
            names = sorted(self._names)
        answers = dict(self._answers)
        changed = False
        for name in names:
            try:
                answer = self._resolve(name)
            except OSError:
                self.failures += 1
                continue
            if answer and answers.get(name) != answer:
                answers[name] = answer
                changed = True
        if changed:
            self._answers = answers  # one reference swap: readers never see a half update
            self._version += 1
        return changed

    def _run(self) -> None:
        while not self._closed:
            self._wake.clear()
            self.refresh()
            self._wake.wait(self.interval)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(STOP_TIMEOUT)

    def __enter__(self) -> DnsResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
