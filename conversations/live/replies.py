"""Starting and stopping the browser chat's replies (called by the websocket consumer).

The path of one message: the user message is committed (``actions``), the prompt is built from the
visible history (the oldest turns are left out when it outgrows the context; the system prompt
stays), the scheduler admits the job or the message becomes ``unanswered``, and the runner owns
the job from then on: closing the tab does not lose the reply.

One generation runs at a time per conversation: this process keeps its runs by conversation,
``actions`` refuses a new message while a streaming row with a fresh heartbeat exists (in any
process), and the database holds at most one streaming answer per conversation, so of two
processes that passed that check at once, the second is told the conversation is busy (its message
is kept as unanswered, and its job cancelled).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from conversations import actions, chat_limits, json_answers, queries, ttft
from conversations.live import runner, upstream_replies
from conversations.models import Conversation, Message
from conversations.runtime import ModelNotReady, get_runtime
from inference.constraints import ConstraintError
from inference.jobs import ContextLengthExceeded, Overloaded
from inference.model import ChatModel
from inference.sampling import SamplingParams
from upstreams import choices, registry
from upstreams.permissions import UNREAD, allowed_models

DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95
MIN_ROOM = 16  # the fewest tokens worth generating when the prompt alone nearly fills the context


def default_max_tokens() -> int:
    """The longest reply of a conversation without its own max tokens (CHAT_DEFAULT_MAX_TOKENS)."""
    return settings.CHAT_DEFAULT_MAX_TOKENS


log = logging.getLogger(__name__)
_runs: dict[int, runner.Run] = {}  # conversation id → its running reply in this process
_starting: set[int] = set()
_waiters: set[asyncio.Future] = set()  # strong references until each run is forgotten


class ChatError(Exception):
    """Something to tell the person in the page (nothing is lost). ``keep_text``: a message that
    was not written goes back to the composer."""

    keep_text: str | None = None


class TooLong(ChatError):
    """The message does not fit the model's context even as the only turn: retrying cannot help."""


@dataclass
class Prompt:
    ids: list[int]
    max_tokens: int
    dropped: int  # messages left out (oldest first) to fit the context


def build_prompt(
    model: ChatModel, system_prompt: str, history: list[dict[str, Any]], max_tokens: int
) -> Prompt:
    """The prompt ids of ``history``, leaving out its oldest turns until it fits with ``max_tokens``.

    A turn is a user message and the answers after it; the last turn is always kept (with fewer
    tokens to generate if need be). The system prompt, and any system message of the history (a
    conversation logged from the API may have them), always stay, first.
    """
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    system += [m for m in history if m["role"] == "system"]
    history = [m for m in history if m["role"] != "system"]
    starts = [i for i, m in enumerate(history) if m["role"] == "user"] or [0]
    scheduler = model.scheduler
    for start in starts:
        ids = model.prompt_ids(system + history[start:])
        try:
            scheduler.resolve_max_tokens(len(ids), max_tokens)
        except ContextLengthExceeded:
            continue
        return Prompt(ids, max_tokens, start)
    room = scheduler.context_length - len(ids)
    if room < MIN_ROOM:
        raise TooLong(
            f"This message is too long for the model: {len(ids)} tokens with the system prompt, "
            f"and the model's context holds {scheduler.context_length}."
        )
    return Prompt(ids, room, starts[-1])


def _prompt_and_grammar(
    model: ChatModel, conversation: Conversation, new_text: str | None = None
) -> tuple[Prompt, str | None]:
    """The prompt of the conversation's visible history (``new_text``: with a user message not
    written yet) and its "Answer as JSON" grammar (None without), or ``ChatError`` saying why there
    can be no reply."""
    history = queries.prompt_messages(conversation, new_text)
    ttft.mark("history")
    prompt = build_prompt(
        model, conversation.system_prompt, history, conversation.max_tokens or default_max_tokens()
    )
    try:
        grammar = json_answers.grammar(conversation, model.tokenizer)
    except ConstraintError as exc:  # checked when saved; this model's tokenizer may still refuse it
        raise ChatError(f"The JSON schema of this conversation cannot be used: {exc}") from None
    return prompt, grammar


def _sampling(conversation: Conversation, max_tokens: int, grammar: str | None = None) -> SamplingParams:
    cap = settings.CHAT_MAX_TOKENS_CAP  # test-only
    temperature = conversation.temperature
    return SamplingParams(
        temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
        top_p=DEFAULT_TOP_P,
        max_tokens=min(max_tokens, cap) if cap else max_tokens,
        grammar=grammar,  # "Answer as JSON" (conversations/json_answers.py)
    )


def is_running(conversation_id: int) -> bool:
    """A reply is starting or running here. A run whose rows all have their final state (its
    pages were told it ended) no longer counts, though it is forgotten a moment later: a message
    a page queued until then is taken at once."""
    run = _runs.get(conversation_id)
    return conversation_id in _starting or (run is not None and not run.ended())


