"""POST /v1/chat/completions.

The order matters: authenticate, validate, build the prompt, then ask the scheduler to admit all n
choices. Only an admitted call is written (conversation, messages, n streaming replies), so a 429
leaves nothing behind for the SDK's automatic retry to duplicate. If that write fails, the jobs are
cancelled. The runner owns the jobs from then on; this view only reads their events.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse

from conversations import actions, faults, ttft
from conversations.api import ratelimits, upstream
from conversations.api.catalog import resolve_model
from conversations.api.http import (
    api_view,
    authenticate,
    await_key_use,
    json_response,
    note_key_use,
    read_json,
)
from conversations.api.protocol import (
    APIError,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ChunkDelta,
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
    Usage,
    parse_chat_request,
)
from conversations.api.tools import Output, OutputPlan, PromptPlan, plan_output
from conversations.live import runner
from conversations.models import ApiKey, Message
from inference.jobs import (
    BackendUnreachable,
    ContextLengthExceeded,
    Delta,
    EventPump,
    Finished,
    Job,
    Overloaded,
)
from inference.model import ChatModel
from inference.sampling import SamplingError, SamplingParams
from inference.streaming import DONE, sse
from review import replay
from upstreams import permissions

RETRY_AFTER_SECONDS = 2
FLUSH_INTERVAL = 0.04  # seconds between two writes of a stream (the first is not held back)


@api_view("POST")
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    ttft.begin("v1")
    key = await authenticate(request)
    data = read_json(request)
    await permissions.check(key, data)  # the team's choice of models
    ttft.mark("auth")
    if (upstream_model := await upstream.target(data)) is not None:  # served by an upstream server
        return await upstream.chat_completions(key, data, upstream_model)
    body = parse_chat_request(data)
    model = resolve_model(body.model)
    ttft.mark("parsed")
    # Rendering and tokenizing up to a megabyte of text would stall the event loop: one trip to a
    # worker thread, which also takes the usage limits' reservation (each trip costs a thread hop on
    # the way to the first token).
    plan, prompt, prompt_ids, params, reservation = await sync_to_async(
        _prompt_and_reserve, thread_sensitive=False
    )(body, model, key)
    ttft.mark("reserved")
    n = body.n or 1
    try:
        jobs = await admit(model, prompt_ids, params, n, key)
    except BaseException:
        await ratelimits.refund(reservation)
        raise
    ttft.mark("admitted")

    completion_id = f"chatcmpl-{secrets.token_urlsafe(18)}"
    # What the log records with each reply: the sampling actually used, and the request's own terms.
    logged = {
        **_params_record(params),
        "n": n,
        "stream": bool(body.stream),
        "model": body.model,
        "id": completion_id,
    }
    try:
        # While the slot evaluates the prompt. Not thread-sensitive: a write waiting for the lock in
        # the one thread that serves every request's database reads would stall them all.
        call = await database_sync_to_async(_log_call, thread_sensitive=False)(
            key, model, body, plan, prompt, prompt_ids, logged
        )
    except BaseException:
        for job in jobs:
            job.cancel()
        await ratelimits.refund(reservation)
        raise
    ttft.mark("logged")
    run = runner.start(call.conversation.pk, jobs, call.replies)
    ratelimits.limits.settle_after(run, reservation)
    reply = Reply(completion_id, model.model_id, len(prompt_ids), run, Output(plan, model.tokenizer, n))
    reply.key_use = note_key_use(key, run)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        run.track_delivery()  # checkpoints save only what the stream has handed to the client
        response = StreamingHttpResponse(reply.stream(include_usage), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        ttft.mark("response")
        return ratelimits.with_headers(response, reservation)
    try:
        finished = await run.wait()
    except asyncio.CancelledError:  # the client went away: stop generating for nobody
        run.cancel(Message.Status.CANCELLED)
        raise
    await await_key_use(reply.key_use)
    if run.unsaved:  # every answer is logged: one the log lacks is not handed out
        raise _unsaved(retry=True)
    completion = reply.completion(finished)
    await reply.record_calls(finished)
    return ratelimits.with_headers(json_response(completion), reservation)


def _prompt(body: ChatCompletionRequest, model: ChatModel) -> tuple[OutputPlan, PromptPlan, list[int]]:
    """Tools and response_format: the output plan (the grammar, compiled and checked here: a schema
    it cannot use is a 400); the prompt (the tools in the template's own syntax, or in the system
    prompt); and the prompt's token ids."""
    plan, prompt = plan_output(body, model.tokenizer, model.template)
    return plan, prompt, model.prompt_ids(prompt.messages, prompt.tools)


