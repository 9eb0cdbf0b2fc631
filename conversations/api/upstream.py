"""POST /v1/chat/completions for a model an upstream server runs.

The request is checked as for the embedded model (key, size, content type, the fields chatsite
knows), except that the fields only an upstream can honour (tools, response_format, logprobs, an
engine's own sampling fields) go through unchanged. It is sent on with httpx; once the upstream has
produced its first token the call is logged and the upstream's chunks go to the client as they
come, with only ``model`` rewritten to the id the client asked for. The runner follows the call's
jobs exactly as a local reply's (checkpoints, Stop, the final row).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse

from conversations import actions
from conversations.api import ratelimits
from conversations.api.http import await_key_use, note_key_use
from conversations.api.protocol import (
    APIError,
    ChatCompletionRequest,
    InvalidRequest,
    RateLimited,
    check_storable,
    parse_chat_request,
)
from conversations.live import runner
from conversations.models import ApiKey, Message
from inference.streaming import DONE, sse
from inference.upstream.connection import Opened
from inference.upstream.errors import (
    UpstreamError,
    UpstreamQueueFull,
    UpstreamRejected,
    UpstreamTimeout,
)
from inference.upstream.relay import End, Relay, TokenCounter, new_jobs
from inference.upstream.sse import with_model
from review import limits
from upstreams import permissions, registry

log = logging.getLogger(__name__)

# Checked by the upstream, not by chatsite: the fields the embedded engine refuses.
PASSTHROUGH = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logprobs",
    "top_logprobs",
)
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
LOGGED_PARAMS = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "response_format",
    "tools",
    "tool_choice",
    "logprobs",
    "top_logprobs",
)
# What a call that names no max_tokens reserves for its answer (without CHAT_MAX_TOKENS_CAP): the
# upstream's context is not known here. The limits are settled with the real usage at the end.
RESERVED_MAX_TOKENS = 512


class UpstreamFailed(APIError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimedOut(APIError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


async def target(data: Any) -> str | None:
    """The upstream model id a request body asks for (an alias counts as ``CHAT_DEFAULT_MODEL``),
    or None when it is for the embedded model (or not a well-formed request at all)."""
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        return None
    # The aliases are chatsite's, whatever an upstream lists; the embedded model's own id comes first.
    model_id = permissions.effective_id(data["model"])
    if model_id == permissions.embedded_model_id():
        return None
    pool = await registry.apool()
    return model_id if pool.replicas(model_id) else None


def validate(data: dict[str, Any]) -> ChatCompletionRequest:
    """The request as chatsite reads it; ``InvalidRequest`` naming the first bad field.

    The fields chatsite knows are checked strictly; ``messages`` only for their shape (an upstream
    takes tool results, images, …); everything else is the upstream's to judge.
    """
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        if "messages" not in data:
            raise InvalidRequest(
                "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
            )
        raise InvalidRequest(
            "Invalid value for 'messages': expected a non-empty array.",
            param="messages",
            code="invalid_value",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(
                f"Invalid value for 'messages[{i}]': expected an object.",
                param=f"messages[{i}]",
                code="invalid_type",
            )
        if message.get("role") not in ROLES:
            raise InvalidRequest(
                f"Invalid value for 'messages[{i}].role': expected one of {', '.join(ROLES)}.",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"Invalid value for 'messages[{i}].content': expected a string or an array of parts.",
                param=f"messages[{i}].content",
                code="invalid_value",
            )
    known = {
        k: v
        for k, v in data.items()
        if k in ChatCompletionRequest.model_fields and k not in PASSTHROUGH and k != "messages"
    }
    check_storable(data)  # the log keeps the texts and the params, as for the embedded model
    known["messages"] = [{"role": "user", "content": "-"}]  # checked above
    return parse_chat_request(known)


def log_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The messages as the log keeps them: role and text (non-text parts and tool calls as JSON)."""
    out = []
    for message in messages:
        role = message["role"]
        content = message.get("content")
        if isinstance(content, list):
            text = "\n".join(
                str(p.get("text", "")) if isinstance(p, dict) and p.get("type") == "text" else json.dumps(p)
                for p in content
            )
        else:
            text = content or ""
        if message.get("tool_calls"):
            text = (text + "\n" if text else "") + json.dumps(message["tool_calls"], ensure_ascii=False)
        entry = {
            "role": {"developer": "system", "tool": "user", "function": "user"}.get(role, role),
            "content": text,
        }
        name = message.get("name") or message.get("tool_call_id")
        if role in ("tool", "function"):
            name = f"{role}:{name or ''}"[:64]
        if name:
            entry["name"] = str(name)[:64]
        out.append(entry)
    return out


def token_counter() -> TokenCounter | None:
    """Counting with the embedded model's tokenizer, when the upstream reports no usage (an
    estimate: the upstream's model has its own tokenizer)."""
    from conversations.runtime import get_runtime

    model = get_runtime().model
    if model is None:
        return None
    tokenizer = model.tokenizer
    return lambda text: len(tokenizer.encode(text, parse_special=False))


