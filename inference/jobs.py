"""Jobs and the events they yield (the scheduler's contract with the other layers).

A job's events are produced in a worker thread. Readers either iterate them synchronously
(``job.events()``), asynchronously (``job.aevents()``, or an ``EventPump`` over several jobs:
the one bridge from the producer threads to an event loop), or subscribe a callback. Every
reader sees every event from the first, whenever it starts reading.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from inference.sampling import SamplingParams, TokenLogprob


class SchedulerError(Exception):
    """Base of the errors ``submit`` raises before anything is evaluated."""


class Overloaded(SchedulerError):
    """The queue is full (or the scheduler is draining): try again later."""


class BackendUnreachable(Overloaded):
    """The scheduler is in another process that cannot be reached (the inference worker over a
    channel layer that is down): the service is unavailable, not merely busy."""


class ContextLengthExceeded(SchedulerError):
    """The prompt plus max_tokens does not fit in the context."""

    def __init__(
        self, message: str, *, prompt_tokens: int, max_tokens: int | None, context_length: int
    ) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length


FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class Queued:
    n_ahead: int
    type: str = "queued"


@dataclass(frozen=True)
class Started:
    cached_tokens: int
    type: str = "started"


@dataclass(frozen=True)
class Delta:
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token id, when the request asked for them
    type: str = "delta"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    queue_wait: float  # seconds from submit to a slot taking the job
    ttft: float | None  # seconds from submit to the first token (None: no token)
    prefill: float  # seconds spent evaluating the prompt
    duration: float  # seconds from submit to finish
    cached_tokens: int  # prompt tokens reused from the slot's KV cache
    evaluated_tokens: int  # prompt tokens evaluated for this job
    decode_tokens_per_second: float | None


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    usage: Usage
    timings: Timings
    text: str
    token_ids: tuple[int, ...] | None  # ids that reproduce `text` exactly (None when a stop string cut it)
    error: str | None = None
    type: str = "finished"


Event = Queued | Started | Delta | Finished


@dataclass(eq=False)
class Job:
    prompt_ids: list[int]
    params: SamplingParams
    user_key: str
    max_tokens: int
    seed_offset: int = 0
    # Unique across processes and restarts: an inference worker's ids are seen by every web process.
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    submitted_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._history: list[Event] = []
        self._listeners: list[Callable[[Event], None]] = []
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._on_cancel: Callable[[Job], None] | None = None
        self.result: Finished | None = None
        # time.monotonic() of the slot thread's steps to the first token (conversations/ttft.py).
        self.started_at: float | None = None
        self.prefill_done_at: float | None = None
        self.first_token_at: float | None = None
        self.first_delta_at: float | None = None
        self.cached_tokens: int | None = None

    # --- producer side (scheduler threads) ---
    def emit(self, event: Event) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._history.append(event)
            listeners = list(self._listeners)
            if isinstance(event, Finished):
                self.result = event
                self._done.set()
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a reader that went away (closed loop) must not break generation
                self.unsubscribe(listener)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def on_cancel(self, callback: Callable[[Job], None]) -> None:
        """Call ``callback(job)`` when the job is cancelled (its backend's own hook: the scheduler
        drops it from the queue, the worker client tells the worker)."""
        self._on_cancel = callback

    # --- consumer side ---
    def cancel(self) -> None:
        """Ask the job to stop: at most one more token is produced after this call."""
        if self._done.is_set() or self._cancel.is_set():
            return
        self._cancel.set()
        if self._on_cancel is not None:
            self._on_cancel(self)

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` for every event, in order: the past ones now, the next ones in the
        producer's thread. The past ones are replayed under the job's lock, so that an event the
        producer emits meanwhile waits for them (replayed outside it, a new event could reach the
        listener between two past ones: a stream then sent the text's pieces out of order)."""
        with self._lock:
            self._listeners.append(listener)
            for event in self._history:
                listener(event)

    def unsubscribe(self, listener: Callable[[Event], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        q: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.subscribe(q.put)
        while True:
            event = q.get(timeout=timeout)
            yield event
            if isinstance(event, Finished):
                return

    async def aevents(self) -> AsyncIterator[Event]:
        with EventPump([self]) as pump:
            while True:
                pump.arm()  # every event wakes this reader
                await pump.wait()
                for _, event in pump.take():
                    yield event
                    if isinstance(event, Finished):
                        return

    def wait(self, timeout: float | None = None) -> Finished | None:
        self._done.wait(timeout)
        return self.result

    def abandon(self, error: str) -> None:
        """End a job whose producer is gone (an inference worker that died or lost it): a
        ``cancelled`` Finished with the text and tokens emitted so far, so that nothing waits for
        it forever and its reply keeps what was seen (saved as ``interrupted``)."""
        self.end_with_text_so_far("cancelled", error)

    def end_with_text_so_far(self, reason: FinishReason, error: str) -> None:
        """Emit a Finished that keeps the text and tokens emitted so far (a generation that failed
        or whose producer is gone): the reply's saved text never shrinks to nothing."""
        with self._lock:
            deltas = [e for e in self._history if isinstance(e, Delta)]
        ids = tuple(i for d in deltas for i in d.token_ids)
        self.emit(
            Finished(
                reason=reason,
                usage=Usage(prompt_tokens=len(self.prompt_ids), completion_tokens=len(ids)),
                timings=Timings(0.0, None, 0.0, time.monotonic() - self.submitted_at, 0, 0, None),
                text="".join(d.text for d in deltas),
                token_ids=ids,
                error=error,
            )
        )


def finish_or_cancel(jobs: list[Job], timeout: float) -> tuple[int, int]:
    """Let ``jobs`` finish for up to ``timeout`` seconds, then cancel the rest and wait for them to
    end (within a token). Returns (finished in time, cancelled)."""
    deadline = time.monotonic() + timeout
    for job in jobs:
        job.wait(max(0.0, deadline - time.monotonic()))
    cut = [job for job in jobs if not job.done]
    for job in cut:
        job.cancel()
    for job in cut:
        job.wait(30)
    return len(jobs) - len(cut), len(cut)


class EventPump:
    """Carries the events of ``jobs`` from their producer threads to one asyncio task, in order,
    as ``(index of the job, event)``.

    The event loop is not woken for every token: a ``Delta`` wakes a waiting ``wait`` only while
    the pump is armed (it is at first, and again after each ``arm()``); the first such wake disarms
    it. ``arm(after=k)`` arms it for the k-th Delta from then on instead (a consumer that wants k
    more pieces before it acts). Every other event (Queued, Started, Finished: rare) always wakes
    it. A consumer that batches text (the chat's publish, /v1's flush) re-arms when it has taken the
    batch; a wake per token would take CPU from the model at every step.

    Use as a context manager (subscribe on entry, unsubscribe on exit), from the event loop's
    thread.
    """

    def __init__(self, jobs: Sequence[Job]) -> None:
        self.jobs = list(jobs)
        self._pending: deque[tuple[int, Event]] = deque()
        self._ready = asyncio.Event()
        self._wake_after = 1  # the Delta (counted from the last arm) that wakes the consumer; 0: none
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[tuple[Job, Callable[[Event], None]]] = []

    def __enter__(self) -> EventPump:
        self._loop = asyncio.get_running_loop()
        for index, job in enumerate(self.jobs):

            def listener(event: Event, index: int = index) -> None:
                self._pending.append((index, event))
                if isinstance(event, Delta):
                    if self._wake_after <= 0:
                        return
                    self._wake_after -= 1
                    if self._wake_after:
                        return
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._ready.set)

            job.subscribe(listener)
            self._listeners.append((job, listener))
        return self

    def __exit__(self, *exc: object) -> None:
        for job, listener in self._listeners:
            job.unsubscribe(listener)
        self._listeners.clear()

    def arm(self, after: int = 1) -> None:
        """Let the ``after``-th Delta from now on (the next one by default) wake the consumer."""
        self._wake_after = max(1, after)

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def take(self) -> list[tuple[int, Event]]:
        """Every event that arrived so far, oldest first (none: an empty list)."""
        out = []
        while self._pending:
            out.append(self._pending.popleft())
        return out

    async def wait(self, timeout: float | None = None) -> bool:
        """Until an event is pending (True) or ``timeout`` seconds pass (False)."""
        if self._pending:
            return True
        self._ready.clear()
        if self._pending:  # queued between the look and the clear
            return True
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            pass
        return bool(self._pending)