def _prompt_and_reserve(
    body: ChatCompletionRequest, model: ChatModel, key: ApiKey
) -> tuple[OutputPlan, PromptPlan, list[int], SamplingParams, ratelimits.limits.Reservation]:
    """``_prompt``, the sampling, and the limits' reservation of the prompt and the most it may
    generate (review/limits.py: a refused call does no work and writes nothing). Synchronous."""
    plan, prompt, prompt_ids = _prompt(body, model)
    params = plan.apply(sampling_params(body, model, len(prompt_ids)))
    ttft.mark("prompt")
    reservation = ratelimits.reserve_now(key, len(prompt_ids) + params.max_tokens * (body.n or 1))
    return plan, prompt, prompt_ids, params, reservation


def _log_call(
    key: ApiKey,
    model: ChatModel,
    body: ChatCompletionRequest,
    plan: OutputPlan,
    prompt: PromptPlan,
    prompt_ids: list[int],
    logged: dict[str, Any],
) -> actions.ApiCall:
    """Write the admitted call to the log in one trip to a database thread and one commit: its
    conversation, messages and n streaming replies, with the model file's and the prompt's hashes
    so that a reviewer can replay the answer (review/replay.py), and its tools or response_format
    (kept with the replies; their calls are added at the end)."""
    params = {**logged, **replay.logged_fingerprints(model, prompt_ids)}
    return actions.start_api_call(
        key,
        model_id=model.model_id,
        messages=prompt.logged,
        params=params,
        n=body.n or 1,
        prompt_tokens=len(prompt_ids),
        request_user=body.user or "",
        tools=plan.record or None,
    )


def sampling_params(body: ChatCompletionRequest, model: ChatModel, n_prompt: int) -> SamplingParams:
    """The request's sampling fields with OpenAI's defaults, checked against the model."""
    try:
        max_tokens = model.scheduler.resolve_max_tokens(n_prompt, body.completion_limit)
    except ContextLengthExceeded as exc:
        raise InvalidRequest(str(exc), param="messages", code="context_length_exceeded") from None
    if settings.CHAT_MAX_TOKENS_CAP is not None:
        max_tokens = min(max_tokens, settings.CHAT_MAX_TOKENS_CAP)
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p == 0:  # OpenAI accepts 0: a nucleus of the single most likely token, i.e. greedy
        temperature, top_p = 0.0, 1.0
    try:
        params = SamplingParams(
            temperature=temperature,
            top_p=top_p,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            logit_bias=body.logit_bias or {},
            seed=body.seed,
            stop=tuple(body.stop_list),
            max_tokens=max_tokens,
        )
        params.validate(model.engine.vocab_size)
    except SamplingError as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="invalid_value") from None
    return params


