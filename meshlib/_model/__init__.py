"""Neutral values shared by every layer: calls, outcomes, endpoints, commands.

Standard library only. Nothing here knows httpx, grpc, asyncio or pydantic.
"""

from meshlib._model.call import Call, HeaderView, Peer, split_path
from meshlib._model.commands import Attempt, Command, Deliver, Reply, Send, Sleep
from meshlib._model.endpoint import Endpoint
from meshlib._model.outcome import Classification, FailureKind, Outcome
from meshlib._model.runtime import Clock, MonotonicClock, Random, SystemRandom

__all__ = [
    "Attempt",
    "Call",
    "Classification",
    "Clock",
    "Command",
    "Deliver",
    "Endpoint",
    "FailureKind",
    "HeaderView",
    "MonotonicClock",
    "Outcome",
    "Peer",
    "Random",
    "Reply",
    "Send",
    "Sleep",
    "SystemRandom",
    "split_path",
]
