"""One upstream server: its settings, its concurrency limit and bounded queue, its health, and the
HTTP exchange that opens a call (up to the first token).

All of a connection's state belongs to one event loop (the web process's); nothing here is
thread-safe, and nothing needs to be.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx2 as httpx

from inference.upstream.errors import (
    UpstreamError,
    UpstreamQueueFull,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

RECHECK_INTERVAL = 5.0  # seconds between health checks of an unhealthy connection


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    base_url: str  # ends with /v1: the paths are base_url + "/chat/completions" and "/models"
    api_key: str = ""
    max_concurrent: int = 4
    queue_max: int = 16
    connect_timeout: float = 5.0
    read_timeout: float = 120.0  # the longest wait for the first token, or between two chunks
    models: tuple[str, ...] = ()
    enabled: bool = True


@dataclass
class Stats:
    """Per-connection counters for /metrics."""

    requests: int = 0
    errors: int = 0
    latency_sum: float = 0.0  # seconds from sending the request to its last byte
    latency_count: int = 0


class Connection:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.healthy = True
        self.error = ""
        self.checked_at: float | None = None  # time.time() of the last health check
        self.discovered: tuple[str, ...] = ()  # ids its GET /models listed at the last check
        self.stats = Stats()
        self._client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None
        self._recheck: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def load(self) -> float:
        """How busy it is, for picking the least busy replica: calls per slot, queued ones included."""
        return (self.in_flight + self.waiting) / max(1, self.config.max_concurrent)

    # --- the HTTP client --------------------------------------------------------------------------

    def client(self) -> httpx.AsyncClient:
        """The connection's HTTP client (one per event loop: tests run several loops)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            c = self.config
            headers = {"Authorization": f"Bearer {c.api_key}"} if c.api_key else {}
            client = httpx.AsyncClient(
                base_url=c.base_url.rstrip("/") + "/",
                headers=headers,
                timeout=httpx.Timeout(c.read_timeout, connect=c.connect_timeout, pool=None),
                # One TCP connection per running call (and a few spare): the queue is ours, not httpx's.
                limits=httpx.Limits(
                    max_connections=c.max_concurrent + 2, max_keepalive_connections=c.max_concurrent
                ),
                trust_env=False,
            )
            self._client = (loop, client)
        return self._client[1]

    async def aclose(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
        if self._client is not None and self._client[0] is asyncio.get_running_loop():
            await self._client[1].aclose()
        self._client = None

    # --- slots and the queue ----------------------------------------------------------------------

    async def acquire(self) -> None:
        """Take a slot, waiting in the bounded queue (``UpstreamQueueFull`` when it is full)."""
        if self.in_flight < self.config.max_concurrent and not self._waiters:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.config.queue_max:
            raise UpstreamQueueFull(
                f"The upstream '{self.name}' is busy: {self.in_flight} calls running and "
                f"{len(self._waiters)} waiting. Please retry after a short wait."
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as the caller went away
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give the slot to the first caller still waiting, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: in_flight does not change
                return
        self.in_flight -= 1

    # --- health -------------------------------------------------------------------------------

    async def check(self) -> list[str]:
        """GET /models: the ids it serves. Marks the connection healthy or not; raises UpstreamError."""
        self.checked_at = time.time()
        try:
            response = await self.client().get("models", timeout=self.config.connect_timeout + 5)
            if response.status_code >= 400:
                raise UpstreamUnavailable(f"GET /models answered {response.status_code}")
            data = response.json().get("data")
            ids = [str(card["id"]) for card in data if isinstance(card, dict) and card.get("id")]
        except UpstreamError as exc:
            self._set_health(False, str(exc))
            raise
        except (httpx.HTTPError, ValueError, TypeError, AttributeError) as exc:
            # The same words as a failed call's (_translate), whichever of the two notices first.
            error = _translate(exc)
            reason = str(error) if isinstance(error, UpstreamError) else _describe(exc)
            self._set_health(False, reason)
            raise UpstreamUnavailable(reason) from None
        self.discovered = tuple(ids)
        self._set_health(True, "")
        return ids

    def _set_health(self, healthy: bool, error: str) -> None:
        if healthy != self.healthy:
            log.warning("upstream %s is now %s %s", self.name, "healthy" if healthy else "unhealthy", error)
        self.healthy, self.error = healthy, error

    def mark_unhealthy(self, error: str) -> None:
        """Take it out of rotation and re-check it in the background until it answers again."""
        self.checked_at = time.time()
        self._set_health(False, error)
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.get_running_loop().create_task(self._recheck_until_healthy())

    async def _recheck_until_healthy(self) -> None:
        while not self.healthy:
            await asyncio.sleep(RECHECK_INTERVAL)
            try:
                await self.check()
            except UpstreamError:
                pass

    # --- one call -------------------------------------------------------------------------------

    async def open(
        self, body: dict[str, Any], *, stream: bool, sent: Callable[[], None] | None = None
    ) -> Opened:
        """Send one chat completion and wait for its first token (streaming) or its whole answer.
        ``sent`` is called once the request is on its way (its body written to the connection).

        Holds a slot from here until ``Opened.aclose``. Raises ``UpstreamQueueFull``,
        ``UpstreamRejected`` (4xx), ``UpstreamTimeout``, or ``UpstreamUnavailable`` (connection
        failure, 5xx, or a stream that ended or went wrong before its first token).
        """
        submitted = time.monotonic()
        await self.acquire()
        queue_wait = time.monotonic() - submitted
        self.stats.requests += 1
        opened = Opened(self, submitted, queue_wait)
        try:
            client = self.client()
            extensions = {"trace": _on_sent(sent)} if sent is not None else None
            request = client.build_request("POST", "chat/completions", json=body, extensions=extensions)
            if not stream:
                response = await client.send(request)
                _raise_for_status(response.status_code, response.content)
                opened.body = response.json()
                if not isinstance(opened.body, dict):
                    raise UpstreamUnavailable(
                        "the upstream answered with something that is not a JSON object"
                    )
                opened.first_token_at = time.monotonic()
                return opened
            opened.response = await client.send(request, stream=True)
            if opened.response.status_code >= 400:
                _raise_for_status(opened.response.status_code, await opened.response.aread())
            opened.lines = opened.response.aiter_lines()
            async for chunk in opened.read_chunks():
                opened.buffered.append(chunk)
                if _has_token(chunk.data):
                    opened.first_token_at = time.monotonic()
                    break
            else:
                opened.finished = True  # ended (with [DONE]) before any token: an empty reply
            return opened
        except BaseException as exc:
            await opened.aclose(failed=not isinstance(exc, UpstreamRejected | asyncio.CancelledError))
            raise _translate(exc) from None


class Chunk(NamedTuple):
    """One chunk of a stream: decoded, and its JSON text as the upstream wrote it."""

    data: dict[str, Any]
    raw: str


class Opened:
    """A call the upstream accepted: its chunks so far, and the rest to read. ``aclose`` frees the slot."""

    def __init__(self, connection: Connection, submitted: float, queue_wait: float) -> None:
        self.connection = connection
        self.submitted = submitted
        self.queue_wait = queue_wait
        self.first_token_at: float | None = None
        self.body: dict[str, Any] | None = None  # a non-streaming answer
        self.response: httpx.Response | None = None
        self.lines: AsyncIterator[str] | None = None
        self.buffered: list[Chunk] = []
        self.finished = False  # [DONE] was read
        self._closed = False

    async def read_chunks(self) -> AsyncIterator[Chunk]:
        """The stream's chunks up to [DONE]; ``UpstreamUnavailable`` if it stops short or is malformed."""
        assert self.lines is not None
        try:
            async for line in self.lines:
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), event names
                data = line[5:].strip()
                if data == "[DONE]":
                    self.finished = True
                    return
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise UpstreamUnavailable(
                        f"the upstream sent a malformed chunk: {data[:200]!r}"
                    ) from None
                if not isinstance(chunk, dict):
                    raise UpstreamUnavailable(f"the upstream sent a malformed chunk: {data[:200]!r}")
                if "error" in chunk and not chunk.get("choices"):
                    message = _error_message(chunk) or "an error"
                    raise UpstreamUnavailable(f"the upstream reported an error mid-stream: {message}")
                yield Chunk(chunk, data)
        except httpx.HTTPError as exc:
            raise _translate(exc) from None
        raise UpstreamUnavailable("the upstream's stream ended before [DONE]")

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Every chunk: those read while opening, then the rest."""
        while self.buffered:
            yield self.buffered.pop(0)
        if not self.finished and self.lines is not None:
            async for chunk in self.read_chunks():
                yield chunk

    async def aclose(self, *, failed: bool = False) -> None:
        """Close the HTTP response (the upstream sees the disconnect) and free the slot. Idempotent."""
        if self._closed:
            return
        self._closed = True
        connection = self.connection
        connection.release()
        stats = connection.stats
        stats.latency_sum += time.monotonic() - self.submitted - self.queue_wait
        stats.latency_count += 1
        if failed:
            stats.errors += 1
        if self.response is not None:
            try:
                await self.response.aclose()
            except Exception:
                log.debug("closing the response of %s", connection.name, exc_info=True)


def _on_sent(sent: Callable[[], None]) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    """An httpcore ``trace`` hook that calls ``sent`` when the request's body has been written."""

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith("send_request_body.complete"):
            sent()

    return trace


def _has_token(chunk: dict[str, Any]) -> bool:
    """Whether a chunk carries anything for the client beyond the role (content, a tool call, an end)."""
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") or {}
        if choice.get("finish_reason") or any(
            delta.get(k) for k in ("content", "tool_calls", "function_call", "refusal", "reasoning_content")
        ):
            return True
    return False


def _error_message(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
        return str(message) if message is not None else ""
    return None


def _raise_for_status(status: int, content: bytes) -> None:
    if status < 400:
        return
    try:
        body: Any = json.loads(content)
    except ValueError:
        body = None
    message = _error_message(body)
    if 400 <= status < 500:
        raise UpstreamRejected(
            status, body if message is not None else None, message or f"The upstream answered {status}."
        )
    raise UpstreamUnavailable(f"the upstream answered {status}" + (f": {message}" if message else ""))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, UpstreamError | asyncio.CancelledError):
        return exc
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return UpstreamTimeout(f"the upstream did not answer in time ({_describe(exc)})")
    if isinstance(exc, httpx.HTTPError | ValueError | OSError):
        return UpstreamUnavailable(f"could not reach the upstream ({_describe(exc)})")
    return exc


def snapshot(connection: Connection) -> dict[str, Any]:
    """A connection's state for /status and ``manage.py upstreams``."""
    return {
        "name": connection.name,
        "healthy": connection.healthy,
        "error": connection.error,
        "in_flight": connection.in_flight,
        "waiting": connection.waiting,
        "max_concurrent": connection.config.max_concurrent,
        "queue_max": connection.config.queue_max,
        "requests": connection.stats.requests,
        "errors": connection.stats.errors,
    }
