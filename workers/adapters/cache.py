"""Which adapters stay on the device: a pure LRU policy with pins (no torch, no I/O).

The policy only decides; the caller carries the decisions out (loads and deletes on the
model) and reports back with :meth:`AdapterCachePolicy.loaded` / :meth:`load_failed`.
Slots are counted for loaded *and* loading adapters, so the device never holds more
than ``capacity`` adapters, even while loads are in flight.

Invariant: an adapter with a pin count above zero is never chosen for eviction; a
request pins its adapter before it is queued and unpins it when its row has left the
batch, so an adapter in use is never deleted under a running forward pass.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import Enum


class SlotState(str, Enum):
    """Where an adapter that holds a slot is."""

    LOADING = "loading"
    LOADED = "loaded"


@dataclass(frozen=True)
class LoadPlan:
    """What the caller must do to bring ``name`` onto the device: evict, then load."""

    name: str
    evict: tuple[str, ...]


@dataclass
class CacheCounters:
    """How the cache has been used since start."""

    hits: int = 0
    loads: int = 0
    load_failures: int = 0
    evictions: int = 0


@dataclass
class AdapterCachePolicy:
    """LRU over at most ``capacity`` adapters; pinned adapters are never evicted."""

    capacity: int
    counters: CacheCounters = field(default_factory=CacheCounters)
    # Least recently used first; holds LOADING and LOADED adapters.
    _slots: OrderedDict[str, SlotState] = field(default_factory=OrderedDict)
    _pins: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("capacity must be at least 1")

    def state(self, name: str) -> SlotState | None:
        """``LOADED``, ``LOADING``, or ``None`` when the adapter holds no slot."""
        return self._slots.get(name)

    def loaded_names(self) -> list[str]:
        """Adapters on the device, least recently used first."""
        return [name for name, state in self._slots.items() if state is SlotState.LOADED]

    def pin_count(self, name: str) -> int:
        """How many requests in flight use ``name``."""
        return self._pins[name]

    def pin(self, name: str) -> None:
        """Mark one more request using ``name``; it must hold a slot (loaded or loading)."""
        if name not in self._slots:
            raise KeyError(f"adapter {name!r} holds no slot")
        self._pins[name] += 1
        self._slots.move_to_end(name)

    def unpin(self, name: str) -> None:
        """One request using ``name`` is done with it."""
        if self._pins[name] <= 0:
            raise KeyError(f"adapter {name!r} is not pinned")
        self._pins[name] -= 1
        if self._pins[name] == 0:
            del self._pins[name]

    def hit(self, name: str) -> bool:
        """Pin ``name`` if it is loaded (a cache hit) and say whether it was."""
        if self._slots.get(name) is not SlotState.LOADED:
            return False
        self.pin(name)
        self.counters.hits += 1
        return True

    def plan_load(self, name: str, *, evict: bool = True) -> LoadPlan | None:
        """Reserve a slot for ``name``, choosing unpinned LRU adapters to evict.

        Returns ``None`` when every slot is pinned or loading (or, with ``evict=False``,
        when no slot is free): the caller waits for an unpin and asks again, or gives up.
        On success ``name`` is LOADING and pinned once (for the caller), and the evicted
        adapters no longer hold slots.
        """
        if name in self._slots:
            raise ValueError(f"adapter {name!r} already holds a slot")
        needed = len(self._slots) + 1 - self.capacity
        if needed > 0 and not evict:
            return None
        victims = [
            other
            for other, state in self._slots.items()
            if state is SlotState.LOADED and self._pins[other] == 0
        ][: max(needed, 0)]
        if len(victims) < needed:
            return None
        for victim in victims:
            del self._slots[victim]
        self.counters.evictions += len(victims)
        self._slots[name] = SlotState.LOADING
        self.pin(name)
        return LoadPlan(name=name, evict=tuple(victims))

    def loaded(self, name: str) -> None:
        """The load planned for ``name`` succeeded."""
        if self._slots.get(name) is not SlotState.LOADING:
            raise KeyError(f"adapter {name!r} is not loading")
        self._slots[name] = SlotState.LOADED
        self.counters.loads += 1

    def load_failed(self, name: str) -> None:
        """The load planned for ``name`` failed: free its slot and every pin on it.

        Requests that pinned ``name`` while it was loading get the failure too and must
        not unpin.
        """
        if self._slots.get(name) is not SlotState.LOADING:
            raise KeyError(f"adapter {name!r} is not loading")
        del self._slots[name]
        self._pins.pop(name, None)
        self.counters.load_failures += 1

    def remove(self, name: str) -> bool:
        """Give up ``name``'s slot if it is loaded and unpinned; says whether it did.

        The caller then deletes it from the device (an unregistered adapter, not an
        eviction: the counters do not count it).
        """
        if self._slots.get(name) is not SlotState.LOADED or self._pins[name] > 0:
            return False
        del self._slots[name]
        return True