def api_error(exc: UpstreamError) -> APIError | HttpResponse:
    if isinstance(exc, UpstreamRejected):
        if exc.body is not None:  # OpenAI-shaped: passed through as it is
            return HttpResponse(json.dumps(exc.body), status=exc.status, content_type="application/json")
        error = InvalidRequest(f"The upstream refused the request: {exc}", code="upstream_error")
        error.status = exc.status
        return error
    if isinstance(exc, UpstreamQueueFull):
        return RateLimited(str(exc), headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, UpstreamTimeout):
        return UpstreamTimedOut(f"The upstream server did not answer in time: {exc}.")
    return UpstreamFailed(f"The upstream server failed: {exc}.")


def reserved_max_tokens(body: ChatCompletionRequest) -> int:
    """max_tokens as the call asks (within CHAT_MAX_TOKENS_CAP), or what is reserved without it."""
    wanted = body.completion_limit
    cap = settings.CHAT_MAX_TOKENS_CAP
    if wanted is None:
        return cap if cap is not None else RESERVED_MAX_TOKENS
    return min(wanted, cap) if cap is not None else wanted


async def chat_completions(key: ApiKey, data: dict[str, Any], model_id: str) -> HttpResponseBase:
    body = validate(data)
    n = body.n or 1
    stream = bool(body.stream)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    forward = {**data, "model": model_id}
    if stream:  # always ask, to log the usage; a client that did not ask does not get it
        forward["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
    messages = log_messages(data["messages"])
    count = token_counter()
    completion_tokens = reserved_max_tokens(body) * n

    def count_and_reserve() -> tuple[int, limits.Reservation]:
        # One trip to a thread for both: counting a long prompt must not stall the event loop, and
        # each trip costs time on the way to the first token.
        prompt_tokens = count("\n".join(m["content"] for m in messages)) if count is not None else 0
        return prompt_tokens, ratelimits.reserve_now(key, prompt_tokens + completion_tokens)

    pool = await registry.apool()
    # The limits first (review/limits.py), as for the embedded model: a refused call is not sent on
    # and writes nothing; the reservation is settled with the real usage once the run ends.
    prompt_tokens, reservation = await database_sync_to_async(count_and_reserve, thread_sensitive=False)()
    completion_id = f"chatcmpl-{secrets.token_urlsafe(18)}"
    # The replica is chosen before the call is opened, so that the log rows (written while it
    # opens) name it; a call that moves to another replica has its rows corrected before any token.
    first = pool.pick(model_id)
    logged: dict[str, Any] = {k: data[k] for k in LOGGED_PARAMS if k in data}
    logged.update(n=n, stream=stream, model=data["model"], id=completion_id)
    if first is not None:
        logged["upstream"] = first.name
    try:
        opened, call = await _open_and_log(
            lambda sent: pool.open(model_id, forward, stream=stream, first=first, sent=sent),
            lambda: actions.start_api_call(
                key,
                model_id=model_id,
                messages=messages,
                params=logged,
                n=n,
                prompt_tokens=prompt_tokens,
                request_user=body.user or "",
            ),
            logged.get("upstream"),
        )
    except UpstreamError as exc:
        await ratelimits.refund(reservation)
        error = api_error(exc)
        if isinstance(error, HttpResponse):
            return ratelimits.with_headers(error, reservation)
        raise error from None
    except BaseException:
        await ratelimits.refund(reservation)
        raise

    jobs = new_jobs(n, f"user-{key.user_id}")
    relay = Relay(jobs, with_chunks=stream, count_tokens=count, prompt_tokens=prompt_tokens)
    relay.start(opened)
    run = runner.start(call.conversation.pk, jobs, call.replies)
    ratelimits.limits.settle_after(run, reservation)
    key_use = note_key_use(key, run)
    if stream:
        run.track_delivery()
        response = StreamingHttpResponse(
            _stream(relay, run, data["model"], include_usage, key_use), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return ratelimits.with_headers(response, reservation)
    try:
        await run.wait()
    except asyncio.CancelledError:
        run.cancel(Message.Status.CANCELLED)
        raise
    await await_key_use(key_use)
    answer = dict(opened.body or {})
    answer["model"] = data["model"]
    response = HttpResponse(json.dumps(answer, ensure_ascii=False), content_type="application/json")
    return ratelimits.with_headers(response, reservation)


async def _open_and_log(
    opening: Callable[[Callable[[], None]], Coroutine[Any, Any, Opened]],
    start_call: Callable[[], actions.ApiCall],
    named: str | None,
) -> tuple[Opened, actions.ApiCall]:
    """Open the upstream call (up to its first token) and write its log rows meanwhile: the write
    starts once the request is on its way (``opening`` calls the function it is given then) and
    is off the way to the first token; still no token reaches the client before the call is
    logged. The rows name the connection ``named``; if another replica took the call, they are
    corrected before this returns.

    If either fails, or the client goes away, the other is undone before this returns or raises:
    an opened call is closed (the upstream frees its slot) and written rows are deleted, so a call
    that never got a first token leaves nothing in the log, as before. A process that dies in
    between leaves a streaming reply without text, which the next start-up (or the sweep of stale
    heartbeats) marks interrupted.
    """
    sent = asyncio.Event()
    open_task = asyncio.ensure_future(opening(sent.set))
    log_task: asyncio.Future[actions.ApiCall] | None = None
    done = False
    try:
        # Not before the request has left: the write's thread would compete with sending it.
        sending = asyncio.ensure_future(sent.wait())
        try:
            await asyncio.wait((open_task, sending), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sending.cancel()
        if open_task.done() and open_task.exception() is not None:
            await open_task  # it failed before sending (or before any token): nothing to log
        log_task = asyncio.ensure_future(database_sync_to_async(start_call, thread_sensitive=False)())
        await asyncio.wait((open_task, log_task), return_when=asyncio.FIRST_EXCEPTION)
        if log_task.done() and log_task.exception() is not None:
            raise log_task.exception()  # type: ignore[misc]  # no need to wait for the first token
        opened = await open_task
        call = await log_task
        if opened.connection.name != named:
            await database_sync_to_async(actions.record_upstream, thread_sensitive=False)(
                [reply.pk for reply in call.replies], opened.connection.name
            )
        done = True
        return opened, call
    finally:
        if not done:
            undoing = asyncio.ensure_future(_undo(open_task, log_task))
            _keep(undoing)  # it finishes even if this request is cancelled again meanwhile
            await asyncio.shield(undoing)


async def _undo(open_task: asyncio.Future[Opened], log_task: asyncio.Future[actions.ApiCall] | None) -> None:
    """Close the opened call and delete the written rows of a call that did not go through."""
    open_task.cancel()
    await asyncio.wait((open_task,) if log_task is None else (open_task, log_task))
    if not open_task.cancelled() and open_task.exception() is None:
        await open_task.result().aclose()
    if log_task is not None and not log_task.cancelled() and log_task.exception() is None:
        try:
            await database_sync_to_async(actions.discard_api_call, thread_sensitive=False)(log_task.result())
        except Exception:  # the reply stays streaming: the sweep of stale heartbeats interrupts it
            log.exception("could not delete the log rows of an upstream call that did not go through")


_undoing: set[asyncio.Future[None]] = set()


def _keep(task: asyncio.Future[None]) -> None:
    _undoing.add(task)
    task.add_done_callback(_undoing.discard)


def _encode(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def _stream(
    relay: Relay,
    run: runner.Run,
    model: str,
    include_usage: bool,
    key_use: asyncio.Task[None] | None = None,
) -> AsyncIterator[bytes]:
    """The upstream's chunks as they come (those that arrived together in one write), ``model``
    rewritten; the usage only if the client asked for it. A failure after the first token is told
    in-band, as for the embedded model; a client that goes away cancels the call."""
    assert relay.chunks is not None
    delivered = [0] * len(relay.jobs)
    complete = False
    try:
        while True:
            items = [await relay.chunks.get()]
            while not relay.chunks.empty():
                items.append(relay.chunks.get_nowait())
            out: list[bytes] = []
            for item in items:
                if isinstance(item, End):
                    if item.error is not None or item.cancelled:
                        error = (
                            APIError("The upstream call was cancelled.", code="cancelled")
                            if item.error is None
                            else UpstreamFailed(f"The upstream server failed while streaming: {item.error}.")
                        )
                        out.append(sse(error.body()))
                    await run.wait()  # every reply is saved before [DONE]
                    await await_key_use(key_use)
                    complete = True
                    yield b"".join([*out, DONE])
                    return
                chunk = item.data
                for choice in chunk.get("choices") or ():
                    if isinstance(choice, dict) and isinstance(choice.get("index"), int):
                        content = (choice.get("delta") or {}).get("content")
                        if isinstance(content, str) and 0 <= choice["index"] < len(delivered):
                            delivered[choice["index"]] += len(content)
                if not include_usage and "usage" in chunk:
                    if not chunk.get("choices"):
                        continue
                    chunk.pop("usage")
                elif chunk.get("model") == model:  # the client reads it as we did: as it came
                    out.append(b"data: " + item.raw.encode() + b"\n\n")
                    continue
                elif (text := with_model(item.raw, model)) is not None:  # edited, not re-encoded
                    out.append(b"data: " + text.encode() + b"\n\n")
                    continue
                chunk["model"] = model
                out.append(_encode(chunk))
            if out:
                yield b"".join(out)
                run.mark_delivered(delivered)
    finally:
        if not complete:
            run.cancel(Message.Status.CANCELLED)
