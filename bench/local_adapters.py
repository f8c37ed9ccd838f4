"""Adapters of a bench's own folder, resolved as a model replica would resolve them.

The benches drive a backend directly, below the catalogue: they hand it the
:class:`ResolvedAdapter` of each folder they wrote.
"""

from __future__ import annotations

from pathlib import Path

from workers.adapters.resolved import ResolvedAdapter


def resolved(adapter_dir: str | Path | None, name: str | None) -> ResolvedAdapter | None:
    """``name`` in ``adapter_dir`` (``None`` for the base model)."""
    if not name or adapter_dir is None:
        return None
    return ResolvedAdapter.local(name, Path(adapter_dir) / name)


def warm(adapter_dir: str | Path | None, name: str) -> ResolvedAdapter:
    """``name`` in ``adapter_dir``, to make warm."""
    adapter = resolved(adapter_dir, name)
    assert adapter is not None
    return adapter
