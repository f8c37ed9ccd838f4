"""The cluster's jobs in flight per model replica, as the slot lease records them.

Every consumer counts the jobs it sends to a replica in one Redis hash (``{P}:slots``,
written only by ``slots_acquire.lua`` and ``slots_release.lua``): one field per replica,
consumer (a *holder*: its name and a per-process nonce) and adapter. Read back, it is
what the planner needs to plan as if it were the only consumer: every consumer's jobs
on each replica, by adapter. A holder whose lease has run out (its consumer died) is
left out here as the scripts leave it out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

# Between the replica, the holder and the adapter of a field; no name contains it.
SEP = "\t"

# Jobs in flight by adapter (``None``: the base model), per replica id.
Ledger = dict[str, Counter[str | None]]


def field_of(replica: str, holder: str, adapter: str | None) -> str:
    """The hash field of ``holder``'s jobs of ``adapter`` on ``replica``."""
    return SEP.join((replica, holder, adapter or ""))


def live_holders(holders: Mapping[str, str], now_ms: float) -> set[str]:
    """The holders whose lease (epoch ms) has not run out at ``now_ms``."""
    return {holder for holder, expiry in holders.items() if float(expiry) >= now_ms}


def ledger_of(fields: Mapping[str, str], holders: Mapping[str, str], now_ms: float) -> Ledger:
    """Every live holder's jobs in flight, summed per replica and adapter."""
    live = live_holders(holders, now_ms)
    ledger: Ledger = {}
    for name, count in fields.items():
        parts = name.split(SEP, 2)
        if len(parts) != 3 or parts[1] not in live or int(count) <= 0:
            continue
        replica, _, adapter = parts
        ledger.setdefault(replica, Counter())[adapter or None] += int(count)
    return ledger
