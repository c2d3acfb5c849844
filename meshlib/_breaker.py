"""Circuit breakers for dependencies that are not mesh services (databases, third-party SDKs).

pybreaker keeps the state machine (closed -> open -> half-open, consecutive failure counting,
``exclude``, listeners, storage). meshlib decides admission itself because pybreaker's own
``call()`` holds its lock for the whole call (callers run one at a time), has no asyncio support
without tornado, and lets every concurrent caller through while half-open. Outcomes are fed back
through ``CircuitBreaker.call`` with a function that replays them, which runs under pybreaker's
lock for a moment only.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

import pybreaker

from meshlib.errors import MeshError

__all__ = ["CircuitBreaker", "CircuitOpenError", "breakers", "circuit_breaker"]

_log = logging.getLogger("meshlib.breaker")

P = ParamSpec("P")
R = TypeVar("R")

CLOSED = pybreaker.STATE_CLOSED
OPEN = pybreaker.STATE_OPEN
HALF_OPEN = pybreaker.STATE_HALF_OPEN

ExcludeSpec = type[BaseException] | Callable[[BaseException], bool]


class CircuitOpenError(MeshError, pybreaker.CircuitBreakerError):
    """The breaker refused the call without running it (open, or half-open with a probe out)."""

    def __init__(self, name: str, reason: str) -> None:
        self.breaker = name
        self.reason = reason
        super().__init__(f"circuit breaker {name!r} refused the call: {reason}")


StateListener = Callable[[str, str, str], None]
"""Called with (breaker name, old state, new state) on every transition."""

_state_listeners: list[StateListener] = []


def add_state_listener(listener: StateListener) -> None:
    """Subscribe to every breaker's transitions (metrics use this)."""
    _state_listeners.append(listener)


def remove_state_listener(listener: StateListener) -> None:
    _state_listeners.remove(listener)


