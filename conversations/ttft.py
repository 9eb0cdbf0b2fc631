"""Where a reply's time to its first token goes: server-side timestamps (``CHAT_TTFT_TRACE``).

Off by default (every call here is then a dictionary lookup or less). With ``CHAT_TTFT_TRACE`` set to
a file path, each /v1 completion and each websocket message answered by the embedded model appends
one JSON line to that file once its first token has been written to the client:

    {"kind": "v1" | "ws", "marks": {"request": t, "auth": t, ..., "first_write": t},
     "prompt_ids": [...], "cached": n}

(``cached``: the prompt tokens the slot reused from its cache; the rest were evaluated.)

Every ``t`` is ``time.monotonic()``, which on Linux is one clock for every process of the machine,
so a benchmark can set its own send and receive times beside them (bench/api.py ``--ttft``,
bench/ws_ttft.py). The marks, in path order (a mark is kept at its first setting):

- ``request``: the view (or the websocket consumer's ``receive``) starts;
- ``auth``: the API key (or the socket's access) is checked, with the team's model permissions;
- ``parsed``: the body is validated (``/v1``); ``user_row``: the user message is written (websocket:
  a regenerate, retry or edit; a new message is written with its reply's row, at ``logged``);
- ``history``: the conversation's messages are read (websocket);
- ``prompt``: the chat template is rendered and tokenized (with the tools/grammar plan);
- ``reserved``: the usage limits took the request;
- ``admitted``: the scheduler took the job(s);
- ``slot``, ``prefill``, ``sample``, ``delta``: in the slot thread: the job starts, its prompt is
  evaluated, the first token is sampled, its text is emitted;
- ``logged``: the log rows are written (conversation, messages, streaming replies; on the
  websocket a new user message and its reply's row);
- ``response``: the /v1 view returns its streaming response;
- ``publish``: the runner broadcasts the first text (websocket);
- ``first_write``: the first content chunk (SSE) or delta frame (websocket) is handed to the server.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from typing import Any

from django.conf import settings

_current: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("ttft_trace", default=None)
_by_message: dict[int, tuple[Trace, Any]] = {}  # reply id → its trace and job (websocket replies)
_write_lock = threading.Lock()

JOB_MARKS = (("slot", "started_at"), ("prefill", "prefill_done_at"), ("sample", "first_token_at"))


class Trace:
    __slots__ = ("kind", "marks", "info", "written")

    def __init__(self, kind: str, at: float | None = None) -> None:
        self.kind = kind
        self.marks: dict[str, float] = {"request": time.monotonic() if at is None else at}
        self.info: dict[str, Any] = {}
        self.written = False

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.monotonic())

    def add_job(self, job: Any) -> None:
        """The slot thread's marks of ``job`` (absent for a job run by another process)."""
        for name, attribute in JOB_MARKS:
            value = getattr(job, attribute, None)
            if value is not None:
                self.marks.setdefault(name, value)
        first_delta = getattr(job, "first_delta_at", None)
        if first_delta is not None:
            self.marks.setdefault("delta", first_delta)
        # What the slot evaluated, so that a benchmark can time the raw engine on the same work.
        self.info["job"] = job.id  # raw_engine_probe's line names it too
        self.info["prompt_ids"] = list(job.prompt_ids)
        self.info["cached"] = getattr(job, "cached_tokens", None)

    def write(self) -> None:
        if self.written:
            return
        self.written = True
        _append({"kind": self.kind, "marks": self.marks, **self.info})


def _append(record: dict[str, Any]) -> None:
    """One line of the trace file (``CHAT_TTFT_TRACE``)."""
    line = json.dumps(record) + "\n"
    with _write_lock, open(settings.CHAT_TTFT_TRACE, "a") as out:
        out.write(line)


def first_token_seconds(ctx: Any, ids: list[int], cached: int, *, threads: int, batch_size: int) -> float:
    """The raw engine's time to the first token of ``ids`` in the engine context ``ctx``: with
    ``ids[:cached]`` in its cache (evaluated first, untimed, unless the cache already starts with
    them), one ``eval`` of the rest (``batch_size`` tokens a batch, ``threads`` threads) and an
    argmax, timed. bench.ttft's baseline, in the server's slot (below) and in its own process."""
    if ctx.tokens[:cached] == ids[:cached]:
        ctx.truncate(cached)
    else:
        ctx.truncate(0)
        ctx.eval(ids[:cached], threads=threads, batch_size=batch_size)
    start = time.monotonic()
    ctx.eval(ids[cached:], threads=threads, batch_size=batch_size)
    int(ctx.logits().argmax())
    return time.monotonic() - start


def raw_engine_probe(threads: int, batch_size: int, settle: float = 0.3) -> Any:
    """A ``Scheduler.after_job`` that times the raw engine on the job's own slot, once the process
    has settled after the reply (``settle`` seconds: its last writes done): the same work as the
    job's prefill after the prefix it found cached (``first_token_seconds``). Appends
    ``{"kind": "raw", "job": id, "raw_s": seconds, "cached": n}`` to the trace file. The same
    process, threads and memory as the reply's own prefill: what the server adds over its engine.

    Timed once: like the reply's prefill, the first evaluation after the machine was idle. A
    second and third right after it were 4-8% faster (15 rounds, 230-token context), so a median
    of three understated the engine's own time for the reply by ~6-10 ms."""

    def probe(job: Any, ctx: Any) -> None:
        if job.prefill_done_at is None:  # cancelled or failed before its first token: nothing to time
            return
        time.sleep(settle)
        cached = job.cached_tokens or 0
        elapsed = first_token_seconds(ctx, job.prompt_ids, cached, threads=threads, batch_size=batch_size)
        _append({"kind": "raw", "job": job.id, "raw_s": elapsed, "cached": cached})

    return probe


def probe_raw_engine(model: Any) -> None:
    """Time the raw engine after each reply of ``model`` (its own slots: not a worker's)."""
    from inference.scheduler import Scheduler

    scheduler = model.scheduler
    if isinstance(scheduler, Scheduler):
        scheduler.after_job = raw_engine_probe(scheduler.threads, scheduler.prefill_chunk)


def begin(kind: str) -> Trace | None:
    """Start the trace of this request (in the current context), when tracing is on."""
    if not settings.CHAT_TTFT_TRACE:
        return None
    trace = Trace(kind)
    _current.set(trace)
    return trace


def current() -> Trace | None:
    return _current.get()


def mark(name: str) -> None:
    trace = _current.get()
    if trace is not None:
        trace.mark(name)


def follow_message(message_id: int, job: Any) -> None:
    """Keep the current trace for the reply ``message_id`` until its first frame is written."""
    trace = _current.get()
    if trace is not None:
        _by_message[message_id] = (trace, job)


def mark_message(message_id: int, name: str) -> None:
    entry = _by_message.get(message_id)
    if entry is not None:
        entry[0].mark(name)


def first_write(message_id: int) -> None:
    """The reply's first text went out on a socket: complete its trace and write it."""
    entry = _by_message.pop(message_id, None)
    if entry is None:
        return
    trace, job = entry
    trace.mark("first_write")
    trace.add_job(job)
    trace.write()
