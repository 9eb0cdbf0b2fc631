"""Owns running generations: follows admitted jobs and keeps their assistant messages up to date.

For each (job, message) pair a task on the event loop consumes the job's events and
- publishes the new text to the group ``conversation-<id>``: the first piece at once, then at most
  ~10 times a second, each delta waiting for a few pieces (``publish_wait``)
  (``{"type": "chat.delta", "message_id", "choice_index", "text", "seq", "reset", "done", "open"}``:
  the text added since the last one, and what changed in its HTML (``render.StreamRender``: once
  per reply, in a render thread, only the open block again): the blocks finished since the last
  delta and the open block, so a delta's size does not grow with the answer. Every viewer's
  consumer forwards that as it is. ``seq`` counts the deltas (1, 2, …); ``reset``: ``done`` holds
  every finished block (the first delta, or an earlier block changed). A viewer who was not sent
  the earlier deltas (connected mid-answer) asks for the whole answer so far (``request_whole``):
  after the next delta its channel gets one ``chat.whole`` (the same fields, reset, at that seq);
- publishes the queue position and the start at once (``chat.queued`` with ``n_ahead``, ``chat.started``),
  so a page can say "waiting, N ahead" instead of hanging;
- checkpoints the text so far, with a heartbeat, to the row at least every second (only text that
  has gone out to clients: after a crash the saved text is a prefix of what they saw);
- at the end writes the final text, token ids, usage, timings and status in one transaction
  (``actions.finish_assistant_message``, which broadcasts ``chat.finished`` on commit).

The job belongs to the runner, not to whoever started it: closing a browser tab or returning an
HTTP response does not lose the reply. ``Run.cancel(status)`` stops it; the status says why
(``cancelled`` for an API client that went away, ``stopped`` for a person pressing Stop). A job
cancelled by anyone else (the scheduler draining at shutdown) ends as ``interrupted``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from html import escape

from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.utils import timezone

from conversations import actions, metrics, ttft
from conversations.live import saving
from conversations.models import Message
from conversations.render import StreamRender, StreamStep
from inference.jobs import Delta, EventPump, Finished, Job, Queued, Started
from inference.remote.receiving import close_receiver, receive_until_closed

log = logging.getLogger(__name__)

# A reply's deltas (each one a render, and a frame to every viewer): the first piece of text goes
# out at once; after that at most one delta per PUBLISH_INTERVAL, and each waits for PUBLISH_PIECES
# pieces of text (a token each from the local model) for up to PUBLISH_MAX_WAIT after the last one.
# A delta's cost is the same whatever it carries, so a clock alone would make each token cost more
# whenever decoding slows (a long context, a busy machine): ~8 tokens a delta keep the cost per
# token flat down to ~32 tokens a second, and below that the page still moves 4 times a second.
PUBLISH_INTERVAL = 0.1
PUBLISH_PIECES = 8
PUBLISH_MAX_WAIT = 0.25
CHECKPOINT_INTERVAL = 1.0  # seconds between text checkpoints (and heartbeats) per reply

# Runs hold strong references to their tasks; this set holds the runs' tasks until they end.
_tasks: set[asyncio.Task] = set()
_swept = False
# Deltas are rendered here, off the event loop: a reply's renders one after another (its task awaits
# each), the replies of a process side by side.
_render_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="render")
FIRST_RENDER_INLINE = 200  # characters: a first delta up to this long is rendered on the event loop


class Stream:
    """One reply's HTML as the viewers were sent it: its renderer, the deltas published so far, the
    open block last sent, and the channels of viewers waiting for the whole answer so far."""

    def __init__(self, conversation_id: int) -> None:
        self.conversation_id = conversation_id
        self.render = StreamRender()
        self.seq = 0
        self.open = ""
        self.reset_next = True  # the first delta carries every block (and the one after a failure)
        self.waiting: set[str] = set()

    def delta(self, step: StreamStep) -> dict:
        """The HTML fields of the next delta, ``step`` rendered (``_render``)."""
        self.seq += 1
        self.open = step.open
        return {"seq": self.seq, "reset": step.reset, "done": step.done, "open": step.open}

    def whole(self) -> dict:
        """The same fields for the whole answer as of the last delta (a reset at its seq)."""
        return {"seq": self.seq, "reset": True, "done": self.render.done_html, "open": self.open}


# The replies this process streams, by message id (for request_whole).
_streams: dict[int, Stream] = {}


def publish_wait(pieces: int) -> float:
    """Seconds after the last delta that one holding ``pieces`` pieces of text is due."""
    return PUBLISH_INTERVAL if pieces >= PUBLISH_PIECES else max(PUBLISH_INTERVAL, PUBLISH_MAX_WAIT)


def outcome_for(finished: Finished, cancel_status: str | None) -> actions.Outcome:
    """The row's final state for a job's Finished event."""
    if finished.reason not in ("cancelled", "error"):  # stop, length, or an upstream's own (tool_calls, …)
        status, finish_reason = Message.Status.COMPLETE, finished.reason
    elif finished.reason == "cancelled":
        status, finish_reason = cancel_status or Message.Status.INTERRUPTED, ""
    else:
        status, finish_reason = Message.Status.ERROR, ""
    t = finished.timings
    return actions.Outcome(
        status=status,
        content=finished.text,
        finish_reason=finish_reason,
        token_ids=list(finished.token_ids) if finished.token_ids is not None else None,
        prompt_tokens=finished.usage.prompt_tokens,
        completion_tokens=finished.usage.completion_tokens,
        queue_wait=t.queue_wait,
        ttft=t.ttft,
        duration=t.duration,
        error=finished.error or "",
    )


class Run:
    """The generations of one reply (n of them for an API call with n > 1)."""

    def __init__(self, conversation_id: int, jobs: Sequence[Job], messages: Sequence[Message]) -> None:
        if len(jobs) != len(messages):
            raise ValueError("one message per job")
        self.conversation_id = conversation_id
        self.jobs = list(jobs)
        self.message_ids = [m.pk for m in messages]
        self.cancel_status: str | None = None
        # Replies whose final state could not be written when they ended (saving.save_final).
        self.unsaved: set[int] = set()
        # Replies whose final state is written (added by the writing thread, as it commits).
        self.saved: set[int] = set()
        # Characters of each reply that reached its client, for a consumer that reports them (an
        # SSE stream): checkpoints then never save text the client has not seen. None: the
        # runner's own broadcasts are what clients see.
        self.delivered: list[int] | None = None
        loop = asyncio.get_running_loop()
        # A fresh context: the tasks outlive the request that started them, so they must not run
        # their database calls in that request's (soon closed) thread-sensitive executor.
        self.tasks = [
            loop.create_task(self._follow(job, m.pk, m.choice_index), context=contextvars.Context())
            for job, m in zip(self.jobs, messages, strict=True)
        ]
        for task in self.tasks:
            _keep(task)
        if shared_layer():
            # Other web processes (sharing Redis) may show this conversation and press Stop there.
            _keep(loop.create_task(_stops.follow(self), context=contextvars.Context()))

    def track_delivery(self) -> None:
        """From now on checkpoints save at most what ``mark_delivered`` reports (before the first
        response byte, so nothing unsent is saved meanwhile)."""
        self.delivered = [0] * len(self.jobs)

    def mark_delivered(self, chars: Sequence[int]) -> None:
        """The characters of each reply handed to the client's connection so far."""
        self.delivered = list(chars)

    def cancel(self, status: str = Message.Status.CANCELLED) -> None:
        """Stop every job (within one token); their rows end with ``status`` and the partial text."""
        if self.cancel_status is None:
            self.cancel_status = status
        for job in self.jobs:
            job.cancel()

    def ended(self) -> bool:
        """Every reply has its final state written (or its clients were told it could not be):
        its viewers are told so from the writing thread, a moment before the tasks end."""
        return all(t.done() for t in self.tasks) or self.saved | self.unsaved >= set(self.message_ids)

    async def wait(self) -> list[Finished]:
        """The jobs' Finished events, once every row has its final state written.

        Cancelling the waiter does not cancel the run (the caller decides that with ``cancel``).
        """
        return list(await asyncio.shield(asyncio.gather(*self.tasks)))

    async def _follow(self, job: Job, message_id: int, choice_index: int) -> Finished:
        stream = _streams[message_id] = Stream(self.conversation_id)  # one per reply, whoever watches
        try:
            return await self._stream(job, message_id, choice_index, stream)
        finally:
            if _streams.get(message_id) is stream:
                del _streams[message_id]

    async def _stream(self, job: Job, message_id: int, choice_index: int, stream: Stream) -> Finished:
        loop = asyncio.get_running_loop()
        # The loop is not woken for every token: the pump wakes this task for the first text
        # after a publish (it is re-armed there) and for the other, rare events.
        parts: list[str] = []  # the reply so far
        unsent: list[str] = []  # its tail not yet published
        # Never published: the first text goes out at once (monotonic time starts near boot, so a
        # start of 0.0 held the first delta back on a machine up for less than PUBLISH_MAX_WAIT).
        last_publish, last_checkpoint = -math.inf, time.monotonic()
        checkpointing: asyncio.Task | None = None
        finished: Finished | None = None
        with EventPump([job]) as pump:
            while finished is None:
                now = time.monotonic()
                due = last_checkpoint + CHECKPOINT_INTERVAL
                if unsent:
                    due = min(due, last_publish + publish_wait(len(unsent)))
                await pump.wait(timeout=max(0.0, due - now))  # at once when events are pending
                for _, event in pump.take():
                    if isinstance(event, Delta):
                        parts.append(event.text)
                        unsent.append(event.text)
                    elif isinstance(event, Finished):
                        finished = event
                    elif isinstance(event, Queued):
                        queued = {"type": "chat.queued", "message_id": message_id, "n_ahead": event.n_ahead}
                        await self._send(queued)
                    elif isinstance(event, Started):
                        await self._send({"type": "chat.started", "message_id": message_id})
                if finished is not None:
                    break
                now = time.monotonic()
                if unsent and now - last_publish >= publish_wait(len(unsent)):
                    pump.arm()  # text queued from now on wakes the task
                    ttft.mark_message(message_id, "publish")
                    await self._publish(message_id, choice_index, unsent, stream)
                    unsent, last_publish = [], now
                elif 0 < len(unsent) < PUBLISH_PIECES:
                    pump.arm(after=PUBLISH_PIECES - len(unsent))  # woken when the delta is full
                if now - last_checkpoint >= CHECKPOINT_INTERVAL:
                    # Only text that has gone out (broadcast, and delivered where that is tracked):
                    # after a crash the saved text is a prefix of what every client saw.
                    text = "".join(parts[: len(parts) - len(unsent)])
                    if self.delivered is not None:
                        text = text[: self.delivered[choice_index]]
                    # In the background: a slow write (a held lock) must not stall the stream.
                    if checkpointing is None or checkpointing.done():
                        checkpointing = loop.create_task(self._checkpoint(message_id, text))
                        _keep(checkpointing)
                    last_checkpoint = now
        metrics.observe_generation(finished)
        if unsent:
            await self._publish(message_id, choice_index, unsent, stream)
        if checkpointing is not None:  # the last checkpoint first: no write of this reply outlives it
            await asyncio.wait([checkpointing])
        outcome = outcome_for(finished, self.cancel_status)
        if not await saving.save_final(message_id, outcome, lambda: self.saved.add(message_id)):
            # The database cannot be written (full, locked): the clients are told in-band, and
            # the row is saved later or marked interrupted (conversations/live/saving.py).
            self.unsaved.add(message_id)
            await self._send({"type": "chat.unsaved", "message_id": message_id})
        return finished

    async def _publish(self, message_id: int, choice_index: int, texts: list[str], stream: Stream) -> None:
        text = "".join(texts)
        if stream.seq == 0 and len(text) <= FIRST_RENDER_INLINE:
            # The first delta, on the way to the first token: its render is a few words (~0.06
            # ms), less than the hop to a render thread and back, which waits for the GIL.
            step = _render(stream, text)
        else:
            step = await asyncio.get_running_loop().run_in_executor(_render_pool, _render, stream, text)
        event = {"type": "chat.delta", "message_id": message_id, "choice_index": choice_index, "text": text}
        await self._send(event | stream.delta(step))
        if stream.waiting:
            # After the delta, from this task: each asking channel gets the delta first, then this.
            waiting, stream.waiting = stream.waiting, set()
            whole = {"type": "chat.whole", "message_id": message_id, "choice_index": choice_index}
            whole |= stream.whole()
            layer = get_channel_layer()
            for channel in waiting:
                try:
                    await layer.send(channel, whole)
                except Exception:  # a viewer gone, or its channel full: the others still get theirs
                    log.exception("could not send the answer so far to %s", channel)

    async def _send(self, event: dict) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            await layer.group_send(actions.group_name(self.conversation_id), event)
        except Exception:  # a full or broken channel layer must not stop the reply being saved
            log.exception("could not publish %s of conversation %s", event["type"], self.conversation_id)

    @staticmethod
    async def _checkpoint(message_id: int, text: str) -> None:
        try:
            # Not thread-sensitive: that one thread serves every request's database work, and a
            # write waiting for the lock there would stall them all.
            await database_sync_to_async(actions.checkpoint_assistant_message, thread_sensitive=False)(
                message_id, text
            )
        except Exception:
            log.exception("could not checkpoint message %s", message_id)


