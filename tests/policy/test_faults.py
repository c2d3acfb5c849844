"""Fault injection decisions: delay first, abort drawn independently."""

from __future__ import annotations

from collections.abc import Iterable

from meshlib._model import SystemRandom
from meshlib._policy.faults import FaultPolicy, decide_abort, decide_delay


class ScriptedRandom:
    def __init__(self, floats: Iterable[float] = ()) -> None:
        self.floats = list(floats)

    def random(self) -> float:
        return self.floats.pop(0)

    def randrange(self, stop: int, /) -> int:
        raise AssertionError("faults draw floats only")


def test_no_delay_configured() -> None:
    assert (
        decide_delay(FaultPolicy(abort_http_status=500, abort_fraction=1.0), ScriptedRandom())
        is None
    )


def test_delay_fraction_zero_and_one_draw_nothing() -> None:
    assert decide_delay(FaultPolicy(delay=7.0, delay_fraction=0.0), ScriptedRandom()) is None
    assert decide_delay(FaultPolicy(delay=7.0, delay_fraction=1.0), ScriptedRandom()) == 7.0


def test_delay_partial_fraction_compares_one_draw() -> None:
    fault = FaultPolicy(delay=0.5, delay_fraction=0.25)
    assert decide_delay(fault, ScriptedRandom([0.2499])) == 0.5
    assert decide_delay(fault, ScriptedRandom([0.25])) is None


def test_delay_rate_over_seeded_draws() -> None:
    fault = FaultPolicy(delay=1.0, delay_fraction=0.1)
    rng = SystemRandom(11)
    fired = sum(decide_delay(fault, rng) is not None for _ in range(10_000))
    assert abs(fired / 10_000 - 0.1) < 0.02


def test_no_abort_configured() -> None:
    assert (
        decide_abort(FaultPolicy(delay=1.0, delay_fraction=1.0), ScriptedRandom(), grpc=False)
        is None
    )


def test_http_abort() -> None:
    fault = FaultPolicy(abort_http_status=500, abort_fraction=1.0)
    reply = decide_abort(fault, ScriptedRandom(), grpc=False)
    assert reply is not None
    assert (reply.status, reply.body, reply.flags, reply.grpc_status) == (
        500,
        "fault filter abort",
        ("FI",),
        None,
    )


def test_grpc_call_aborts_with_trailers_only_status() -> None:
    by_code = decide_abort(
        FaultPolicy(abort_grpc_status=14, abort_fraction=1.0), ScriptedRandom(), grpc=True
    )
    assert by_code is not None
    assert (by_code.status, by_code.grpc_status, by_code.body) == (200, 14, "fault filter abort")
    by_http = decide_abort(
        FaultPolicy(abort_http_status=503, abort_fraction=1.0), ScriptedRandom(), grpc=True
    )
    assert by_http is not None
    assert (by_http.status, by_http.grpc_status) == (200, 14)


def test_grpc_status_abort_on_http_call_is_503() -> None:
    reply = decide_abort(
        FaultPolicy(abort_grpc_status=14, abort_fraction=1.0), ScriptedRandom(), grpc=False
    )
    assert reply is not None
    assert (reply.status, reply.grpc_status) == (503, None)


def test_abort_fraction() -> None:
    fault = FaultPolicy(abort_http_status=500, abort_fraction=0.5)
    assert decide_abort(fault, ScriptedRandom([0.4]), grpc=False) is not None
    assert decide_abort(fault, ScriptedRandom([0.6]), grpc=False) is None
    assert decide_abort(FaultPolicy(abort_http_status=500), ScriptedRandom(), grpc=False) is None


def test_delay_and_abort_draw_independently_in_order() -> None:
    fault = FaultPolicy(delay=2.0, delay_fraction=0.5, abort_http_status=500, abort_fraction=0.5)
    rng = ScriptedRandom([0.9, 0.1])  # delay misses, abort hits
    assert decide_delay(fault, rng) is None
    assert decide_abort(fault, rng, grpc=False) is not None
    assert rng.floats == []
