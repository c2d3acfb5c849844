"""DestinationRule ``connectionPool``: Envoy's circuit-breaker thresholds."""

from __future__ import annotations

import enum
from dataclasses import dataclass

UNLIMITED = 2**32 - 1
"""What Istio programs for an unset threshold (Envoy's own 1024 never applies)."""
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 3600.0
DEFAULT_MAX_CONCURRENT_STREAMS = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    max_connections: int = UNLIMITED
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    tcp_idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    max_connection_duration: float | None = None
    http1_max_pending_requests: int = UNLIMITED
    http2_max_requests: int = UNLIMITED
    max_requests_per_connection: int = 0
    """0 = unlimited; 1 = no keep-alive."""
    max_retries: int = UNLIMITED
    http_idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    h2_upgrade_policy: str = "DEFAULT"
    use_client_protocol: bool = False
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Replaces ``maxRetries``: allowed concurrent retries = max(min, percent × active)."""

    percent: float = 20.0
    min_retry_concurrency: int = 3


DEFAULT_CONNECTION_POOL = ConnectionPool()


class Admission(enum.Enum):
    ADMITTED = "admitted"
    """Go ahead: the request holds a request slot (and, for HTTP/1, a connection)."""
    QUEUED = "queued"
    """All connections are busy: the request holds a pending slot and must wait for ``promote``."""
    OVERFLOW = "overflow"
    """Reply 503 UO with ``x-envoy-overloaded: true``; nothing is held."""


class Limiter:
    """Envoy's circuit-breaker counters for one cluster. Never blocks; never sleeps.

    How a driver uses it (``ClusterState`` wraps this with its lock and a FIFO of waiters):

    * ``try_acquire_request()``: ``ADMITTED`` → send, then ``release_request()`` exactly once
      when the response ends. ``OVERFLOW`` → reply 503 UO. ``QUEUED`` → the request waits
      (thread: ``Event.wait``; asyncio: a future) until someone's ``release_request()`` reports
      a free connection and ``promote()`` succeeds for it; if it gives up (timeout, cancelled)
      it calls ``abandon()`` instead.
    * HTTP/1 (``multiplexed=False``): every active request holds a connection, so at most
      ``max_connections`` are active; the next ``http1_max_pending_requests`` wait.
      HTTP/2 and gRPC (``multiplexed=True``): connections do not bound requests; nothing waits.
    * ``http2_max_requests`` bounds outstanding requests (active + pending), both protocols.
    * ``try_acquire_retry()`` before each retry, ``release_retry()`` when that retry attempt
      ends: ``maxRetries`` concurrent retries, or the retry budget
      ``max(min_retry_concurrency, percent % × outstanding requests)``.

    Istio's circuit-breaker task (maxConnections 1, http1MaxPendingRequests 1): one request
    in flight at a time is always admitted; with three at once, one is active, one waits and
    the third overflows.
    """

    __slots__ = (
        "_max_active",
        "_max_outstanding",
        "_max_pending",
        "active",
        "budget",
        "multiplexed",
        "pending",
        "pending_overflows",
        "pool",
        "request_overflows",
        "retries",
        "retry_overflows",
    )

    def __init__(
        self, pool: ConnectionPool, budget: RetryBudget | None = None, *, multiplexed: bool = False
    ) -> None:
        self.pool = pool
        self.budget = budget
        self.multiplexed = multiplexed
        self._max_outstanding = pool.http2_max_requests
        self._max_active = pool.http2_max_requests if multiplexed else pool.max_connections
        self._max_pending = 0 if multiplexed else pool.http1_max_pending_requests
        self.active = 0
        self.pending = 0
        self.retries = 0
        self.request_overflows = 0
        """Overflows on ``http2MaxRequests`` (outstanding requests)."""
        self.pending_overflows = 0
        """Envoy's ``upstream_rq_pending_overflow``: the pending queue was full."""
        self.retry_overflows = 0
        """Envoy's ``upstream_rq_retry_overflow``."""

    @property
    def overflows(self) -> int:
        """Requests answered 503 UO."""
        return self.request_overflows + self.pending_overflows

    def try_acquire_request(self) -> Admission:
        if self.active + self.pending >= self._max_outstanding:
            self.request_overflows += 1
            return Admission.OVERFLOW
        # Newcomers queue behind waiters even when a connection just freed: FIFO, no barging.
        if self.active < self._max_active and not self.pending:
            self.active += 1
            return Admission.ADMITTED
        if self.pending < self._max_pending:
            self.pending += 1
            return Admission.QUEUED
        self.pending_overflows += 1
        return Admission.OVERFLOW

    def release_request(self) -> bool:
        """An admitted request ended. True when a waiting request can now be promoted."""
        self.active -= 1
        return self.pending > 0 and self.active < self._max_active

    def promote(self) -> bool:
        """Move one waiting request to active if a connection is free."""
        if self.pending and self.active < self._max_active:
            self.pending -= 1
            self.active += 1
            return True
        return False

    def abandon(self) -> None:
        """A waiting request gave up before it was promoted."""
        self.pending -= 1

    def try_acquire_retry(self) -> bool:
        budget = self.budget
        if budget is None:
            allowed = self.pool.max_retries
        else:
            outstanding = self.active + self.pending
            allowed = max(budget.min_retry_concurrency, int(budget.percent * outstanding / 100))
        if self.retries < allowed:
            self.retries += 1
            return True
        self.retry_overflows += 1
        return False

    def release_retry(self) -> None:
        self.retries -= 1
