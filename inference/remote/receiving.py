"""Long-lived receive loops on the channel layer (the worker, its clients, the Stop listener).

Two things every such loop needs with channels_redis:
- a Redis error (a restart, a slow answer) must not end the loop: it logs and tries again;
- ending the loop takes a message to its own channel (``close_receiver``): a cancel alone is not
  enough, since redis-py retries a blocking read that a cancel interrupted and so can swallow the
  cancel (asyncio.run would then wait for the loop forever).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

CLOSE = "receiver.close"


async def receive_until_closed(
    layer, channel: str, handle: Callable[[dict[str, Any]], Awaitable[None] | None], what: str
) -> None:
    """Hand each message on ``channel`` to ``handle`` (sync or async) until a ``CLOSE`` message.
    ``what`` names the loop in the log."""
    while True:
        try:
            message = await layer.receive(channel)
        except asyncio.CancelledError:
            raise
        except Exception:
            # redis-py may report a cancelled read as a ConnectionError: never swallow a cancel.
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise asyncio.CancelledError from None
            log.exception("receiving %s", what)
            await asyncio.sleep(0.5)
            continue
        if message.get("type") == CLOSE:
            return
        try:
            result = handle(message)
            if inspect.isawaitable(result):
                await result
        except Exception:  # one bad message must not end the loop
            log.exception("a message %s could not be handled: %r", what, message)


async def close_receiver(layer, channel: str | None, task: asyncio.Task | None) -> None:
    """End ``task`` (a ``receive_until_closed`` loop on ``channel``) and wait for it (10 s at most)."""
    if task is None or task.done():
        return
    try:
        await layer.send(channel, {"type": CLOSE})
        await asyncio.wait_for(asyncio.shield(task), 10)
    except Exception:
        task.cancel()
