"""Rendezvous hashing: every process picks the same home for a name, no coordination."""

from __future__ import annotations

import hashlib


def rendezvous_score(name: str, replica_id: str) -> int:
    """A score that is the same in every process (Python's ``hash`` is salted per process).

    The replica with the highest score for ``name`` is its home.
    """
    digest = hashlib.blake2b(f"{name}\0{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
