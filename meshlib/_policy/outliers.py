"""DestinationRule ``outlierDetection``: per-endpoint ejection."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from meshlib._model.endpoint import Endpoint
from meshlib._model.outcome import Classification

DEFAULT_CONSECUTIVE_5XX = 5
DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURES = 5
DEFAULT_INTERVAL = 10.0
DEFAULT_BASE_EJECTION_TIME = 30.0
DEFAULT_MAX_EJECTION_PERCENT = 10
SWEEP_EARLY = 1.0 - 1e-6
"""Sweeps are looked for a hair before they are due (float rounding), never after."""
MAX_EJECTION_TIME = 300.0
"""Envoy's ``max_ejection_time``; Istio does not expose it."""
GATEWAY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx_errors: int = DEFAULT_CONSECUTIVE_5XX
    """0 disables."""
    consecutive_gateway_errors: int = 0
    """0 disables."""
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failures: int = DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURES
    interval: float = DEFAULT_INTERVAL
    base_ejection_time: float = DEFAULT_BASE_EJECTION_TIME
    max_ejection_percent: int = DEFAULT_MAX_EJECTION_PERCENT
    min_health_percent: int = 0
    """Envoy's panic threshold; Istio passes 0 (panic disabled) unless set."""
    http_error_codes: frozenset[int] | None = None
    """When set, only these statuses count as errors instead of every 5xx."""