def start(conversation_id: int, jobs: Sequence[Job], messages: Sequence[Message]) -> Run:
    """Follow admitted ``jobs`` into their ``messages`` (rows made by ``actions``, status streaming)."""
    global _swept
    if not _swept:
        # Once per process: replies left 'streaming' by a process that died are interrupted.
        _swept = True
        _keep(asyncio.get_running_loop().create_task(_sweep(), context=contextvars.Context()))
    return Run(conversation_id, jobs, messages)


async def _sweep() -> None:
    try:
        count = await database_sync_to_async(sweep_stale_sync, thread_sensitive=False)()
    except Exception:
        log.exception("could not mark stale replies as interrupted")
    else:
        if count:
            log.info("marked %d stale replies as interrupted", count)


def _render(stream: Stream, text: str) -> StreamStep:
    """What ``text`` added changes in the answer's HTML (in a render thread)."""
    render = stream.render
    try:
        step = render.step(text)
    except Exception:  # a renderer bug must not stop the reply: its text is shown plain meanwhile
        log.exception("could not render a reply's text")
        stream.reset_next = True  # the page's blocks are not the renderer's any more
        return StreamStep(True, "", f"<p>{escape(render.text)}</p>")
    if stream.reset_next:
        stream.reset_next = False
        return StreamStep(True, render.done_html, step.open)
    return step


