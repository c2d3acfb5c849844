"""Identity sources: where the current SVID and trust bundle come from, and how they rotate.

Every source runs its own daemon thread (or py-spiffe's), so rotation never blocks a request: a
request only ever reads the current reference. Listeners are called on that thread.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from meshlib._identity.certs import (
    DEFAULT_WORKLOAD_TTL_SECONDS,
    Svid,
    check_chain,
    key_matches,
    load_pem_certs,
    load_pem_key,
)
from meshlib.errors import IdentityError

if TYPE_CHECKING:
    # Only annotations: LocalCA's module imports cryptography, which a plaintext mesh never needs.
    from meshlib._identity.ca import LocalCA

__all__ = [
    "DEFAULT_POLL_INTERVAL_SECONDS",
    "EXPIRY_WARNING_FRACTION",
    "ROTATION_GRACE_RATIO",
    "ROTATION_JITTER",
    "CASource",
    "FileSource",
    "IdentitySource",
    "Listener",
    "StaticSource",
    "load_svid_files",
]

logger = logging.getLogger("meshlib.identity")

ROTATION_GRACE_RATIO = 0.5
ROTATION_JITTER = 0.01
"""Rotate at ``expiry - g * lifetime``, ``g = 0.5 ± U(0, 0.01)`` (as Istio)."""
EXPIRY_WARNING_FRACTION = 0.8
DEFAULT_POLL_INTERVAL_SECONDS = 1.0
WATCHDOG_INTERVAL_SECONDS = 30.0
"""How often a source with nothing else to do re-checks expiry for the warning."""
RETRY_AFTER_FAILURE_SECONDS = 1.0

Listener = Callable[[Svid], None]


@runtime_checkable
class IdentitySource(Protocol):
    """Anything that hands out the current SVID (with its bundle) and says when it changes."""

    def current(self) -> Svid: ...

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(svid)`` after each change; returns a function that unsubscribes."""
        ...

    def close(self) -> None: ...


class _Publisher:
    """Current value plus listeners; the shared half of every source."""

    def __init__(self, svid: Svid) -> None:
        self._current = svid
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._warned_serial: int | None = None

    def current(self) -> Svid:
        return self._current

    def seconds_left(self) -> float:
        return self._current.seconds_left()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _publish(self, svid: Svid) -> None:
        self._current = svid
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(svid)
            except Exception:
                # One broken listener must not stop the others from seeing the new identity.
                logger.exception("identity listener %r failed", listener)

    def _check_expiry(self, now: float | None = None) -> None:
        svid = self._current
        if svid.lifetime_used(now) < EXPIRY_WARNING_FRACTION or self._warned_serial == svid.serial:
            return
        self._warned_serial = svid.serial
        logger.warning(
            "identity %s (serial %x) has used %.0f%% of its lifetime without renewal; %.0f s left",
            svid.spiffe_id,
            svid.serial,
            100 * svid.lifetime_used(now),
            svid.seconds_left(now),
        )