class _Host:
    """Per-endpoint detector state."""

    __slots__ = (
        "ejected_at",
        "ejected_until",
        "endpoint",
        "errors",
        "gateway",
        "local",
        "multiplier",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.errors = 0
        self.gateway = 0
        self.local = 0
        self.multiplier = 0
        """Envoy's ejection backoff: +1 per ejection, -1 per interval spent healthy."""
        self.ejected_at: float | None = None
        self.ejected_until = 0.0


class OutlierDetector:
    """Envoy's consecutive-error outlier detection for one cluster (Istio disables success rate).

    No timer: the interval sweep runs lazily from ``record``, ``is_ejected`` and ``healthy``
    and replays every interval boundary that passed, so hosts return at sweep granularity
    exactly as with Envoy's timer. Sweeps fall on ``start + n × interval``; ``start`` defaults
    to the first time the detector is told.
    """

    __slots__ = (
        "_ejected_count",
        "_epoch",
        "_healthy_cache",
        "_hosts",
        "_next_sweep",
        "_tick",
        "_total",
        "ejections_total",
        "settings",
        "version",
    )

    def __init__(
        self,
        settings: OutlierDetection,
        endpoints: Sequence[Endpoint] = (),
        *,
        start: float | None = None,
    ) -> None:
        self.settings = settings
        self._hosts: dict[tuple[str, int], _Host] = {e.key: _Host(e) for e in endpoints}
        self._total = len(self._hosts)
        self._epoch = start
        self._tick = 0
        self._next_sweep = -math.inf if start is None else start + settings.interval * SWEEP_EARLY
        self._ejected_count = 0
        self.ejections_total = 0
        """Ejections since creation (Envoy's ``ejections_enforced_total``)."""
        self.version = 0
        """Bumped on every ejection and return; lets callers cache what they derive."""
        self._healthy_cache: tuple[int, Sequence[Endpoint], Sequence[Endpoint]] | None = None

    # -- verbs ---------------------------------------------------------------------------------

    def record(
        self, endpoint: Endpoint, classification: Classification, status: int, now: float
    ) -> bool:
        """Count one attempt's result; True when this result ejected ``endpoint``."""
        if (
            classification is Classification.SUCCESS
            and not self._ejected_count
            and self.settings.http_error_codes is None
        ):
            host = self._hosts.get(endpoint.key)
            if host is not None:
                # The common case on the request path: a success only ends the streaks. With
                # nobody ejected a sweep could only decay multipliers, which the next sweep
                # replays just the same.
                if host.errors or host.gateway or host.local:
                    host.errors = host.gateway = host.local = 0
                return False
        self.sweep(now)
        if classification is Classification.CANCELLED:
            return False  # the caller went away: says nothing about the host
        host = self._hosts.get(endpoint.key)
        if host is None:
            host = self._hosts[endpoint.key] = _Host(endpoint)
            self._total += 1
        settings = self.settings
        if classification is Classification.LOCAL_ORIGIN_FAILURE:
            if settings.split_external_local_origin_errors:
                host.local += 1
                return host.local == settings.consecutive_local_origin_failures and self._trip(
                    host, now, "local"
                )
            # Not split: a connect failure reads as 503, a timeout as 504: both gateway errors.
            is_error = is_gateway = True
        else:
            host.local = 0  # a response arrived, so the connection worked
            if status <= 0:
                is_error = classification in _ERROR_CLASSES
                is_gateway = classification is Classification.GATEWAY_ERROR
            else:
                codes = settings.http_error_codes
                is_error = status >= 500 if codes is None else status in codes
                is_gateway = status in GATEWAY_STATUSES
        host.errors = host.errors + 1 if is_error else 0
        host.gateway = host.gateway + 1 if is_gateway else 0
        # Exactly at the threshold, as Envoy: an ejected host's further errors do not re-trip.
        ejected = False
        threshold = settings.consecutive_5xx_errors
        if threshold > 0 and host.errors == threshold:
            ejected = self._trip(host, now, "errors")
        threshold = settings.consecutive_gateway_errors
        if threshold > 0 and host.gateway == threshold:
            ejected = self._trip(host, now, "gateway") or ejected
        return ejected

    def is_ejected(self, endpoint: Endpoint, now: float) -> bool:
        self.sweep(now)
        host = self._hosts.get(endpoint.key)
        return host is not None and host.ejected_at is not None

    def healthy(self, endpoints: Sequence[Endpoint], now: float) -> Sequence[Endpoint]:
        """The endpoints a balancer may use now.

        Non-ejected endpoints, unless their share is below ``min_health_percent`` (Envoy's
        panic threshold) — then all of them. With the threshold 0 (Istio's default) this can
        be empty: the caller answers 503 UH. The result is cached: the same object comes back
        while nothing changed, so balancers keep their structures.
        """
        if now >= self._next_sweep:  # skips the call between sweeps: this runs per request
            self.sweep(now)
        if self._ejected_count == 0:
            return endpoints
        cache = self._healthy_cache
        if cache is not None and cache[0] == self.version and cache[1] is endpoints:
            return cache[2]
        hosts = self._hosts
        result: Sequence[Endpoint] = tuple(
            e for e in endpoints if (h := hosts.get(e.key)) is None or h.ejected_at is None
        )
        if len(result) * 100 < self.settings.min_health_percent * len(endpoints):
            result = endpoints  # panic: spread over every host rather than overload the few
        self._healthy_cache = (self.version, endpoints, result)
        return result

    def sweep(self, now: float) -> None:
        """Replay the interval sweeps due by ``now``: returns and ejection-multiplier decay."""
        epoch = self._epoch
        if epoch is None:
            self._epoch = now
            self._next_sweep = now + self.settings.interval * SWEEP_EARLY
            return
        tick = math.floor((now - epoch) / self.settings.interval)
        if tick <= self._tick:
            return
        previous, self._tick = self._tick, tick
        self._next_sweep = epoch + self.settings.interval * (tick + SWEEP_EARLY)
        if self._ejected_count == 0 and not any(h.multiplier for h in self._hosts.values()):
            return
        interval = self.settings.interval
        for host in self._hosts.values():
            if host.ejected_at is not None:
                # The first sweep at or after the ejection time elapsed puts it back.
                due = max(math.ceil((host.ejected_until - epoch) / interval), previous + 1)
                if due > tick:
                    continue
                host.ejected_at = None
                host.errors = host.gateway = host.local = 0
                self._ejected_count -= 1
                self.version += 1
                healthy_sweeps = tick - due  # the returning sweep itself does not decay
            else:
                healthy_sweeps = tick - previous
            if host.multiplier:
                host.multiplier = max(0, host.multiplier - healthy_sweeps)

    # -- metrics and explain -------------------------------------------------------------------

    @property
    def ejected_count(self) -> int:
        return self._ejected_count

    def ejected(self) -> list[tuple[Endpoint, float]]:
        """Ejected endpoints and when their ejection elapses (they return at the next sweep)."""
        return [
            (host.endpoint, host.ejected_until)
            for host in self._hosts.values()
            if host.ejected_at is not None
        ]

    # -- internals -----------------------------------------------------------------------------

    def _trip(self, host: _Host, now: float, counter: str) -> bool:
        # Envoy resets the counter that tripped, whether or not the ejection is allowed, so a
        # refused host needs a new full run of errors before it is considered again.
        setattr(host, counter, 0)
        if host.ejected_at is not None:
            return False
        settings = self.settings
        ejected = self._ejected_count
        # At least one host is always ejectable (Envoy API docs), else below max percent.
        if ejected and ejected * 100 >= settings.max_ejection_percent * self._total:
            return False
        base = settings.base_ejection_time
        ceiling = max(MAX_EJECTION_TIME, base)
        # Past the ceiling more backoff only lengthens the decay, so cap it there.
        host.multiplier = min(host.multiplier + 1, math.ceil(ceiling / base))
        host.ejected_at = now
        host.ejected_until = now + min(base * host.multiplier, ceiling)
        self._ejected_count += 1
        self.ejections_total += 1
        self.version += 1
        return True


_ERROR_CLASSES = frozenset({Classification.HTTP_5XX, Classification.GATEWAY_ERROR})
