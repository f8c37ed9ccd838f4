"""Which parsed adapters stay in host memory: a pure LRU by bytes, with pins (no torch, no I/O).

The policy only decides; :class:`workers.adapters.host_store.HostStore` reads the
adapters on its loader thread, keeps their tensors and drops the ones this policy names.
An adapter holds an entry while it loads (at zero bytes, pinned by whoever asked for it),
so concurrent askers share one load.

Invariants: a pinned or loading entry is never evicted; whenever the unpinned entries
are enough to get under the budget, the bytes held stay within it (an adapter in use may
push the total over the budget until it is unpinned).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field


@dataclass
class HostCounters:
    """How the host tier has been used since start."""

    hits: int = 0
    loads: int = 0
    load_failures: int = 0
    evictions: int = 0


@dataclass
class HostCachePolicy:
    """LRU by bytes over parsed adapters; pinned and loading entries are never evicted."""

    budget_bytes: int
    counters: HostCounters = field(default_factory=HostCounters)
    # Least recently used first: name -> bytes (0 while loading).
    _sizes: OrderedDict[str, int] = field(default_factory=OrderedDict)
    _loading: set[str] = field(default_factory=set)
    _pins: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.budget_bytes < 0:
            raise ValueError("budget_bytes must not be negative")

    @property
    def bytes_used(self) -> int:
        """Bytes of the loaded entries."""
        return sum(self._sizes.values())

    def names(self) -> list[str]:
        """Loaded entries, least recently used first."""
        return [name for name in self._sizes if name not in self._loading]

    def has(self, name: str) -> bool:
        """Whether ``name`` holds an entry (loaded or loading)."""
        return name in self._sizes

    def is_loading(self, name: str) -> bool:
        """Whether ``name``'s load is under way."""
        return name in self._loading

    def pin_count(self, name: str) -> int:
        """How many users hold ``name`` now."""
        return self._pins[name]

    def hit(self, name: str) -> bool:
        """Pin ``name`` if it is loaded (a hit) and say whether it was."""
        if name not in self._sizes or name in self._loading:
            return False
        self.pin(name)
        self.counters.hits += 1
        return True

    def pin(self, name: str) -> None:
        """One more user of ``name``, which must hold an entry (loaded or loading)."""
        if name not in self._sizes:
            raise KeyError(f"adapter {name!r} holds no host entry")
        self._pins[name] += 1
        self._sizes.move_to_end(name)

    def unpin(self, name: str) -> tuple[str, ...]:
        """One user is done with ``name``; returns the entries to drop to fit the budget."""
        if self._pins[name] <= 0:
            raise KeyError(f"adapter {name!r} is not pinned")
        self._pins[name] -= 1
        if self._pins[name] == 0:
            del self._pins[name]
        return self._fit()

    def start_load(self, name: str) -> None:
        """Reserve an entry for ``name`` and pin it once for the caller."""
        if name in self._sizes:
            raise ValueError(f"adapter {name!r} already holds a host entry")
        self._sizes[name] = 0
        self._loading.add(name)
        self.pin(name)

    def loaded(self, name: str, size_bytes: int) -> tuple[str, ...]:
        """``name``'s load succeeded with ``size_bytes``; returns the entries to drop."""
        if name not in self._loading:
            raise KeyError(f"adapter {name!r} is not loading")
        self._loading.discard(name)
        self._sizes[name] = size_bytes
        self.counters.loads += 1
        return self._fit()

    def load_failed(self, name: str) -> None:
        """``name``'s load failed: its entry and every pin on it go (the askers all fail)."""
        if name not in self._loading:
            raise KeyError(f"adapter {name!r} is not loading")
        self._loading.discard(name)
        del self._sizes[name]
        self._pins.pop(name, None)
        self.counters.load_failures += 1

    def discard(self, name: str) -> bool:
        """Drop ``name`` now if it is loaded and unpinned; says whether it was dropped."""
        if name not in self._sizes or name in self._loading or self._pins[name] > 0:
            return False
        del self._sizes[name]
        return True

    def _fit(self) -> tuple[str, ...]:
        """Evict unpinned loaded entries, least recently used first, until within budget."""
        over = self.bytes_used - self.budget_bytes
        victims = []
        for name, size in self._sizes.items():
            if over <= 0:
                break
            if name in self._loading or self._pins[name] > 0:
                continue
            victims.append(name)
            over -= size
        for name in victims:
            del self._sizes[name]
        self.counters.evictions += len(victims)
        return tuple(victims)