@dataclass
class _Read:
    """What a reply needs from the database before its job is submitted, read in one trip to a
    thread (each trip costs a thread hop on the way to the first token): the conversation's model
    (``refusal``: its team may not use it), and for the embedded model, when it is loaded, the
    prompt and the "Answer as JSON" grammar (``error``: why there can be no reply)."""

    model_id: str
    refusal: str | None = None
    model: ChatModel | None = None
    prompt: Prompt | None = None
    grammar: str | None = None
    error: ChatError | None = None


def _read_for_reply(
    conversation: Conversation, model: ChatModel | None, new_text: str | None = None
) -> _Read:
    """``_Read`` of ``conversation`` (``model``: the embedded model if it is loaded; ``new_text``: a
    user message not written yet, in the prompt as its last). Synchronous."""
    model_id = choices.model_for(conversation.model_id)
    # (Read by the socket's access check, if it ran: live_access.check.)
    allowed = allowed_models(conversation.team_id, getattr(conversation, "team_models", UNREAD))
    if allowed is not None and model_id not in allowed:
        return _Read(
            model_id, f"Your team may not use the model '{model_id}'. Choose another in the settings."
        )
    if not conversation.model_id:  # recorded at its first reply
        conversation.model_id = model_id
        # A new message records it with itself (actions._post_user_message), beside the prompt's
        # evaluation: nothing is written on the way to the job's submission.
        if new_text is None:
            Conversation.objects.filter(pk=conversation.pk, model_id="").update(model_id=model_id)
    if model is None or model_id != choices.embedded_model_id():
        return _Read(model_id)
    try:
        prompt, grammar = _prompt_and_grammar(model, conversation, new_text)
    except ChatError as exc:  # TooLong, or the conversation's JSON schema
        return _Read(model_id, model=model, error=exc)
    return _Read(model_id, model=model, prompt=prompt, grammar=grammar)


def _prepare_and_read(
    conversation: Conversation, prepare: Any, args: tuple[Any, ...]
) -> tuple[Any, _Read | None]:
    """``prepare`` (the user message's write, committed) and ``_read_for_reply``, in one trip. A
    read that fails gives None: ``_generate`` reads again, and fails there as it would alone (an
    error of the read must not pass for one of the write, whose message would be given back)."""
    message = prepare(conversation, *args)
    ttft.mark("user_row")
    try:
        return message, _read_for_reply(conversation, get_runtime().model)
    except Exception:
        return message, None


