"""Writing a reply's final state when the database fights back (a held write lock, a full disk).

``save_final`` tries a few times with backoff, off the event loop and off the one thread that
``thread_sensitive`` database work shares (a lock there would stall every other request). If the
row still cannot be written, the caller tells the client (the reply was not saved), and the
outcome is kept in memory and retried every few seconds for a while: once the database recovers
the row gets its real final state. A row is never left ``streaming`` for good: if this process
gives up or dies, the stale-heartbeat sweep (or the next start-up) marks it ``interrupted`` with
the last checkpointed text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from channels.db import database_sync_to_async
from django.conf import settings

from conversations import actions
from conversations.faults import is_database_unavailable

log = logging.getLogger(__name__)

RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)  # seconds between the attempts made while the client waits
# Then, in the background, an attempt every LATER_INTERVAL seconds (CHAT_SAVE_RETRY_INTERVAL, 5).
LATER_INTERVAL = float(settings.CHAT_SAVE_RETRY_INTERVAL)
LATER_FOR = 600.0  # for this long; after that the stale sweep marks the row interrupted

_later: set[asyncio.Task] = set()


async def _attempt(
    message_id: int, outcome: actions.Outcome, on_commit: Callable[[], None] | None = None
) -> bool | None:
    """One write: True when written, False on an error a retry will not mend (logged), None when
    the database is unavailable for now (locked, full, unreachable)."""
    try:
        await database_sync_to_async(actions.finish_assistant_message, thread_sensitive=False)(
            message_id, outcome, on_commit
        )
    except Exception as exc:
        if not is_database_unavailable(exc):
            log.exception("could not save the end of message %s", message_id)
            return False
        log.warning("could not save the end of message %s (%s)", message_id, exc)
        return None
    return True


async def save_final(
    message_id: int, outcome: actions.Outcome, on_commit: Callable[[], None] | None = None
) -> bool:
    """Write the final state of ``message_id``; False if it could not be written (yet).

    ``on_commit``: run in the writing thread when it commits, before the viewers are told."""
    for delay in (*RETRY_DELAYS, None):
        written = await _attempt(message_id, outcome, on_commit)
        if written is not None:
            return written
        if delay is not None:
            await asyncio.sleep(delay)
    note = "saved late: the database could not be written when the reply ended, and the client was told"
    late = dataclasses.replace(outcome, error="; ".join(filter(None, [outcome.error, note])))
    task = asyncio.get_running_loop().create_task(_save_later(message_id, late))
    _later.add(task)
    task.add_done_callback(_later.discard)
    return False


async def _save_later(message_id: int, outcome: actions.Outcome) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + LATER_FOR
    while loop.time() < give_up:
        await asyncio.sleep(LATER_INTERVAL)
        written = await _attempt(message_id, outcome)
        if written is not None:
            if written:
                log.info("saved the end of message %s late, once the database could be written", message_id)
            return
    log.error("gave up saving the end of message %s: the stale sweep will mark it interrupted", message_id)
