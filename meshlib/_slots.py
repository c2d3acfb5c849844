"""Waiting for a cluster slot (the flow's ``WaitSlot``): one implementation for every driver.

The httpx and gRPC drivers, sync and async, wait the same way: join the cluster's FIFO, wake
when a releasing request hands its slot over (possibly from another thread), give up at the
timeout — and if the slot arrived while giving up, keep it or hand it back.
"""

from __future__ import annotations

import threading

import anyio
import sniffio

from meshlib._engine.outbound import WaitSlot
from meshlib._model.outcome import FailureKind, Outcome

__all__ = ["POLL_INTERVAL", "WAIT_TIMED_OUT", "wait_slot_async", "wait_slot_blocking"]

WAIT_TIMED_OUT = Outcome(failure=FailureKind.TIMEOUT, detail="waiting for a connection")
POLL_INTERVAL = 0.001
"""How often a non-asyncio event loop checks whether its queued request was admitted."""


def wait_slot_blocking(command: WaitSlot) -> Outcome | None:
    """For sync drivers: ``None`` once admitted, ``WAIT_TIMED_OUT`` after giving up."""
    cluster = command.cluster
    event = threading.Event()
    waiter = cluster.wait_for_slot(event.set)
    if waiter.admitted:
        return None
    try:
        woken = event.wait(command.timeout)
    except BaseException:
        if not cluster.cancel_wait(waiter):
            cluster.release()  # handed a slot meanwhile; the flow never learnt it held one
        raise
    if woken or not cluster.cancel_wait(waiter):
        return None
    return WAIT_TIMED_OUT


async def wait_slot_async(command: WaitSlot) -> Outcome | None:
    """For async drivers: the same, without blocking the event loop."""
    cluster = command.cluster
    if sniffio.current_async_library() != "asyncio":
        return await _poll_slot(command)
    # Imported here (already loaded: we run on its loop), so sync-only clients never load it.
    import asyncio

    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not future.done():
            future.set_result(None)

    def wake() -> None:
        # The slot may be handed over by a sync client on another thread.
        loop.call_soon_threadsafe(settle)

    waiter = cluster.wait_for_slot(wake)
    if waiter.admitted:
        return None
    try:
        async with asyncio.timeout(command.timeout):
            await future
    except TimeoutError:
        if cluster.cancel_wait(waiter):
            return WAIT_TIMED_OUT
        return None
    except BaseException:
        if not cluster.cancel_wait(waiter):
            cluster.release()  # handed a slot meanwhile; the flow never learnt it held one
        raise
    return None


async def _poll_slot(command: WaitSlot) -> Outcome | None:
    cluster = command.cluster
    waiter = cluster.wait_for_slot(lambda: None)
    try:
        with anyio.move_on_after(command.timeout):
            while not waiter.admitted:  # noqa: ASYNC110 - the wake may come from another thread
                await anyio.sleep(POLL_INTERVAL)
            return None
    except BaseException:
        if not cluster.cancel_wait(waiter):
            cluster.release()
        raise
    if cluster.cancel_wait(waiter):
        return WAIT_TIMED_OUT
    return None
