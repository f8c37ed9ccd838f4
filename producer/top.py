"""``loraq top``: the queue, its consumers and the model replicas, redrawn every interval.

Everything comes from Redis (:meth:`Producer.stats`): the workers need not be reachable.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live

from producer.client import Producer
from producer.rates import Readings
from producer.top_view import TopFrame, render


def next_frame(producer: Producer, readings: Readings) -> TopFrame:
    """Read the queue's state once and make the frame that shows it."""
    stats = producer.stats()
    now = time.time()
    return TopFrame(producer.keys.prefix, stats, readings.add(stats, now), now)


def run_top(producer: Producer, *, interval_s: float, frames: int | None, console: Console) -> None:
    """Draw ``frames`` frames (``None``: until Ctrl-C), ``interval_s`` apart.

    One frame is printed as it is (a snapshot for a file or a test); more are redrawn in
    place with :class:`rich.live.Live`.
    """
    readings = Readings()
    if frames == 1:
        console.print(render(next_frame(producer, readings), console.height))
        return
    drawn = 0
    with Live(console=console, auto_refresh=False, vertical_overflow="crop") as live:
        while frames is None or drawn < frames:
            if drawn:
                time.sleep(interval_s)
            live.update(render(next_frame(producer, readings), console.height), refresh=True)
            drawn += 1