class _ThreadedSource(_Publisher):
    """A publisher with a daemon thread that wakes when ``_next_wakeup`` says, until closed."""

    _thread_name = "meshlib-identity"

    def __init__(self, svid: Svid) -> None:
        super().__init__(svid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(max(0.0, self._next_wakeup() - time.monotonic())):
            try:
                self._tick()
            except Exception:
                logger.exception("identity source %s failed; keeping the current identity", self)
            self._check_expiry()

    def _next_wakeup(self) -> float:
        raise NotImplementedError

    def _tick(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StaticSource(_Publisher):
    """A source whose SVID changes only when told (tests, or identities managed by the caller)."""

    def set(self, svid: Svid) -> None:
        self._publish(svid)

    def close(self) -> None:
        """Nothing to stop."""


class CASource(_ThreadedSource):
    """Issues its own SVID from a :class:`LocalCA` and re-issues at half-life with jitter."""

    _thread_name = "meshlib-identity-ca"

    def __init__(
        self,
        ca: LocalCA,
        namespace: str,
        service_account: str,
        *,
        dns_names: Sequence[str] = (),
        ttl: float = DEFAULT_WORKLOAD_TTL_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self._ca = ca
        self._namespace = namespace
        self._service_account = service_account
        self._dns_names = tuple(dns_names)
        self._ttl = ttl
        self._rng = rng or random.Random()
        self._ca_lock = threading.Lock()
        self._rotate_at = 0.0
        super().__init__(self._issue())
        self._start()

    @property
    def ca(self) -> LocalCA:
        return self._ca

    def _issue(self) -> Svid:
        svid = self._ca.issue(self._namespace, self._service_account, self._dns_names, self._ttl)
        jitter = self._rng.uniform(-ROTATION_JITTER, ROTATION_JITTER)
        # Measured from issuance, not NotBefore: the 2-minute backdate would swallow a short TTL.
        self._rotate_at = time.monotonic() + self._ttl * (1.0 - (ROTATION_GRACE_RATIO + jitter))
        return svid

    def _next_wakeup(self) -> float:
        return min(self._rotate_at, time.monotonic() + WATCHDOG_INTERVAL_SECONDS)

    def _tick(self) -> None:
        if time.monotonic() >= self._rotate_at:
            self.rotate_now()

    def rotate_now(self) -> Svid:
        """Re-issue at once (also what the thread does at half-life)."""
        with self._ca_lock:
            try:
                svid = self._issue()
            except Exception:
                self._rotate_at = time.monotonic() + RETRY_AFTER_FAILURE_SECONDS
                raise
        self._publish(svid)
        return svid

    def rotate_ca(self, ca: LocalCA) -> Svid:
        """Switch to another CA (or the same signer with a new bundle) and re-issue at once."""
        with self._ca_lock:
            self._ca = ca
        return self.rotate_now()

    def __repr__(self) -> str:
        return f"CASource({self._ca.trust_domain}/ns/{self._namespace}/sa/{self._service_account})"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise IdentityError(f"{path}: cannot read ({error.strerror or error})") from None


def load_svid_files(cert_chain: Path, key: Path, bundle: Path, *, now: float | None = None) -> Svid:
    """Read and cross-check a cert chain, key and bundle; errors name the file at fault."""
    current = time.time() if now is None else now
    chain = load_pem_certs(_read(cert_chain), str(cert_chain))
    private_key = load_pem_key(_read(key), str(key))
    roots = load_pem_certs(_read(bundle), str(bundle))
    if not key_matches(private_key, chain[0]):
        raise IdentityError(
            f"{key}: the private key does not match the certificate in {cert_chain}"
        )
    problem = check_chain(chain, roots, current)
    if problem is not None:
        raise IdentityError(f"{cert_chain}: {problem} (bundle {bundle})")
    try:
        return Svid.build(chain, private_key, roots)
    except IdentityError as error:
        raise IdentityError(f"{cert_chain}: {error}") from None


def _signature(paths: Sequence[Path]) -> tuple[tuple[int, int, int], ...]:
    result = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            result.append((-1, -1, -1))
            continue
        result.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(result)


class FileSource(_ThreadedSource):
    """Cert chain, key and bundle files written by someone else (cert-manager, SPIRE helper, Istio).

    The files are polled (stat only, every ``poll_interval`` seconds): writers replace them one at a
    time, so a set that does not fit together is ignored until it does, and the last good identity
    stays in use meanwhile.
    """

    _thread_name = "meshlib-identity-files"

    def __init__(
        self,
        cert_chain: str | os.PathLike[str],
        key: str | os.PathLike[str],
        bundle: str | os.PathLike[str],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL_SECONDS,
    ) -> None:
        self._paths = (Path(cert_chain), Path(key), Path(bundle))
        self._poll_interval = poll_interval
        self._seen = _signature(self._paths)
        self._last_error: str | None = None
        super().__init__(load_svid_files(*self._paths))
        self._start()

    @property
    def last_error(self) -> str | None:
        """Why the files on disk are not in use, or ``None`` when they are."""
        return self._last_error

    def _next_wakeup(self) -> float:
        return time.monotonic() + self._poll_interval

    def _tick(self) -> None:
        signature = _signature(self._paths)
        if signature == self._seen:
            return
        try:
            svid = load_svid_files(*self._paths)
        except IdentityError as error:
            message = str(error)
            if message != self._last_error:
                logger.warning("ignoring identity files until they fit together: %s", message)
            self._last_error = message
            # Retry on the next poll even if nothing changes: a not-yet-valid cert becomes valid.
            self._seen = ()
            return
        self._seen = signature
        self._last_error = None
        if svid.serial != self.current().serial or svid.bundle != self.current().bundle:
            logger.info("identity %s reloaded from %s", svid.spiffe_id, self._paths[0])
            self._publish(svid)

    def reload_now(self) -> None:
        """Check the files at once (the thread does this every ``poll_interval``)."""
        self._seen = ()
        self._tick()

    def __repr__(self) -> str:
        return f"FileSource({self._paths[0]})"
