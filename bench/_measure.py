"""What the benches share: ports, core pinning and the estimators.

Benches run as scripts (``python bench/bench_x.py``), so this directory is on ``sys.path``.
"""

from __future__ import annotations

import os
import socket
import statistics

TAIL_WINDOW = 500
"""Requests per variant in one window of the paired p99: ten alternating batches of 50."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pin_client() -> None:
    """Client on the first core, upstream on the last (when there are two or more): the
    scheduler then never moves them onto each other's core mid-measurement."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) >= 2:
        os.sched_setaffinity(0, {cores[0]})


def server_core() -> None:
    """``preexec_fn`` of the upstream's child process: the last core."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) >= 2:
        os.sched_setaffinity(0, {cores[-1]})


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def paired_median(batches: list[float], bare_batches: list[float]) -> float:
    """The median of per-batch differences (batches of two variants sent one after the other):
    load that drifts between batches cancels out, which pooled percentiles do not."""
    return statistics.median(m - b for m, b in zip(batches, bare_batches, strict=True))


def paired_tail(samples: list[float], bare_samples: list[float]) -> float:
    """The median over windows of (p99 - bare p99), each window's requests sent in alternating
    batches at the same time: the tail a variant adds, without the bursts of other load on a
    shared machine that land in one variant's pooled p99 and not in the other's."""
    count = min(len(samples), len(bare_samples))
    windows = [
        percentile(samples[i : i + TAIL_WINDOW], 0.99)
        - percentile(bare_samples[i : i + TAIL_WINDOW], 0.99)
        for i in range(0, count - TAIL_WINDOW + 1, TAIL_WINDOW)
    ]
    return statistics.median(windows) if windows else float("nan")