async def _generate(
    user: AbstractBaseUser,
    conversation: Conversation,
    user_message: Message | None,
    read: _Read | None = None,
    new_text: str | None = None,
) -> None:
    """Admit and start a reply to the conversation's visible history (``user_message``: the message
    to mark unanswered if the model cannot take it; ``read``: ``_read_for_reply``, if done).

    ``new_text``: a new message, not written yet (``user_message`` is then None; ``read`` has it in
    its prompt). When the embedded model can answer it, its job is admitted first and the message
    is written with its reply's row, in one transaction, while the slot evaluates the prompt: the
    write is off the way to the first token, and a crash leaves both or neither. Otherwise (or if
    the model refuses the job) it is written first, and the rest goes on as for a written one."""
    if read is None:
        read = await database_sync_to_async(_read_for_reply, thread_sensitive=False)(
            conversation, get_runtime().model
        )

    async def write_first() -> Message:
        try:
            return await database_sync_to_async(actions.post_user_message, thread_sensitive=False)(
                conversation, new_text, user
            )
        except (actions.Busy, ValueError) as exc:
            raise _kept(ChatError(str(exc)), new_text) from None

    admit_first = (
        read.refusal is None and read.model is not None and read.prompt is not None and read.error is None
    )
    if new_text is not None and not admit_first:
        user_message, new_text = await write_first(), None
    if read.refusal is not None:
        await _unanswered(user_message, read.refusal)
    model_id = read.model_id
    if model_id != choices.embedded_model_id():
        if conversation.json_answers:  # only the embedded model decodes under a grammar
            await _unanswered(
                user_message,
                f"“Answer as JSON” works with the embedded model only, not '{model_id}'. "
                "Choose it, or turn the setting off, in the settings.",
            )
        if not (await registry.apool()).replicas(model_id):
            await _unanswered(
                user_message, f"The model '{model_id}' is not available now. Choose another in the settings."
            )
        await upstream_replies.generate(
            user,
            conversation,
            model_id,
            _sampling(conversation, conversation.max_tokens or default_max_tokens()),
            _track,
            version_of=_version_of(user_message),
        )
        return
    model = read.model
    if model is None:  # not loaded when read (or loaded since: then its prompt is read now)
        try:
            model = get_runtime().get()
        except ModelNotReady as exc:
            await _unanswered(user_message, f"The model is not ready yet ({exc}). Try again in a moment.")
            return
        read = await database_sync_to_async(_read_for_reply, thread_sensitive=False)(conversation, model)
    if isinstance(read.error, TooLong):
        await _unanswered(user_message, str(read.error), never_fits=True)  # no Retry: it cannot help
        return
    if read.error is not None:  # the conversation's JSON schema
        await _unanswered(user_message, str(read.error))
        return
    prompt, grammar = read.prompt, read.grammar
    assert prompt is not None
    params = _sampling(conversation, prompt.max_tokens, grammar)
    ttft.mark("prompt")
    try:
        # Awaited: with several web processes the scheduler is the inference worker's, over Redis.
        job = await model.scheduler.asubmit(prompt.ids, params, user_key=f"user-{user.pk}")
    except (Overloaded, ContextLengthExceeded) as exc:  # (the context can shrink after reading it)
        if new_text is not None:
            user_message = await write_first()
        reason = str(exc)
        if isinstance(exc, Overloaded):
            reason = f"The model is busy ({exc}). Your message is kept: press Retry in a moment."
        await _unanswered(user_message, reason)
        return
    ttft.mark("admitted")
    record = {
        "model": model.model_id,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "dropped_messages": prompt.dropped,
    }
    if (answer_format := json_answers.response_format(conversation)) is not None:
        record["response_format"] = answer_format
    try:
        if new_text is not None:
            _, message = await database_sync_to_async(
                actions.post_user_message_with_reply, thread_sensitive=False
            )(conversation, new_text, user, params=record, prompt_tokens=len(prompt.ids))
        else:
            (message,) = await database_sync_to_async(
                actions.start_assistant_messages, thread_sensitive=False
            )(
                conversation,
                1,
                params=record,
                prompt_tokens=len(prompt.ids),
                version_of=_version_of(user_message),
            )
    except (actions.Busy, actions.ReplyInProgress, ValueError) as exc:
        # Another web process started a reply here after our busy check: ours gives its place back.
        job.cancel()
        if new_text is not None:  # nothing was written: the message goes back to the box
            raise _kept(ChatError(str(exc)), new_text) from None
        if not isinstance(exc, actions.ReplyInProgress):
            raise
        await _unanswered(user_message, str(exc))
        return
    except BaseException:
        job.cancel()
        raise
    ttft.mark("logged")
    ttft.follow_message(message.pk, job)
    run = runner.start(conversation.pk, [job], [message])
    _track(conversation.pk, run)


def _version_of(user_message: Message | None) -> int | None:
    """The answer a regenerated one is a new version of (``actions.prepare_regenerate`` says)."""
    return getattr(user_message, "answer_version_of", None)


def _track(conversation_id: int, run: runner.Run) -> None:
    _runs[conversation_id] = run
    waiter = asyncio.ensure_future(run.wait())
    _waiters.add(waiter)
    waiter.add_done_callback(_waiters.discard)
    waiter.add_done_callback(lambda _: _forget(conversation_id, run))


def _forget(conversation_id: int, run: runner.Run) -> None:
    if _runs.get(conversation_id) is run:  # not a next run, started as this one ended
        del _runs[conversation_id]


async def _unanswered(message: Message | None, reason: str, *, never_fits: bool = False) -> None:
    if message is None:
        raise ChatError(reason)
    await database_sync_to_async(actions.mark_unanswered, thread_sensitive=False)(
        message, reason, never_fits=never_fits
    )
    raise ChatError(reason)


class AccessLost(Exception):
    """Raised by an ``access`` check (``send`` and the others): the user may no longer see the
    conversation. Nothing was reserved or written."""


# A check of the caller's access, run in the reply's first trip to a thread: the conversation as
# now stored, or ``AccessLost`` (conversations/consumers.py passes live_access's).
Access = Callable[[], Conversation]


@dataclass
class _Begun:
    conversation: Conversation
    reservation: chat_limits.limits.Reservation
    message: Message | None
    read: _Read | None


