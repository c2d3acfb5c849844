"""The SPIFFE Workload API (SPIRE agent, or any implementation) as an identity source.

py-spiffe (extra ``spiffe``) is imported only when this source is built: the core never needs it
nor grpcio. Its ``X509Source`` keeps the stream open on its own thread and calls us on each update.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from meshlib._identity.certs import Svid
from meshlib._identity.sources import WATCHDOG_INTERVAL_SECONDS, _ThreadedSource, logger
from meshlib.errors import IdentityError

__all__ = ["DEFAULT_WORKLOAD_API_TIMEOUT_SECONDS", "SpiffeWorkloadAPI"]

DEFAULT_WORKLOAD_API_TIMEOUT_SECONDS = 10.0


def _to_svid(context: Any) -> Svid:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    svid = context.default_svid
    key = svid.private_key
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise IdentityError("the Workload API returned a key that is neither EC nor RSA")
    # Federated bundles are trusted for the chain; the SPIFFE ID check decides which domains pass.
    roots = [cert for bundle in context.x509_bundle_set.bundles for cert in bundle.x509_authorities]
    if not roots:
        raise IdentityError("the Workload API returned no trust bundle")
    return Svid.build(list(svid.cert_chain), key, sorted(roots, key=lambda c: c.serial_number))


class SpiffeWorkloadAPI(_ThreadedSource):
    """SVIDs and bundles from the Workload API socket (``SPIFFE_ENDPOINT_SOCKET`` by default).

    ``socket_path`` is ``unix:///run/spire/agent.sock`` or a bare path. Blocks until the first SVID
    arrives or ``timeout`` passes (then raises :class:`meshlib.errors.IdentityError`).
    """

    _thread_name = "meshlib-identity-watchdog"

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        timeout: float = DEFAULT_WORKLOAD_API_TIMEOUT_SECONDS,
    ) -> None:
        try:
            from spiffe import X509Source
        except ModuleNotFoundError as error:
            raise IdentityError(
                "SpiffeWorkloadAPI needs the 'spiffe' extra: pip install 'meshlib[spiffe]'"
            ) from error
        if socket_path is not None and not socket_path.startswith("unix:"):
            socket_path = f"unix://{socket_path}"
        try:
            self._x509 = X509Source(socket_path=socket_path, timeout_in_seconds=timeout)
        except Exception as error:
            raise IdentityError(
                f"SPIFFE Workload API at {socket_path or '$SPIFFE_ENDPOINT_SOCKET'}: {error}"
            ) from error
        self._update_lock = threading.Lock()
        try:
            first = _to_svid(self._x509.get_x509_context())
        except Exception:
            self._x509.close()
            raise
        super().__init__(first)
        self._x509.subscribe_for_updates(self._on_update)
        self._start()

    def _on_update(self) -> None:
        try:
            svid = _to_svid(self._x509.get_x509_context())
        except Exception as error:
            logger.warning("ignoring a Workload API update: %s", error)
            return
        with self._update_lock:
            current = self.current()
            if svid.serial == current.serial and svid.bundle == current.bundle:
                return
            self._publish(svid)

    def _next_wakeup(self) -> float:
        return time.monotonic() + WATCHDOG_INTERVAL_SECONDS

    def _tick(self) -> None:
        """Only the expiry watchdog runs here; py-spiffe's thread delivers updates."""

    def close(self) -> None:
        super().close()
        self._x509.close()