async def request_whole(conversation_id: int, message_id: int, channel: str) -> None:
    """Have ``channel`` (a viewer's) sent the whole of a streaming reply so far, as ``chat.whole``
    after the reply's next delta: by this process if it runs the reply, else by the one that does
    (over the conversation's control group, see ``StopListener``). Nothing is sent for a reply that
    no longer streams (its final render follows anyway)."""
    stream = _streams.get(message_id)
    if stream is not None:
        if stream.conversation_id == conversation_id:
            stream.waiting.add(channel)
        return
    if shared_layer():
        await ask_elsewhere(conversation_id, message_id, channel)


async def ask_elsewhere(conversation_id: int, message_id: int, channel: str, layer=None) -> None:
    """``request_whole`` of the process that runs the reply (its ``StopListener``)."""
    request = {"type": "chat.whole", "conversation_id": conversation_id, "message_id": message_id}
    group = control_group_name(conversation_id)
    await (layer or get_channel_layer()).group_send(group, request | {"channel": channel})


def _keep(task: asyncio.Task) -> None:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def sweep_stale_sync() -> int:
    """Mark replies whose heartbeat stopped STALE_AFTER seconds ago as interrupted (any process)."""
    return actions.interrupt_stale_messages(timezone.now() - timedelta(seconds=actions.STALE_AFTER))


