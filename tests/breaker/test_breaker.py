"""meshlib.circuit_breaker: pybreaker state machine, single-probe half-open, sync and async."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from meshlib import _breaker
from meshlib._breaker import CircuitBreaker, CircuitOpenError, breakers, circuit_breaker


class Boom(Exception):
    pass


class Ignored(Exception):
    pass


class Jump:
    """Wall clock plus an offset the test moves: opened_at comes from pybreaker's real clock."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    _breaker._forget_all()
    yield
    _breaker._forget_all()


def failing() -> None:
    raise Boom("down")


def make(**kwargs: object) -> tuple[CircuitBreaker, Jump]:
    clock = Jump()
    breaker = CircuitBreaker("db", now=clock, **kwargs)  # type: ignore[arg-type]
    return breaker, clock


def test_consecutive_failures_open_and_the_failing_call_keeps_its_error() -> None:
    breaker, _ = make(fail_max=3, reset_timeout=30)
    guarded = breaker(failing)
    for _ in range(3):
        with pytest.raises(Boom):
            guarded()
    assert breaker.state == "open"
    calls = []
    with pytest.raises(CircuitOpenError, match="'db' refused the call: open"):
        breaker(lambda: calls.append(1))()
    assert calls == []


def test_a_success_resets_the_count() -> None:
    breaker, _ = make(fail_max=2)
    guarded = breaker(failing)
    ok = breaker(lambda: "ok")
    with pytest.raises(Boom):
        guarded()
    assert ok() == "ok"
    with pytest.raises(Boom):
        guarded()
    assert breaker.state == "closed"
    assert breaker.fail_counter == 1


def test_excluded_exceptions_count_as_success() -> None:
    breaker, _ = make(fail_max=1, exclude=[Ignored])

    @breaker
    def not_found() -> None:
        raise Ignored

    for _ in range(3):
        with pytest.raises(Ignored):
            not_found()
    assert breaker.state == "closed"


def test_half_open_admits_one_probe_and_success_closes() -> None:
    breaker, clock = make(fail_max=1, reset_timeout=30)
    with pytest.raises(Boom):
        breaker(failing)()
    clock.offset = 31
    inside, release = threading.Event(), threading.Event()
    refused: list[BaseException] = []

    @breaker
    def probe() -> str:
        inside.set()
        release.wait(5)
        return "ok"

    worker = threading.Thread(target=probe)
    worker.start()
    assert inside.wait(5)
    assert breaker.state == "half-open"
    try:
        breaker(lambda: None)()
    except CircuitOpenError as error:
        refused.append(error)
    release.set()
    worker.join(5)
    assert len(refused) == 1
    assert "probe call is in flight" in str(refused[0])
    assert breaker.state == "closed"


def test_failed_probe_opens_again() -> None:
    breaker, clock = make(fail_max=1, reset_timeout=10)
    with pytest.raises(Boom):
        breaker(failing)()
    clock.offset = 11
    with pytest.raises(Boom):
        breaker(failing)()
    assert breaker.state == "open"
    clock.offset = 0  # the new opening starts a new reset_timeout
    with pytest.raises(CircuitOpenError):
        breaker(lambda: None)()


def test_success_threshold_needs_several_probes() -> None:
    breaker, clock = make(fail_max=1, reset_timeout=1, success_threshold=2)
    with pytest.raises(Boom):
        breaker(failing)()
    clock.offset = 2
    breaker(lambda: None)()
    assert breaker.state == "half-open"
    breaker(lambda: None)()
    assert breaker.state == "closed"


def test_threads_are_not_serialised_by_the_breaker() -> None:
    breaker, _ = make()
    barrier = threading.Barrier(4, timeout=5)

    @breaker
    def meet() -> None:
        barrier.wait()  # only passes when all four are inside the breaker at once

    threads = [threading.Thread(target=meet) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert not barrier.broken
    assert breaker.state == "closed"


async def test_async_functions_run_concurrently_and_failures_count() -> None:
    breaker, _ = make(fail_max=2)
    started = 0
    all_in = asyncio.Event()

    @breaker
    async def call(fail: bool) -> str:
        nonlocal started
        started += 1
        if started == 10:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 5)
        if fail:
            raise Boom
        return "ok"

    assert await asyncio.gather(*(call(False) for _ in range(10))) == ["ok"] * 10
    for _ in range(2):
        with pytest.raises(Boom):
            await call(True)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        await call(False)


async def test_cancellation_is_not_a_failure() -> None:
    breaker, _ = make(fail_max=1)

    @breaker
    async def slow() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == "closed"


def test_context_manager_counts_the_block() -> None:
    breaker, clock = make(fail_max=1, reset_timeout=5)
    with pytest.raises(Boom), breaker:
        raise Boom
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError), breaker:
        pass
    clock.offset = 6
    with breaker:
        with pytest.raises(CircuitOpenError):  # the outer block is the probe
            with breaker:
                pass
    assert breaker.state == "closed"


async def test_async_context_manager() -> None:
    breaker, _ = make(fail_max=1)
    async with breaker:
        await asyncio.sleep(0)
    with pytest.raises(Boom):
        async with breaker:
            raise Boom
    assert breaker.state == "open"


def test_late_result_of_a_call_admitted_before_opening_is_ignored() -> None:
    breaker, _ = make(fail_max=1, reset_timeout=5)
    with breaker:  # admitted while closed
        with pytest.raises(Boom):
            breaker(failing)()  # meanwhile another call trips it
        assert breaker.state == "open"
    assert breaker.state == "open"  # the late success did not close it


def test_state_changes_reach_listeners_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, str, str]] = []

    def listener(name: str, old: str, new: str) -> None:
        seen.append((name, old, new))

    _breaker.add_state_listener(listener)
    try:
        breaker, clock = make(fail_max=1, reset_timeout=1)
        with caplog.at_level(logging.INFO, logger="meshlib.breaker"), pytest.raises(Boom):
            breaker(failing)()
        clock.offset = 2
        breaker(lambda: None)()
    finally:
        _breaker.remove_state_listener(listener)
    assert seen == [
        ("db", "closed", "open"),
        ("db", "open", "half-open"),
        ("db", "half-open", "closed"),
    ]
    assert "circuit breaker 'db': closed -> open" in caplog.text


def test_forcing_states() -> None:
    breaker, _ = make()
    breaker.open()
    assert breaker.state == "open"
    breaker.close()
    assert breaker.state == "closed"
    assert "closed" in repr(breaker)


def test_registry_returns_one_breaker_per_name() -> None:
    first = circuit_breaker("payments-db", fail_max=5, reset_timeout=30)
    assert circuit_breaker("payments-db", fail_max=5, reset_timeout=30) is first
    assert breakers() == {"payments-db": first}
    with pytest.raises(ValueError, match="already exists with other settings"):
        circuit_breaker("payments-db", fail_max=6, reset_timeout=30)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fail_max": 0}, "fail_max"),
        ({"reset_timeout": -1}, "reset_timeout"),
        ({"success_threshold": 0}, "success_threshold"),
    ],
)
def test_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker("x", **kwargs)  # type: ignore[arg-type]
