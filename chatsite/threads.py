"""Each HTTP request's sync work in a thread kept for later requests, instead of a new thread each.

Django's ASGI handler gives every request a ``ThreadSensitiveContext`` of its own, and asgiref then
starts a new thread for that request's thread-sensitive work (sync middleware hooks, sync views,
``database_sync_to_async``) and stops it at the request's end. That keeps one request's sync work
in one thread, and two requests' sync views from waiting for each other. But a new thread has no
database connection: on SQLite each request then opened one (the file, the WAL and synchronous
pragmas, Django's SQL functions: ~0.8 ms, more than the queries of a /v1 call), so the
``CONN_MAX_AGE=None`` setting that keeps SQLite connections (chatsite/settings.py) never applied to
requests, and every request paid a thread start.

``ASGIHandler`` keeps those guarantees and reuses the threads: a request takes an idle thread (a
one-worker executor, asgiref's ``ThreadSensitiveContext(executor=...)``), or a new one when every
kept thread is busy, and gives it back once all the work it submitted there has run. At most
``KEPT`` idle threads are kept; more are stopped. A task the request started and left running
(which must not happen: background work runs in a fresh context, see conversations/live/runner.py)
gets asgiref's RuntimeError for a thread-sensitive call after the request, never another request's
thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler

KEPT = 8  # idle request threads kept (each with its database connection on SQLite)


class RequestThread(ThreadPoolExecutor):
    """One worker thread, which counts the calls submitted to it that have not finished."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="request")
        self.pending = 0
        self._count = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def counted() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                with self._count:
                    self.pending -= 1

        with self._count:
            self.pending += 1
        return super().submit(counted)


class RequestThreads:
    """The kept threads: each one request's at a time."""

    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self._idle: list[RequestThread] = []
        self._lock = threading.Lock()
        self.started = 0  # threads started so far

    def take(self) -> RequestThread:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.started += 1
        return RequestThread()

    def give_back(self, thread: RequestThread) -> None:
        """Keep ``thread`` for another request at once if nothing submitted to it is left (the
        usual case: a request waits for its calls), else once that has run: a call the request
        stopped waiting for (its client went away) may still be running there."""
        if thread.pending == 0:
            self._idle_again(thread)
            return
        try:
            drained = thread.submit(lambda: None)
        except RuntimeError:  # shut down: the interpreter is exiting
            return
        drained.add_done_callback(lambda _: self._idle_again(thread))

    def _idle_again(self, thread: RequestThread) -> None:
        with self._lock:
            if len(self._idle) < self.kept:
                self._idle.append(thread)
                return
        thread.shutdown(wait=False)


class ASGIHandler(DjangoASGIHandler):
    """Django's ``ASGIHandler`` with each request's thread-sensitive work in a kept thread."""

    threads = RequestThreads()

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        thread = self.threads.take()
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send)
        finally:
            self.threads.give_back(thread)
