"""The process's live upstream connections, kept in step with the database.

The rows are read again once they are ``RELOAD_INTERVAL`` seconds old, in the background: a request
is answered with the connections as last read and never waits for that read (it would be on the
way to every first token), except the first request of a process, the first after ``invalidate``
(a change made in this process), and the first after ``MAX_AGE`` seconds without any. So a
connection added in the admin is used within ``RELOAD_INTERVAL`` (plus one request) by every busy
web process, and at once by an idle one; a connection whose settings did not change keeps its
slots, queue and health across reloads.
"""

from __future__ import annotations

import asyncio
import logging
import time

from channels.db import database_sync_to_async

from inference.upstream.pool import Pool

log = logging.getLogger(__name__)

RELOAD_INTERVAL = 2.0
MAX_AGE = 30.0  # rows older than this are read again before answering

_pool = Pool()
_loaded_at: float | None = None
_generation = 0  # bumped by invalidate: a read begun before it may miss the change
_reloading: asyncio.Task[None] | None = None


def _load() -> None:
    from upstreams.services import load_configs

    global _loaded_at
    generation, started = _generation, time.monotonic()
    configs = load_configs()
    if generation != _generation or (_loaded_at is not None and _loaded_at > started):
        return  # read before a change made here, or older than a read already in use
    _pool.configure(configs)
    _loaded_at = started


def _age() -> float | None:
    return None if _loaded_at is None else time.monotonic() - _loaded_at


async def apool() -> Pool:
    global _reloading
    age = _age()
    if age is None or age > MAX_AGE:
        await database_sync_to_async(_load)()
    elif age > RELOAD_INTERVAL and not _reload_running():
        _reloading = asyncio.get_running_loop().create_task(_reload())
    return _pool


def _reload_running() -> bool:
    # A task of another event loop (tests run several) will never finish: it does not count.
    task = _reloading
    return task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()


async def _reload() -> None:
    try:
        await database_sync_to_async(_load, thread_sensitive=False)()
    except Exception:  # the connections as last read stay in use; the next request tries again
        log.exception("could not read the upstream connections")


def pool() -> Pool:
    """From synchronous code (not on the event loop)."""
    age = _age()
    if age is None or age > RELOAD_INTERVAL:
        _load()
    return _pool


def invalidate() -> None:
    """Read the rows again at the next use (after a change made in this process)."""
    global _loaded_at, _generation
    _generation += 1
    _loaded_at = None
