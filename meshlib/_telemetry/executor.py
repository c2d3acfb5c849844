"""``MeshThreadPoolExecutor``: a thread pool that carries the request context into its tasks.

Apart from ``context.py`` (which re-exports it) so that concurrent.futures loads only when a pool
is made; the outbound path needs the context functions, not the pool.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["MeshThreadPoolExecutor"]

P = ParamSpec("P")
R = TypeVar("R")


class MeshThreadPoolExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose ``submit`` (and so ``map``) runs in the submitter's context.

    Also the right executor for ``loop.run_in_executor`` and ``loop.set_default_executor``.
    """

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        ctx = contextvars.copy_context()
        return super().submit(functools.partial(ctx.run, fn, *args, **kwargs))