async def admit(
    model: ChatModel, prompt_ids: list[int], params: SamplingParams, n: int, key: ApiKey
) -> list[Job]:
    """All n choices are admitted together, or the answer is 429 before anything is written."""
    scheduler = model.scheduler
    capacity = scheduler.capacity
    if n > capacity:  # could never be admitted: a retry would not help, so this is not a 429
        raise InvalidRequest(
            f"n={n} is more than this server can run at once (at most {capacity}).", param="n"
        )
    try:
        # An API key counts as its user for the scheduler's fairness.
        # Awaited: with several web processes the scheduler is the inference worker's, over Redis.
        return await scheduler.asubmit_n(prompt_ids, params, n, user_key=f"user-{key.user_id}")
    except BackendUnreachable as exc:  # not the caller's rate: the service is down (503, not 429)
        raise ServiceUnavailable(
            f"The service is unavailable: {exc}. Please retry after a short wait.",
            code="worker_unavailable",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None
    except Overloaded as exc:
        raise RateLimited(
            f"The model is busy ({exc}). Please retry after a short wait.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None


def _params_record(params: SamplingParams) -> dict[str, Any]:
    return params.to_json(exclude=("grammar", "logprobs"))


def _unsaved(*, retry: bool = False) -> APIError:
    """The reply was generated but its final state could not be written (disk full, write lock)."""
    message = (
        "The completion could not be saved: the server's database cannot be written right now "
        "(it is full or busy). It is kept and saved when the database recovers."
    )
    if retry:
        return ServiceUnavailable(
            message + " It is not returned: retry after a short wait.",
            code="save_failed",
            headers={"Retry-After": str(faults.RETRY_AFTER_SECONDS)},
        )
    return APIError(message, code="save_failed")


def _failure(finished: Finished) -> APIError:
    if finished.reason == "cancelled":  # not by this request: the server is draining
        return APIError("The server is shutting down; the completion was cancelled.", code="cancelled")
    return APIError(f"The model failed while generating: {finished.error or 'unknown error'}.")


class Reply:
    """The answer to one admitted call: a JSON completion or a stream of chunks."""

    def __init__(
        self, completion_id: str, model_id: str, prompt_tokens: int, run: runner.Run, output: Output
    ) -> None:
        self.output = output  # content, tool calls and logprobs of each choice
        self.message_ids = list(run.message_ids)
        self.id = completion_id
        self.model_id = model_id
        self.prompt_tokens = prompt_tokens
        self.run = run
        self.created = int(time.time())
        self.trace = ttft.current()
        self.key_use: asyncio.Task[None] | None = None  # http.note_key_use

    def usage(self, finished: list[Finished]) -> Usage:
        completion = sum(f.usage.completion_tokens for f in finished)
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
        )

    def completion(self, finished: list[Finished]) -> ChatCompletion:
        failed = next((f for f in finished if f.reason not in ("stop", "length")), None)
        if failed is not None:
            raise _failure(failed)
        for i, job in enumerate(self.run.jobs):
            job.subscribe(lambda event, i=i: self.output.record_event(i, event))  # replays its events
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model_id,
            choices=[self.output.choice(i, f) for i, f in enumerate(finished)],
            usage=self.usage(finished),
        )

    async def record_calls(self, finished: list[Finished]) -> None:
        """Keep the tool calls each reply made with it (replies that offered tools only)."""
        plan = self.output.plan
        if not plan.tools.offers_tools:
            return
        for message_id, (index, f) in zip(self.message_ids, enumerate(finished), strict=True):
            calls = [c.model_dump() for c in self.output.calls(index, f)]
            await database_sync_to_async(actions.record_tool_calls)(message_id, plan.record, calls)

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        return sse(
            ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model_id, choices=choices, usage=usage
            )
        )

    async def stream(self, include_usage: bool) -> AsyncIterator[bytes]:
        """Role chunks, content chunks tagged by choice index, a finish chunk per choice, [DONE].

        The slot threads queue their events and wake this task only when it waits for them; the
        chunks found at a wake go out in one write, at most every FLUSH_INTERVAL. A wake and a
        write per token would take CPU from the model at every step. If the client goes away
        (the task is cancelled) the jobs are cancelled, and the runner saves the partial replies
        as 'cancelled'.
        """
        with EventPump(self.run.jobs) as pump:
            complete = False
            delivered = [0] * len(self.run.jobs)
            try:
                yield b"".join(
                    self._chunk([ChunkChoice(index=index, delta=ChunkDelta(role="assistant", content=""))])
                    for index in range(len(self.run.jobs))
                )
                open_choices = len(self.run.jobs)
                # The first text is not held back: the pause between writes starts after it.
                last_flush = -FLUSH_INTERVAL
                while open_choices:
                    if not pump.pending:
                        pump.arm()  # before looking again: an event queued from now on wakes us
                        await pump.wait()
                        pause = last_flush + FLUSH_INTERVAL - time.monotonic()
                        if pause > 0:
                            await asyncio.sleep(pause)
                    out: list[bytes] = []
                    for index, event in pump.take():
                        if isinstance(event, Delta):
                            out.extend(self._chunk([c]) for c in self.output.delta_choices(index, event))
                            delivered[index] += len(event.text)
                        elif isinstance(event, Finished):
                            open_choices -= 1
                            if event.reason not in ("stop", "length"):
                                # After the 200 has gone out, an error can only be told in-band. A job
                                # the scheduler cancelled (draining at shutdown) leaves its siblings
                                # interrupted.
                                self.run.cancel(
                                    Message.Status.ERROR
                                    if event.reason == "error"
                                    else Message.Status.INTERRUPTED
                                )
                                complete = True
                                yield b"".join([*out, sse(_failure(event).body()), DONE])
                                return
                            out.extend(self._chunk([c]) for c in self.output.finish_choices(index, event))
                    if out:
                        last_flush = time.monotonic()
                        if self.trace is not None:
                            self.trace.mark("first_write")
                        yield b"".join(out)
                        if self.trace is not None and not self.trace.written:
                            self.trace.add_job(self.run.jobs[0])
                            self.trace.write()  # after the write it times
                        self.run.mark_delivered(delivered)  # resumed: the server has taken the chunks
                finished = await self.run.wait()  # every reply is saved before [DONE]
                await self.record_calls(finished)
                await await_key_use(self.key_use)
                complete = True
                if self.run.unsaved:  # the client has the text, but the log does not: say so
                    yield sse(_unsaved().body()) + DONE
                    return
                usage = self._chunk([], usage=self.usage(finished)) if include_usage else b""
                yield usage + DONE
            finally:
                if not complete:
                    self.run.cancel(Message.Status.CANCELLED)