async def wait_all(timeout: float) -> None:
    """Wait (up to ``timeout`` s) until every run's final state is written: for a clean shutdown."""
    pending = [t for t in _tasks if not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


def shared_layer() -> bool:
    """Whether the channel layer reaches other processes (Redis), not just this one."""
    layer = get_channel_layer()
    return layer is not None and not isinstance(layer, InMemoryChannelLayer)


def control_group_name(conversation_id: int) -> str:
    return f"conversation-{conversation_id}-control"


async def stop_elsewhere(conversation_id: int, status: str, layer=None) -> None:
    """Ask whichever process runs the conversation's reply to stop it (see ``StopListener``)."""
    await (layer or get_channel_layer()).group_send(
        control_group_name(conversation_id),
        {"type": "chat.stop", "conversation_id": conversation_id, "status": status},
    )


class StopListener:
    """Receives ``chat.stop`` (sent by ``stop_elsewhere`` from another web process) for the
    conversations whose replies run in this process, and cancels those runs; and ``chat.whole``
    (``request_whole``: a viewer connected to another process wants a reply so far).

    ONE receiver per process, on one channel that joins each running conversation's control
    group, rather than one receiver per reply: channels_redis reads all of a process's channels
    through whichever receiver holds its read, and a receiver cancelled in the middle of that read
    (as a per-reply one would be at the end of every reply) can lose a message meant for another
    channel of the process (one that Redis handed over but the receiver never read): a token, a
    Stop, or the end of a reply.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.channel: str | None = None
        self.task: asyncio.Task | None = None
        self.runs: dict[int, set[Run]] = {}

    async def follow(self, run: Run) -> None:
        """Listen for Stop on ``run``'s conversation until the run ends."""
        layer = get_channel_layer()
        group = control_group_name(run.conversation_id)
        try:
            await self._start(layer)
            self.runs.setdefault(run.conversation_id, set()).add(run)
            await layer.group_add(group, self.channel)
        except Exception:
            log.exception("Stop from other processes will not reach conversation %s", run.conversation_id)
        try:
            await asyncio.gather(*run.tasks, return_exceptions=True)
        finally:
            runs = self.runs.get(run.conversation_id, set())
            runs.discard(run)
            if not runs:
                self.runs.pop(run.conversation_id, None)
                try:
                    await layer.group_discard(group, self.channel)
                except Exception:
                    log.exception("leaving %s", group)

    async def _start(self, layer) -> None:
        loop = asyncio.get_running_loop()
        if self.task is not None and not self.task.done() and self.loop is loop:
            return
        if self.loop is not loop:  # a new event loop (tests): the old one's runs are gone
            self.loop, self.runs = loop, {}
        self.channel = await layer.new_channel()
        receiving = receive_until_closed(layer, self.channel, self._on_message, "Stop requests")
        self.task = loop.create_task(receiving, context=contextvars.Context())

    def _on_message(self, message: dict) -> None:
        if message.get("type") == "chat.whole":  # a viewer in another process wants a reply so far
            stream = _streams.get(message.get("message_id"))
            if stream is not None and stream.conversation_id == message.get("conversation_id"):
                stream.waiting.add(message["channel"])
            return
        if message.get("type") != "chat.stop":
            return
        conversation_id = message.get("conversation_id")
        for run in list(self.runs.get(conversation_id, ())):
            log.info("stop for conversation %s from another process", conversation_id)
            run.cancel(message.get("status") or Message.Status.STOPPED)

    async def aclose(self) -> None:
        """End the receive loop (see ``inference.remote.receiving``)."""
        task, self.task = self.task, None
        await close_receiver(get_channel_layer(), self.channel, task)


_stops = StopListener()


async def stop_listening() -> None:
    """At shutdown, after ``wait_all``: end the Stop listener's receive loop."""
    await _stops.aclose()
