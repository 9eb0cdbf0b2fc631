"""One upstream call, relayed: its chunks become the events of ordinary jobs (one per choice), so
the runner logs, broadcasts, checkpoints and stops an upstream reply exactly like a local one; the
same chunks go, untouched, to a queue that the /v1 stream reads.

Jobs here are fed on the event loop by a task; ``UpstreamJob.cancel`` (from any thread) cancels
that task, which closes the HTTP response: the upstream sees the disconnect and frees its slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from inference.jobs import Delta, Finished, Job, Started, Timings, Usage
from inference.sampling import SamplingParams
from inference.upstream.connection import Chunk, Opened
from inference.upstream.errors import UpstreamError, UpstreamUnavailable

TokenCounter = Callable[[str], int]


class UpstreamJob(Job):
    """A job whose events come from an upstream call rather than a local slot."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._task: asyncio.Task[None] | None = None

    def bind(self, task: asyncio.Task[None]) -> None:
        self._task = task
        if self.cancelled:
            task.get_loop().call_soon_threadsafe(task.cancel)

    def cancel(self) -> None:
        if self.done or self.cancelled:
            return
        super().cancel()
        task = self._task
        if task is not None and not task.done():
            task.get_loop().call_soon_threadsafe(task.cancel)


def new_jobs(n: int, user_key: str) -> list[UpstreamJob]:
    return [
        UpstreamJob(prompt_ids=[], params=SamplingParams(), user_key=user_key, max_tokens=0) for _ in range(n)
    ]


@dataclass(frozen=True)
class End:
    """The last item of a relay's chunk queue."""

    error: UpstreamError | None = None
    cancelled: bool = False


class Relay:
    """Feeds ``jobs`` (and, for a streaming /v1 call, ``chunks``) from one upstream call."""

    def __init__(
        self,
        jobs: list[UpstreamJob],
        *,
        with_chunks: bool = False,
        count_tokens: TokenCounter | None = None,
        prompt_tokens: int = 0,
    ) -> None:
        self.jobs = jobs
        self.chunks: asyncio.Queue[Chunk | End] | None = asyncio.Queue() if with_chunks else None
        self.count_tokens = count_tokens
        self.prompt_tokens = prompt_tokens  # the estimate, until the upstream reports its usage
        self.connection_name = ""
        n = len(jobs)
        self.texts = [""] * n
        self.finish: list[str | None] = [None] * n
        self.first_at: list[float | None] = [None] * n
        self.usage: dict[str, Any] | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self, opening: Opened | Awaitable[Opened]) -> asyncio.Task[None]:
        """Run the relay in a task (``opening``: a call already opened, or one still to open)."""
        self.task = asyncio.get_running_loop().create_task(self._run(opening))
        for job in self.jobs:
            job.bind(self.task)
        return self.task

    async def _run(self, opening: Opened | Awaitable[Opened]) -> None:
        submitted = time.monotonic()
        opened: Opened | None = None
        reason, error = "stop", None
        try:
            opened = opening if isinstance(opening, Opened) else await opening
            submitted = opened.submitted
            self.connection_name = opened.connection.name
            for job in self.jobs:
                job.emit(Started(cached_tokens=0))
            if opened.body is not None:
                self._take(_as_chunk(opened.body), opened.first_token_at)
            else:
                async for chunk in opened.chunks():
                    self._take(chunk.data, time.monotonic())
                    if self.chunks is not None:
                        self.chunks.put_nowait(chunk)
        except asyncio.CancelledError:
            reason = "cancelled"
        except UpstreamError as exc:
            # Cut short: the reply keeps its text and ends as interrupted; a failure to open at all
            # (the websocket path opens here) is an error.
            reason, error = ("cancelled" if any(self.texts) else "error"), exc
            if opened is not None and isinstance(exc, UpstreamUnavailable):  # it may have died
                opened.connection.mark_unhealthy(str(exc))
        finally:
            if opened is not None:
                await opened.aclose(failed=error is not None)
            if self.chunks is not None:
                self.chunks.put_nowait(End(error, reason == "cancelled" and error is None))
            self._finish(reason, error, submitted, opened.queue_wait if opened else 0.0)

    def _take(self, chunk: dict[str, Any], now: float | None) -> None:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if not isinstance(index, int) or not 0 <= index < len(self.jobs):
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                if self.first_at[index] is None:
                    self.first_at[index] = now
                self.texts[index] += content
                self.jobs[index].emit(Delta(text=content, token_ids=()))
            if choice.get("finish_reason"):
                self.finish[index] = str(choice["finish_reason"])
                if self.first_at[index] is None:
                    self.first_at[index] = now

    def _finish(self, reason: str, error: UpstreamError | None, submitted: float, queue_wait: float) -> None:
        now = time.monotonic()
        usage = self.usage or {}
        prompt = usage.get("prompt_tokens")
        prompt_tokens = prompt if isinstance(prompt, int) else self.prompt_tokens
        for index, job in enumerate(self.jobs):
            text = self.texts[index]
            completion = usage.get("completion_tokens") if len(self.jobs) == 1 else None
            if not isinstance(completion, int):
                completion = self.count_tokens(text) if self.count_tokens and text else 0
            first = self.first_at[index]
            decode = now - first if first is not None else 0.0
            job_reason = (self.finish[index] or "stop") if reason == "stop" else reason
            job.emit(
                Finished(
                    reason=job_reason,  # type: ignore[arg-type]  # an upstream's own reasons (tool_calls, …)
                    usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion),
                    timings=Timings(
                        queue_wait=queue_wait,
                        ttft=first - submitted if first is not None else None,
                        prefill=0.0,
                        duration=now - submitted,
                        cached_tokens=0,
                        evaluated_tokens=0,
                        decode_tokens_per_second=completion / decode if decode > 0 and completion else None,
                    ),
                    text=text,
                    token_ids=None,
                    error=str(error) if error is not None else None,
                )
            )


def _as_chunk(body: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming answer read as one chunk (``message`` in place of ``delta``)."""
    return {"choices": body.get("choices") or [], "usage": body.get("usage")}
