"""Time and randomness, injected so that policy and flow tests need no sleeps."""

from __future__ import annotations

import random as _random
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...


class Random(Protocol):
    def random(self) -> float:
        """Uniform in [0, 1)."""
        ...

    def randrange(self, stop: int, /) -> int: ...


class MonotonicClock:
    __slots__ = ()

    # The builtin itself, not a method wrapping it: read several times per request.
    now = staticmethod(time.monotonic)


class SystemRandom:
    """Fast non-cryptographic randomness for traffic decisions (weights, faults, jitter)."""

    __slots__ = ("_rng",)

    def __init__(self, seed: int | None = None) -> None:
        self._rng = _random.Random(seed)

    def random(self) -> float:
        return self._rng.random()

    def randrange(self, stop: int, /) -> int:
        return self._rng.randrange(stop)
