"""``RotatingIdentity``: the one object that turns an identity source into TLS contexts.

Each SVID change builds a new *generation* (client and server contexts) and swaps one reference;
nothing in use is ever mutated. New client connections take the current generation's context at
connect time; servers swap it in from an ``sni_callback`` at each handshake (PLUMBING-NOTES §2, §5).
"""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from meshlib._identity.certs import Svid
from meshlib._identity.sources import IdentitySource
from meshlib._identity.tls import ALPN_H1, ALPN_H2, PeerPolicy, client_context, server_context

__all__ = ["Generation", "RotatingIdentity"]

logger = logging.getLogger("meshlib.identity")


@dataclass(frozen=True, slots=True)
class Generation:
    """One SVID and the contexts built from it; never changed after construction."""

    number: int
    svid: Svid
    client_h2: ssl.SSLContext
    client_h1: ssl.SSLContext
    server_strict: ssl.SSLContext
    server_permissive: ssl.SSLContext


class RotatingIdentity:
    """Holds the current generation; listeners hear about each new one (on the source's thread)."""

    def __init__(self, source: IdentitySource, *, owns_source: bool = True) -> None:
        self._source = source
        self._owns_source = owns_source
        self._counter = itertools.count(1)
        self._build_lock = threading.Lock()
        self._listeners: list[Callable[[Generation], None]] = []
        self._generation = self._build(source.current())
        self._unsubscribe = source.subscribe(self._on_svid)

    @property
    def source(self) -> IdentitySource:
        return self._source

    @property
    def generation(self) -> Generation:
        return self._generation

    @property
    def svid(self) -> Svid:
        return self._generation.svid

    def seconds_left(self) -> float:
        return self._generation.svid.seconds_left()

    def peer_policy(self) -> PeerPolicy:
        """The default expectation: any workload of our own trust domain."""
        return PeerPolicy(frozenset({self._generation.svid.spiffe_id.trust_domain}))

    def current_client_context(self, http2: bool = False) -> ssl.SSLContext:
        generation = self._generation
        return generation.client_h2 if http2 else generation.client_h1

    def current_server_context(self, require_client_cert: bool = True) -> ssl.SSLContext:
        generation = self._generation
        return generation.server_strict if require_client_cert else generation.server_permissive

    def sni_callback(
        self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        # Runs for every handshake, SNI or not: point it at the newest context (cert and bundle).
        strict = context.verify_mode == ssl.CERT_REQUIRED
        ssl_object.context = self.current_server_context(strict)

    def server_context_factory(
        self, require_client_cert: bool = True
    ) -> Callable[[Any, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
        """For uvicorn's ``ssl_context_factory``: the current context, rotating via SNI callback."""

        def factory(config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
            return self.current_server_context(require_client_cert)

        return factory

    def subscribe(self, listener: Callable[[Generation], None]) -> Callable[[], None]:
        """Hear about each new generation; returns a function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _build(self, svid: Svid) -> Generation:
        callback = self.sni_callback
        client_h2 = client_context(svid, alpn=ALPN_H2)
        client_h1 = client_context(svid, alpn=ALPN_H1)
        # uvicorn speaks HTTP/1.1 only: offering h2 makes h2 clients send a preface it rejects.
        strict = server_context(svid, require_client_cert=True, alpn=ALPN_H1, sni_callback=callback)
        permissive = server_context(
            svid, require_client_cert=False, alpn=ALPN_H1, sni_callback=callback
        )
        # Numbered only once built, so generation numbers have no gaps after a failure.
        return Generation(next(self._counter), svid, client_h2, client_h1, strict, permissive)

    def _on_svid(self, svid: Svid) -> None:
        with self._build_lock:
            try:
                generation = self._build(svid)
            except Exception:
                logger.exception(
                    "could not build TLS contexts for %s; keeping the current ones", svid
                )
                return
            self._generation = generation
        logger.info(
            "identity %s rotated: serial %x, generation %d",
            svid.spiffe_id,
            svid.serial,
            generation.number,
        )
        for listener in list(self._listeners):
            try:
                listener(generation)
            except Exception:
                logger.exception("rotation listener %r failed", listener)

    def close(self) -> None:
        self._unsubscribe()
        if self._owns_source:
            self._source.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
