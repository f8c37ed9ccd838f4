"""The consumer's picture of which adapters each model replica holds on its device.

A replica reports its device adapters in its heartbeat every few seconds; between beats
the consumer knows what it sent where. The picture is the last beat with the jobs sent
since replayed on top, as the replica's LRU would take them. It is a hint for placement
only: the replica's adapter store alone decides what it loads and evicts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class _Picture:
    beat_ts: float = 0.0
    adapters: OrderedDict[str, None] = field(default_factory=OrderedDict)  # LRU first
    sent: dict[str, float] = field(default_factory=dict)  # adapter -> last send, epoch s


class WarmSets:
    """Device adapters per replica (least recently used first), ``slots`` at most each."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._pictures: dict[str, _Picture] = {}

    def replicas(self) -> list[str]:
        """Replicas known now, in the order they were first seen."""
        return list(self._pictures)

    def warm(self, replica: str) -> tuple[str, ...]:
        """Adapters ``replica`` holds, least recently used first."""
        picture = self._pictures.get(replica)
        return tuple(picture.adapters) if picture else ()

    def beat(self, replica: str, adapters: Sequence[str], ts: float) -> None:
        """A heartbeat made at ``ts`` reported ``adapters`` (LRU first) on the device."""
        picture = self._pictures.setdefault(replica, _Picture())
        if ts < picture.beat_ts:
            return  # an older beat than the one already applied
        picture.beat_ts = ts
        picture.adapters = OrderedDict.fromkeys(adapters[-self.slots :])
        # Sends the beat cannot have seen yet are replayed; older ones it already shows.
        picture.sent = {name: at for name, at in picture.sent.items() if at > ts}
        for name in sorted(picture.sent, key=picture.sent.__getitem__):
            self._use(picture, name)

    def sent(self, replica: str, adapter: str, now: float) -> None:
        """A job of ``adapter`` was sent to ``replica`` at ``now`` (epoch seconds)."""
        picture = self._pictures.setdefault(replica, _Picture())
        picture.sent[adapter] = now
        self._use(picture, adapter)

    def keep_only(self, replicas: Sequence[str]) -> None:
        """Forget replicas that are gone."""
        for replica in set(self._pictures) - set(replicas):
            del self._pictures[replica]

    def _use(self, picture: _Picture, adapter: str) -> None:
        picture.adapters[adapter] = None
        picture.adapters.move_to_end(adapter)
        while len(picture.adapters) > self.slots:
            picture.adapters.popitem(last=False)