class _TransitionListener(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old = old_state.name if old_state is not None else CLOSED
        new = new_state.name
        level = logging.WARNING if new == OPEN else logging.INFO
        name = cb.name or ""
        _log.log(level, "circuit breaker %r: %s -> %s", name, old, new)
        for listener in tuple(_state_listeners):
            listener(name, old, new)


class _Replay:
    """Feeds one outcome into pybreaker's state machine."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def __call__(self) -> None:
        if self.error is not None:
            raise self.error


class CircuitBreaker:
    """A named breaker usable as a decorator and a (async) context manager, sync and async.

    Semantics: ``fail_max`` consecutive failures open it; after ``reset_timeout`` seconds one
    probe call is admitted (half-open); ``success_threshold`` probe successes close it, a probe
    failure opens it again. Exceptions matching ``exclude`` count as successes (pybreaker's
    rule). The failing call raises its own exception; refused calls raise ``CircuitOpenError``.
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int = 5,
        reset_timeout: float = 60.0,
        success_threshold: int = 1,
        exclude: Iterable[ExcludeSpec] = (),
        state_storage: pybreaker.CircuitBreakerStorage | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        if fail_max < 1:
            raise ValueError("fail_max must be at least 1")
        if reset_timeout < 0:
            raise ValueError("reset_timeout must not be negative")
        if success_threshold < 1:
            raise ValueError("success_threshold must be at least 1")
        self.name = name
        self._now = now
        self._guard = threading.Lock()
        self._probe_out = False
        self._probes: ContextVar[tuple[bool, ...]] = ContextVar(f"breaker:{name}", default=())
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            success_threshold=success_threshold,
            exclude=list(exclude),
            listeners=[_TransitionListener()],
            state_storage=state_storage,
            name=name,
            throw_new_error_on_trip=False,
        )

    # --- what users read -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (pybreaker's names)."""
        return self._breaker.current_state

    @property
    def fail_counter(self) -> int:
        return self._breaker.fail_counter

    @property
    def fail_max(self) -> int:
        return self._breaker.fail_max

    @property
    def reset_timeout(self) -> float:
        return self._breaker.reset_timeout

    @property
    def success_threshold(self) -> int:
        return self._breaker.success_threshold

    @property
    def pybreaker(self) -> pybreaker.CircuitBreaker:
        """The underlying pybreaker object (state storage, listeners)."""
        return self._breaker

    def open(self) -> None:
        """Force the breaker open (for drills and tests)."""
        with self._guard:
            self._breaker.open()

    def close(self) -> None:
        """Force the breaker closed."""
        with self._guard:
            self._probe_out = False
            self._breaker.close()

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state} failures={self.fail_counter}>"

    # --- admission and outcome -------------------------------------------------------------

    def _admit(self) -> bool:
        """Decide before the call; returns whether this call is the half-open probe."""
        with self._guard:
            state = self._breaker.current_state
            if state == OPEN:
                opened_at = self._breaker._state_storage.opened_at
                elapsed = self._now() - opened_at.timestamp() if opened_at else float("inf")
                if elapsed < self._breaker.reset_timeout:
                    raise CircuitOpenError(self.name, "open")
                self._breaker.half_open()
                state = HALF_OPEN
            if state == HALF_OPEN:
                if self._probe_out:
                    raise CircuitOpenError(self.name, "half-open, a probe call is in flight")
                self._probe_out = True
                return True
            return False

    def _record(self, probe: bool, error: BaseException | None) -> None:
        with self._guard:
            if probe:
                self._probe_out = False
            state = self._breaker.current_state
            if state == OPEN or (state == HALF_OPEN and not probe):
                # A late result of a call admitted before the breaker opened: the probe decides.
                return
            try:
                self._breaker.call(_Replay(error))
            except BaseException as replayed:
                if replayed is not error:  # pragma: no cover - pybreaker raising its own error
                    raise

    # --- context managers ------------------------------------------------------------------

    def __enter__(self) -> CircuitBreaker:
        # Whether this block is the half-open probe travels in a context variable holding an
        # immutable stack: each thread and each asyncio task sees only its own blocks.
        self._probes.set((*self._probes.get(), self._admit()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        *outer, probe = self._probes.get()
        self._probes.set(tuple(outer))
        self._record(probe, _counted(exc))

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # --- decorator -------------------------------------------------------------------------

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, func: Callable[P, Any]) -> Callable[P, Any]:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                probe = self._admit()
                try:
                    result = await func(*args, **kwargs)
                except BaseException as error:
                    self._record(probe, _counted(error))
                    raise
                self._record(probe, None)
                return result

            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            probe = self._admit()
            try:
                result = func(*args, **kwargs)
            except BaseException as error:
                self._record(probe, _counted(error))
                raise
            self._record(probe, None)
            return result

        return wrapper


def _counted(error: BaseException | None) -> BaseException | None:
    """Cancellation is the caller leaving, not the dependency failing."""
    if error is None or isinstance(error, GeneratorExit | KeyboardInterrupt | SystemExit):
        return None
    if type(error).__name__ == "CancelledError":
        return None
    return error


_registry: dict[str, CircuitBreaker] = {}
_registry_lock = threading.Lock()


def circuit_breaker(
    name: str,
    *,
    fail_max: int = 5,
    reset_timeout: float = 60.0,
    success_threshold: int = 1,
    exclude: Iterable[ExcludeSpec] = (),
) -> CircuitBreaker:
    """Return the breaker called ``name``, creating it on first use.

    Use it as ``@meshlib.circuit_breaker("payments-db", fail_max=5, reset_timeout=30)`` on sync or
    async functions, or as ``with``/``async with``. Asking again for the same name returns the
    same breaker, so every call site shares one state; asking with different settings is an error.
    """
    exclude = tuple(exclude)
    with _registry_lock:
        existing = _registry.get(name)
        if existing is not None:
            wanted = (fail_max, reset_timeout, success_threshold, exclude)
            have = (
                existing.fail_max,
                existing.reset_timeout,
                existing.success_threshold,
                tuple(existing.pybreaker.excluded_exceptions),  # type: ignore[arg-type]
            )
            if wanted != have:
                raise ValueError(
                    f"circuit breaker {name!r} already exists with other settings: "
                    f"fail_max={have[0]}, reset_timeout={have[1]}, success_threshold={have[2]}"
                )
            return existing
        breaker = CircuitBreaker(
            name,
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            success_threshold=success_threshold,
            exclude=exclude,
        )
        _registry[name] = breaker
        return breaker


def breakers() -> dict[str, CircuitBreaker]:
    """Every breaker created through ``circuit_breaker``, by name."""
    with _registry_lock:
        return dict(_registry)


def _forget_all() -> None:
    """For tests: drop the registry."""
    with _registry_lock:
        _registry.clear()