def _begin(
    user: AbstractBaseUser,
    conversation: Conversation,
    access: Access | None,
    prepare: Any,
    args: tuple[Any, ...],
    text: str | None,
) -> _Begun:
    """A reply's first trip to a thread, in order: the caller's ``access`` check, the usage limits'
    reservation (review/limits.py: a refused message writes nothing), ``prepare`` (an actions write
    that returns the user message to answer, or None; a new message is written later, with its
    reply's row) and what the reply reads (``_read_for_reply``). One trip, not one each: a trip is
    a thread hop on the way to the first token. Synchronous."""
    if access is not None:
        conversation = access()
    ttft.mark("auth")
    reservation = chat_limits.reserve_now(user, conversation, text, ChatError)
    ttft.mark("reserved")
    try:
        if prepare is None:  # a new message: read (with it) first, written with its reply
            read = _read_for_reply(conversation, get_runtime().model, text)
            return _Begun(conversation, reservation, None, read)
        try:
            # Writes run off the one thread that the consumers' thread-sensitive reads share: a
            # write waiting for the lock there would stall every socket of the process
            # (conversations/faults.py).
            message, read = _prepare_and_read(conversation, prepare, args)
        except (actions.Busy, ValueError) as exc:
            raise _kept(ChatError(str(exc)), text) from None
    except BaseException:
        reservation.refund()
        raise
    return _Begun(conversation, reservation, message, read)


async def _start(
    user: AbstractBaseUser,
    conversation: Conversation,
    prepare: Any,
    *args: Any,
    text: str | None = None,
    access: Access | None = None,
) -> None:
    """Check ``access``, reserve, run ``prepare`` and generate the reply (``_begin``), with no
    other start or run in this conversation meanwhile (``text``: the typed message, given back to
    the box when nothing was written)."""
    if is_running(conversation.pk):
        if access is not None:  # a page that lost access is told that first
            await database_sync_to_async(access, thread_sensitive=False)()
        raise _kept(ChatError(actions.BUSY_MESSAGE), text)
    _starting.add(conversation.pk)
    try:
        begun = await database_sync_to_async(_begin, thread_sensitive=False)(
            user, conversation, access, prepare, args, text
        )
        conversation, message = begun.conversation, begun.message
        try:
            try:
                await _generate(user, conversation, message, begun.read, text if prepare is None else None)
            except ChatError:
                if _version_of(message) is not None and run_of(conversation.pk) is None:
                    # A regenerate the model could not take: the answer it replaced comes back.
                    await database_sync_to_async(actions.undo_regenerate, thread_sensitive=False)(
                        conversation, message
                    )
                raise
        except BaseException:
            await database_sync_to_async(begun.reservation.refund, thread_sensitive=False)()
            raise
        run = _runs.get(conversation.pk)
        if run is None:
            await database_sync_to_async(begun.reservation.refund, thread_sensitive=False)()
        else:
            chat_limits.limits.settle_after(run, begun.reservation)
    finally:
        _starting.discard(conversation.pk)


def _kept(exc: ChatError, text: str | None) -> ChatError:
    """``exc`` for a message that was not written: the page puts ``text`` back in the box."""
    if text is not None:
        exc.args = (f"{exc} Your message was not sent; it is still in the box.",)
        exc.keep_text = text
    return exc


async def send(
    user: AbstractBaseUser, conversation: Conversation, text: str, access: Access | None = None
) -> None:
    await _start(user, conversation, None, text=text, access=access)


async def regenerate(
    user: AbstractBaseUser, conversation: Conversation, access: Access | None = None
) -> None:
    await _start(user, conversation, actions.prepare_regenerate, access=access)


async def select_version(user: AbstractBaseUser, conversation: Conversation, message_id: int) -> None:
    """Show another version of a message (and its branch); nothing is generated."""
    if is_running(conversation.pk):
        raise ChatError(actions.BUSY_MESSAGE)
    try:
        await database_sync_to_async(actions.select_version, thread_sensitive=False)(conversation, message_id)
    except (actions.Busy, ValueError) as exc:
        raise ChatError(str(exc)) from None


async def retry(
    user: AbstractBaseUser, conversation: Conversation, message_id: int, access: Access | None = None
) -> None:
    await _start(user, conversation, actions.prepare_retry, message_id, access=access)


async def edit(
    user: AbstractBaseUser,
    conversation: Conversation,
    message_id: int,
    text: str,
    access: Access | None = None,
) -> None:
    prepare = actions.edit_and_resend
    await _start(user, conversation, prepare, message_id, text, user, text=text, access=access)


def stop(conversation_id: int, status: str = Message.Status.STOPPED) -> bool:
    """Stop the conversation's reply (within one token); it is saved with its partial text."""
    run = _runs.get(conversation_id)
    if run is None:
        return False
    run.cancel(status)
    return True


async def astop(conversation_id: int, status: str = Message.Status.STOPPED) -> bool:
    """``stop``, also when the reply runs in another web process (several processes share Redis)."""
    if stop(conversation_id, status):
        return True
    if not runner.shared_layer():
        return False
    streaming = await Message.objects.filter(
        conversation_id=conversation_id, status=Message.Status.STREAMING
    ).aexists()
    if streaming:
        log.info("stop for conversation %s sent to the process running it", conversation_id)
        await runner.stop_elsewhere(conversation_id, status)
    return streaming


def run_of(conversation_id: int) -> runner.Run | None:
    return _runs.get(conversation_id)
