"""The process's live upstream connections, kept in step with the database.

The rows are read again at most every ``RELOAD_INTERVAL`` seconds (a connection added in the admin
is used within that time by every web process); a connection whose settings did not change keeps
its slots, queue and health across reloads.
"""

from __future__ import annotations

import time

from channels.db import database_sync_to_async

from inference.upstream.pool import Pool

RELOAD_INTERVAL = 2.0

_pool = Pool()
_loaded_at: float | None = None


def _load() -> None:
    from upstreams.services import load_configs

    global _loaded_at
    _pool.configure(load_configs())
    _loaded_at = time.monotonic()


def _stale() -> bool:
    return _loaded_at is None or time.monotonic() - _loaded_at > RELOAD_INTERVAL


async def apool() -> Pool:
    if _stale():
        await database_sync_to_async(_load)()
    return _pool


def pool() -> Pool:
    """From synchronous code (not on the event loop)."""
    if _stale():
        _load()
    return _pool


def invalidate() -> None:
    """Read the rows again at the next use (after a change made in this process)."""
    global _loaded_at
    _loaded_at = None
