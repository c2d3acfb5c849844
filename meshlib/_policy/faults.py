"""VirtualService ``fault``: delay and abort by percentage (ISTIO-SEMANTICS 1.7)."""

from __future__ import annotations

from dataclasses import dataclass

from meshlib._model.commands import Reply
from meshlib._model.runtime import Random
from meshlib._policy.replies import fault_abort_reply


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    delay: float | None = None
    """Fixed delay in seconds."""
    delay_fraction: float = 0.0
    """In [0, 1]; Istio's ``percentage`` / 100. Absent percentage means 0 (never fires)."""
    abort_http_status: int | None = None
    abort_grpc_status: int | None = None
    """gRPC status code number (the YAML gives the upper-case name)."""
    abort_fraction: float = 0.0


def _fires(fraction: float, rng: Random) -> bool:
    # 0 % and 100 % draw nothing: cheaper, and a seeded sequence is not shifted by them.
    if fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    return rng.random() < fraction


def decide_delay(fault: FaultPolicy, rng: Random) -> float | None:
    """Seconds to delay this request, or ``None``. Drawn first; the flow then sleeps."""
    if fault.delay is None or not _fires(fault.delay_fraction, rng):
        return None
    return fault.delay


def decide_abort(fault: FaultPolicy, rng: Random, *, grpc: bool) -> Reply | None:
    """The abort reply for this request, or ``None``; drawn independently after the delay."""
    if fault.abort_http_status is None and fault.abort_grpc_status is None:
        return None
    if not _fires(fault.abort_fraction, rng):
        return None
    return fault_abort_reply(fault.abort_http_status, fault.abort_grpc_status, grpc=grpc)
