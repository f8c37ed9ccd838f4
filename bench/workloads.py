"""Adapter workloads and what an ideal cache would do with them: pure Python, no I/O.

A workload is a seeded sequence of adapter names (``None`` = base model), the order in
which jobs are submitted. Every mode of a bench run gets the same sequence, so their
loads, waits and throughput compare like for like. The yardsticks for device loads are
the floor (each distinct adapter loaded once) and an ideal shared LRU over all device
slots, fed the jobs in submission order.

Not a benchmark: ``make bench`` runs only the modules listed in its ``BENCHES``.
"""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["zipf", "uniform", "base"]


@dataclass(frozen=True)
class Workload:
    """``jobs`` jobs over ``adapters`` adapters (drawn by ``kind``), seeded by ``seed``."""

    name: str
    kind: Kind
    jobs: int
    adapters: int = 0
    zipf_s: float = 1.1
    seed: int = 0


def zipf_weights(count: int, s: float) -> list[float]:
    """Cumulative weights of ranks 1..count under Zipf(s): P(k) ∝ k^-s."""
    return list(itertools.accumulate(rank**-s for rank in range(1, count + 1)))


def sequence(workload: Workload, names: Sequence[str]) -> list[str | None]:
    """The workload's adapter per job, drawn from ``names`` (``len(names) >= adapters``).

    Zipf ranks are mapped to names through a seeded shuffle, so that the hot adapters of
    one workload are not those of another run just before it on the same replicas.
    """
    rng = random.Random(workload.seed)
    if workload.kind == "base":
        return [None] * workload.jobs
    pool = list(names[: workload.adapters])
    if len(pool) < workload.adapters:
        raise ValueError(f"{workload.name} needs {workload.adapters} names, got {len(pool)}")
    rng.shuffle(pool)
    if workload.kind == "uniform":
        return [rng.choice(pool) for _ in range(workload.jobs)]
    weights = zipf_weights(len(pool), workload.zipf_s)
    return list(rng.choices(pool, cum_weights=weights, k=workload.jobs))


def floor(adapters: Sequence[str | None]) -> int:
    """Device loads if every adapter were loaded once: the distinct adapters used."""
    return len({name for name in adapters if name is not None})


def lru_misses(adapters: Sequence[str | None], slots: int) -> int:
    """Misses of one LRU cache of ``slots`` adapters fed ``adapters`` in order, from cold.

    An ideal shared cache: one pool over every replica's slots, no concurrency, no
    pinning; base-model jobs need no slot.
    """
    cache: OrderedDict[str, None] = OrderedDict()
    misses = 0
    for name in adapters:
        if name is None:
            continue
        if name in cache:
            cache.move_to_end(name)
            continue
        misses += 1
        cache[name] = None
        if len(cache) > slots:
            cache.popitem(last=False)
    return misses


def longest_passover(started_at: Sequence[float]) -> float:
    """The longest time a job stayed waiting after a job submitted behind it had started.

    ``started_at`` is in submission order. A job is passed over from the moment the first
    later job starts until it starts itself; under FIFO dispatch that is only the jitter
    of concurrent starts. It is the wait a scheduler adds by reordering, which the time in
    the queue is not: with all jobs submitted at once, the last one waits for the whole
    run whatever the order.
    """
    longest = 0.0
    earliest_later = float("inf")
    for started in reversed(started_at):
        longest = max(longest, started - earliest_later)
        earliest_later = min(earliest_later, started)
    return longest
