"""Slots x threads, a fair bounded queue, cancellation, prefix affinity and drain.

Contract (the backend interface: ARCHITECTURE.md):
- ``submit`` decides admission synchronously: it returns a ``Job`` or raises ``Overloaded`` /
  ``ContextLengthExceeded`` before anything is evaluated.
- ``submit_n`` admits n jobs (the n choices of one request) all or none; each counts as one place
  against the queue, since each costs a whole generation.
- Fair: round-robin across users, FIFO within a user.
- The slot whose KV cache holds the longest prefix of the prompt takes the job.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from inference.engine import Engine, EngineContext
from inference.generate import common_prefix, run_job
from inference.jobs import (
    ContextLengthExceeded,
    Finished,
    Job,
    Overloaded,
    Queued,
    Timings,
    Usage,
    finish_or_cancel,
)
from inference.sampling import SamplingParams
from inference.threads import CoreBudget, lower_this_threads_priority
from inference.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Slot:
    index: int
    ctx: EngineContext
    job: Job | None = None
    last_used: float = 0.0
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


def resolve_max_tokens(context_length: int, n_prompt: int, max_tokens: int | None) -> int:
    """The completion budget: the given max_tokens, or by default the rest of the context.

    Raises ``ContextLengthExceeded`` when the prompt plus max_tokens cannot fit."""
    if n_prompt == 0:
        raise ValueError("the prompt is empty")
    room = context_length - n_prompt
    if room < 1 or (max_tokens is not None and max_tokens > room):
        want = f" plus max_tokens {max_tokens}" if max_tokens is not None else ""
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens. However, you "
            f"requested {n_prompt + (max_tokens or 0)} tokens ({n_prompt} in the messages{want}). "
            "Please reduce the length of the messages or completion.",
            prompt_tokens=n_prompt,
            max_tokens=max_tokens,
            context_length=context_length,
        )
    return max_tokens if max_tokens is not None else room


def _affinity(slot: Slot, job: Job) -> int:
    """How many prompt tokens ``slot`` would save ``job``: its common prefix with the slot's cache,
    counted only when it is at least half of that cache. A job that shares only a short preamble
    (the system prompt, say) with another conversation's cache goes to the least recently used
    slot instead of destroying that cache (llama.cpp's server uses the same 0.5 similarity rule).
    Among equals, the least recently used slot wins."""
    common = common_prefix(slot.ctx.tokens, job.prompt_ids)
    return common if 2 * common >= len(slot.ctx.tokens) else 0


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        tokenizer: Tokenizer,
        *,
        slots: int = 1,
        threads: int | None = None,
        queue_max: int = 32,
        prefill_chunk: int = 64,
        stop_ids: Collection[int] | None = None,
        nice: int = 0,
    ) -> None:
        """``nice``: how much lower than the process the slots' threads (and the model's threads
        they start) run (``threads.lower_this_threads_priority``)."""
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.engine = engine
        self.tokenizer = tokenizer
        self.context_length = engine.context_length
        self.threads = threads or os.cpu_count() or 1
        self.queue_max = queue_max
        self.prefill_chunk = prefill_chunk
        self.stop_ids = frozenset(stop_ids if stop_ids is not None else tokenizer.special_ids)
        self.budget = CoreBudget(self.threads)
        self.nice = nice
        # Called in the slot's thread after each job, before the slot takes another: a benchmark's
        # probe (conversations/ttft.py times the raw engine on the slot's own context). None here.
        self.after_job: Callable[[Job, EngineContext], None] | None = None
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, deque[Job]] = OrderedDict()
        self._n_pending = 0
        self._last_ahead: dict[str, int] = {}  # job id → the n_ahead it was last told
        self._last_served: dict[str, int] = {}
        self._serve_count = 0
        self._draining = False
        self._closed = False
        self.slots = [Slot(i, engine.new_context()) for i in range(slots)]
        for slot in self.slots:
            slot.thread = threading.Thread(
                target=self._slot_main, args=(slot,), name=f"slot-{slot.index}", daemon=True
            )
            slot.thread.start()

    # --- admission ---------------------------------------------------------------------------
    def resolve_max_tokens(self, n_prompt: int, max_tokens: int | None) -> int:
        return resolve_max_tokens(self.context_length, n_prompt, max_tokens)

    async def asubmit_n(
        self, prompt_ids: list[int], params: SamplingParams, n: int, *, user_key: str = ""
    ) -> list[Job]:
        """``submit_n`` for async callers (the same call here; a remote scheduler awaits the worker)."""
        return self.submit_n(prompt_ids, params, n, user_key=user_key)

    async def asubmit(self, prompt_ids: list[int], params: SamplingParams, *, user_key: str = "") -> Job:
        return self.submit(prompt_ids, params, user_key=user_key)

    def submit(self, prompt_ids: list[int], params: SamplingParams, *, user_key: str = "") -> Job:
        return self.submit_n(prompt_ids, params, 1, user_key=user_key)[0]

    def submit_n(
        self, prompt_ids: list[int], params: SamplingParams, n: int, *, user_key: str = ""
    ) -> list[Job]:
        max_tokens = self.resolve_max_tokens(len(prompt_ids), params.max_tokens)
        jobs = [Job(list(prompt_ids), params, user_key, max_tokens, seed_offset=i) for i in range(n)]
        with self._lock:
            if self._draining or self._closed:
                raise Overloaded("the server is shutting down")
            idle = sum(1 for s in self.slots if s.job is None)
            capacity = idle + self.queue_max - self._n_pending
            if n > capacity:
                raise Overloaded(
                    # Said after "The model is busy" by each caller (chat, API, command).
                    f"{self.running} running and {self._n_pending} waiting, queue limit {self.queue_max}"
                )
            for job in jobs:
                job.on_cancel(self._cancel_pending)
                self._pending.setdefault(user_key, deque()).append(job)
                self._n_pending += 1
            notices = self._dispatch_locked()
        self._notify(notices)
        return jobs

    # --- queue -------------------------------------------------------------------------------
    def _users_in_turn(self) -> list[str]:
        # The user served longest ago (or never) goes first; ties keep arrival order.
        return sorted(self._pending, key=lambda u: self._last_served.get(u, -1))

    def _fair_order(self) -> list[Job]:
        """The pending jobs in the order they will start (round-robin users, FIFO within one)."""
        order: list[Job] = []
        queues = [self._pending[u] for u in self._users_in_turn()]
        depth = max((len(q) for q in queues), default=0)
        for i in range(depth):
            order.extend(q[i] for q in queues if len(q) > i)
        return order

    def _pop_next(self) -> Job:
        user = self._users_in_turn()[0]
        q = self._pending[user]
        job = q.popleft()
        if not q:
            del self._pending[user]
        self._serve_count += 1
        self._last_served[user] = self._serve_count
        self._n_pending -= 1
        return job

    def _dispatch_locked(self) -> list[tuple[Job, int]]:
        """Give idle slots their next jobs; return the queue-position notices to send."""
        while self._n_pending and not self._closed:
            idle = [s for s in self.slots if s.job is None]
            if not idle:
                break
            job = self._pop_next()
            slot = max(idle, key=lambda s: (_affinity(s, job), -s.last_used))
            slot.job = job
            self._last_ahead.pop(job.id, None)
            slot.wake.set()
        notices = []
        for ahead, job in enumerate(self._fair_order()):
            if self._last_ahead.get(job.id) != ahead:
                self._last_ahead[job.id] = ahead
                notices.append((job, ahead))
        return notices

    @staticmethod
    def _notify(notices: list[tuple[Job, int]]) -> None:
        for job, ahead in notices:
            job.emit(Queued(n_ahead=ahead))

    def _cancel_pending(self, job: Job) -> None:
        with self._lock:
            q = self._pending.get(job.user_key)
            if q is None or job not in q:
                return  # running: the slot's loop sees the flag
            q.remove(job)
            if not q:
                del self._pending[job.user_key]
            self._n_pending -= 1
            self._last_ahead.pop(job.id, None)
            notices = self._dispatch_locked()
        self._finish_unstarted(job, "cancelled")
        self._notify(notices)

    @staticmethod
    def _finish_unstarted(job: Job, reason: str, error: str | None = None) -> None:
        waited = time.monotonic() - job.submitted_at
        job.emit(
            Finished(
                reason=reason,  # type: ignore[arg-type]
                usage=Usage(len(job.prompt_ids), 0),
                timings=Timings(waited, None, 0.0, waited, 0, 0, None),
                text="",
                token_ids=(),
                error=error,
            )
        )

    # --- slots -------------------------------------------------------------------------------
    def _slot_main(self, slot: Slot) -> None:
        lower_this_threads_priority(self.nice)
        while True:
            slot.wake.wait()
            slot.wake.clear()
            if self._closed:
                return
            job = slot.job
            if job is None:
                continue
            self.budget.activate()
            try:
                run_job(
                    job,
                    slot.ctx,
                    budget=self.budget,
                    tokenizer=self.tokenizer,
                    stop_ids=self.stop_ids,
                    prefill_chunk=self.prefill_chunk,
                )
                if self.after_job is not None:
                    self.after_job(job, slot.ctx)
            except Exception as exc:  # a bug must end the job, never the slot
                log.exception("job %s failed", job.id)
                slot.ctx.truncate(0)
                # The text streamed so far stays (checkpoints saved it): never an empty final text.
                job.end_with_text_so_far("error", f"internal error: {type(exc).__name__}")
            finally:
                self.budget.deactivate()
                with self._lock:
                    slot.job = None
                    slot.last_used = time.monotonic()
                    notices = self._dispatch_locked()
                self._notify(notices)

    # --- introspection and shutdown ----------------------------------------------------------
    @property
    def capacity(self) -> int:
        return len(self.slots) + self.queue_max

    @property
    def running(self) -> int:
        return sum(1 for s in self.slots if s.job is not None)

    @property
    def queue_depth(self) -> int:
        return self._n_pending

    @property
    def draining(self) -> bool:
        return self._draining

    def running_jobs(self) -> list[Job]:
        return [s.job for s in self.slots if s.job is not None]

    def drain(self, timeout: float) -> dict[str, int]:
        """Stop admitting, cancel the queue, let running jobs finish for ``timeout`` s, cancel the rest."""
        with self._lock:
            self._draining = True
            queued = self._fair_order()
            self._pending.clear()
            self._n_pending = 0
        for job in queued:
            self._finish_unstarted(job, "cancelled", "the server is shutting down")
        finished, cancelled = finish_or_cancel(self.running_jobs(), timeout)
        return {"queued_cancelled": len(queued), "finished": finished, "cancelled": cancelled}

    def close(self) -> None:
        self.drain(0)
        self._closed = True
        for slot in self.slots:
            slot.wake.set()
        for slot in self.slots:
            if slot.thread is not None:
                slot.thread.join(timeout=5)
