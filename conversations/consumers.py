"""The browser chat's websocket: receive actions, deliver the conversation's events as HTML.

The page connects to ``/ws/c/<id>/`` through htmx's ws extension, which sends each form as a JSON
object (``{"action": "send", "text": …, "HEADERS": {…}}``) and swaps every top-level element of a
message received into the page by id (out of band). Actions:

- ``send`` {text}, ``stop``, ``regenerate``, ``retry`` {message_id}, ``edit`` {message_id, text},
  ``version`` {message_id} (show that version of a message, with its branch).

A refused frame (binary, too large, not JSON, an unknown action, a bad field) gets an error
fragment (``#chat-error``) and changes nothing; the connection stays open. Events of the group
``conversation-<id>`` become fragments: a new or changed message, a delta (at most ~10 a second,
as the runner coalesced and rendered it once for every viewer: the blocks finished since the last
delta, appended, and the open block replaced; see ``delta_fragment``), the queue position, a
superseded message removed, the title. Every viewer of the conversation gets them. A viewer who
missed a streaming answer's earlier deltas (connected mid-answer, or the page re-rendered it from
the saved text) is sent the whole answer so far once (``chat.whole``), then the deltas after it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http import Http404
from django.template.loader import render_to_string

from conversations import actions, live_access, queries, ttft
from conversations.faults import (
    DATABASE_UNAVAILABLE,
    LAYER_UNAVAILABLE,
    is_database_unavailable,
    layer_errors,
)
from conversations.fragments import message_html
from conversations.ids import parse_id
from conversations.live import replies, runner
from conversations.models import Conversation, Message
from conversations.render import render_markdown
from inference.text import unstorable

MAX_FRAME_BYTES = 64 * 1024  # Daphne's own limit (the launcher's) closes the connection above its own
MAX_TEXT_CHARS = 32_000
ACTIONS = {"send", "stop", "regenerate", "retry", "edit", "version"}
STARTS = {"send", "regenerate", "retry", "edit"}  # the actions that start a reply

log = logging.getLogger(__name__)

# Close codes (4000–4999 are the application's).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_ACCESS_LOST = 4403  # an open socket whose user lost access to the conversation
CLOSE_NOT_FOUND = 4404
CLOSE_UNAVAILABLE = 4503  # the channel layer is unreachable: try again later (like HTTP 503)


class FrameError(Exception):
    """A frame the consumer refuses: its message goes back to the page (and ``keep_text``, the
    text of a message it refused, back in the composer)."""

    def __init__(self, message: str, keep_text: str | None = None) -> None:
        super().__init__(message)
        self.keep_text = keep_text


def parse_frame(text_data: str | None, bytes_data: bytes | None) -> dict[str, Any]:
    """Validate one frame; return ``{"action", "text"?, "message_id"?}`` or raise ``FrameError``."""
    if text_data is None:
        raise FrameError("Binary frames are not accepted.")
    if len(text_data.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES:
        raise FrameError(f"The message is too large (at most {MAX_FRAME_BYTES // 1024} KiB).")
    try:
        data = json.loads(text_data)
    except ValueError:
        raise FrameError("The frame is not JSON.") from None
    except RecursionError:  # nesting deeper than the decoder's stack: a frame no page sends
        raise FrameError("The frame is nested too deeply.") from None
    if not isinstance(data, dict):
        raise FrameError("The frame must be a JSON object.")
    action = data.get("action")
    if action not in ACTIONS:
        raise FrameError("Unknown action.")
    out: dict[str, Any] = {"action": action}
    if action in ("send", "edit"):
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise FrameError("Write a message first.")
        kept = text if action == "send" else None  # a refused message goes back in the box
        if len(text) > MAX_TEXT_CHARS:
            raise FrameError(f"The message is too long (at most {MAX_TEXT_CHARS} characters).", kept)
        problem = unstorable(text)
        if problem is not None:
            raise FrameError(f"The message cannot contain {problem}.")  # (not sendable back either)
        out["text"] = text
    if action in ("retry", "edit", "version"):
        message_id = parse_id(data.get("message_id"))
        if message_id is None:
            raise FrameError("message_id must be a message's id.")
        out["message_id"] = message_id
    return out


def error_fragment(text: str) -> str:
    return render_to_string("chat/_error.html", {"error": text})


def composer_fragment(text: str) -> str:
    """The composer's text box holding ``text`` again (the page cleared it when it sent)."""
    return render_to_string("chat/_composer_text.html", {"text": text, "oob": True})


def status_fragment(message_id: int, text: str) -> str:
    """The line under a streaming answer ("waiting, 2 ahead", "writing…"); ``text`` is ours."""
    return f'<span id="m-{message_id}-status" class="msg-status" hx-swap-oob="true">{text}</span>'


# Deltas a viewer waits for the whole answer so far before it asks again (the request was lost).
ASK_AGAIN_AFTER = 50

# Events whose handlers only forward what the runner sent, with no database work: dispatched without
# channels' close_old_connections (see ChatConsumer.dispatch).
FORWARD_ONLY = frozenset({"chat.delta", "chat.whole", "chat.queued", "chat.started"})


def delta_fragment(message_id: int, event: dict[str, Any]) -> str:
    """A streaming answer's change for the page (``event``: a ``chat.delta`` or ``chat.whole``).

    The body holds the finished blocks, then the open block in ``#m-<id>-open`` (``display:
    contents``); the HTML is the runner's, sanitised by ``render.StreamRender``. A reset replaces the
    whole body; otherwise the open block is replaced and the newly finished blocks go before it, so
    the body's HTML stays that of the whole text rendered at once (tests/conversations/test_stream_deltas.py).
    """
    mid, done, open_ = int(message_id), event["done"], event["open"]
    if event["reset"]:
        return (
            f'<div id="m-{mid}-body" hx-swap-oob="innerHTML">{done}'
            f'<div id="m-{mid}-open" class="msg-open">{open_}</div></div>'
        )
    fragment = f'<div id="m-{mid}-open" hx-swap-oob="innerHTML">{open_}</div>'
    if done:
        fragment += f'<div hx-swap-oob="beforebegin:#m-{mid}-open">{done}</div>'
    return fragment


def message_fragment(message: Message, conversation: Conversation, user: Any, *, append: bool) -> str:
    return placed(message_html(message, conversation, user), append=append)


def placed(html: str, *, append: bool) -> str:
    """A message's HTML as a fragment that adds it to the page (``append``) or replaces it there."""
    if append:
        return f'<div hx-swap-oob="beforeend:#messages">{html}</div>'
    return html.replace("<article ", '<article hx-swap-oob="true" ', 1)


class ChatConsumer(AsyncWebsocketConsumer):
    conversation: Conversation
    group: str

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        try:
            self.conversation = await database_sync_to_async(queries.get_conversation_for_user)(
                user, conversation_id
            )
        except Http404:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.user = user
        self.known: set[int] = set()
        # Streaming answers this page holds as the runner's deltas: message id → the last delta's
        # seq; and those whose whole answer so far was asked for: id → the seq when asked.
        self.streams: dict[int, int] = {}
        self.asked: dict[int, int] = {}
        self.started: list[Any] = []
        group = actions.group_name(conversation_id)
        try:
            await self.channel_layer.group_add(group, self.channel_name)
            self.group = group
            await self._watch_access()
        except layer_errors():
            await self._layer_down()
            return
        await self.accept()
        await self._refresh()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Channels reads the layer (Redis) beside the socket; when Redis is unreachable that read
        # fails, which would end the connection with a 500 (before the handshake) or a bare 1011.
        try:
            await super().__call__(scope, receive, send)
        except layer_errors():
            if not getattr(self, "_closed_for_layer", False):
                await self._layer_down()

    async def _layer_down(self) -> None:
        """Tell the page the live connection cannot work now, then close with 4503 (try again later)."""
        if getattr(self, "_closed_for_layer", False):
            return
        self._closed_for_layer = True
        log.warning("websocket %s: the channel layer is unreachable", self.scope.get("path"))
        if not getattr(self, "_accepted", False):
            await self.accept()
        await self.send(text_data=error_fragment(LAYER_UNAVAILABLE))
        await self.close(code=CLOSE_UNAVAILABLE, reason="channel layer unavailable")

    async def dispatch(self, message: dict[str, Any]) -> None:
        # channels' dispatch first closes stale database connections, in the thread-sensitive
        # executor (sync_to_async): a thread hop for every viewer at every delta, which cost the
        # event loop more than the delta's own work. The forwarding handlers touch no database;
        # the others keep it (and database_sync_to_async closes them around its own calls anyway).
        if message["type"] in FORWARD_ONLY:
            await getattr(self, get_handler_name(message))(message)
        else:
            await super().dispatch(message)

    async def disconnect(self, code: int) -> None:
        await self._leave_groups()
        # The runner owns the reply: closing the tab does not lose it, unless the site says so.
        if settings.CHAT_STOP_ON_DISCONNECT:
            for run in getattr(self, "started", []):
                run.cancel(Message.Status.CANCELLED)

    # --- from the page ---------------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        ttft.begin("ws")
        try:
            frame = parse_frame(text_data, bytes_data)
        except FrameError as exc:
            kept = exc.keep_text
            await self.send(text_data=error_fragment(str(exc)) + (composer_fragment(kept) if kept else ""))
            return
        if self.access_lost:
            return
        if frame["action"] not in STARTS:  # (a reply's start checks in its first trip to a thread)
            if not await self._still_visible():
                return
            ttft.mark("auth")
        try:
            await self._act(frame)
        except replies.AccessLost:
            await self._lose_access()
            return
        except replies.ChatError as exc:
            kept = exc.keep_text  # a message refused by a limit: back in the box
            await self.send(text_data=error_fragment(str(exc)) + (composer_fragment(kept) if kept else ""))
            return
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            log.warning("websocket action %s: %s", frame["action"], exc)
            await self.send(text_data=error_fragment(DATABASE_UNAVAILABLE))
            return
        await self.send(text_data=error_fragment(""))  # clears an earlier error

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        self._accepted = True
        await super().accept(subprotocol, headers)

    async def _act(self, frame: dict[str, Any]) -> None:
        conversation, action = self.conversation, frame["action"]
        if conversation.source == Conversation.Source.API and action not in ("stop", "version"):
            raise replies.ChatError("This conversation was logged from the API: it is read-only.")
        if action == "stop":
            # Nothing running (the reply ended as Stop was pressed, or Esc on an idle page): no error.
            await replies.astop(conversation.pk)
            return
        access = self._access_now
        if action == "send":
            await replies.send(self.user, conversation, frame["text"], access)
        elif action == "regenerate":
            await replies.regenerate(self.user, conversation, access)
        elif action == "retry":
            await replies.retry(self.user, conversation, frame["message_id"], access)
        elif action == "edit":
            await replies.edit(self.user, conversation, frame["message_id"], frame["text"], access)
        elif action == "version":
            await replies.select_version(self.user, conversation, frame["message_id"])
            return
        run = replies.run_of(conversation.pk)
        if run is not None:
            self.started.append(run)

    async def _still_visible(self) -> bool:
        """Access is checked again for every action and change: the owner may have made the
        conversation private, or deleted it, since the connection was made; the user may have been
        removed from the team, logged out, changed password or been deactivated."""
        if self.access_lost:
            return False
        try:
            await database_sync_to_async(self._access_now)()
        except replies.AccessLost:
            await self._lose_access()
            return False
        return True

    def _access_now(self) -> Conversation:
        """The check itself, synchronous: also run in a reply's first trip to a thread
        (``replies.Access``)."""
        conversation = live_access.check(self.access, self.conversation.pk)
        if conversation is None:
            raise replies.AccessLost
        self.conversation = conversation
        return conversation

    # --- from the group --------------------------------------------------------------------------
    async def chat_message(self, event: dict[str, Any]) -> None:
        html = event.get("html")  # rendered once for every viewer (actions: a new streaming reply)
        if html is None and event.get("author_id") == self.user.pk:
            html = event.get("author_html")  # a new message, as its author sees it (actions)
        if html is not None:
            mid = int(event["message_id"])
            append = mid not in self.known
            self.known.add(mid)
            await self.send(text_data=placed(html, append=append))
            return
        fragment = await self._message_fragment(event["message_id"])
        if fragment:
            await self.send(text_data=fragment)

    async def chat_finished(self, event: dict[str, Any]) -> None:
        await self.chat_message(event)

    async def chat_delta(self, event: dict[str, Any]) -> None:
        # Rendered once for every viewer, off the event loop, by the reply's runner.
        mid = int(event["message_id"])
        if "open" not in event:  # from a process that sends the text only
            self.streams.pop(mid, None)
            body = render_markdown(event.get("content", ""))
            await self.send(
                text_data=f'<div id="m-{mid}-body" hx-swap-oob="innerHTML">{body}</div>'
                + status_fragment(mid, "writing…")
            )
            return
        seq, have = int(event["seq"]), self.streams.get(mid)
        if event["reset"]:
            if have is not None and have >= seq:  # (the whole answer asked for, already had)
                return
            self.streams[mid] = seq
            self.asked.pop(mid, None)
            await self.send(text_data=delta_fragment(mid, event) + status_fragment(mid, "writing…"))
            ttft.first_write(mid)
        elif have == seq - 1:
            self.streams[mid] = seq
            await self.send(text_data=delta_fragment(mid, event))
        elif have is None:
            # The page does not hold the earlier deltas: ask for the whole answer so far, once
            # (again if it never comes), and drop the deltas until it does.
            asked = self.asked.get(mid)
            if asked is None or seq - asked > ASK_AGAIN_AFTER:
                self.asked[mid] = seq
                await runner.request_whole(self.conversation.pk, mid, self.channel_name)
        elif have < seq:  # a delta lost (a full channel): start again from the whole answer
            del self.streams[mid]
            await self.chat_delta(event)

    async def chat_whole(self, event: dict[str, Any]) -> None:
        """The whole of a streaming answer so far, asked for by this viewer (``chat_delta``)."""
        await self.chat_delta(event)

    async def chat_unsaved(self, event: dict[str, Any]) -> None:
        """The reply ended but could not be saved (the database cannot be written): say so."""
        mid = int(event["message_id"])
        await self.send(
            text_data=error_fragment(
                "This answer could not be saved: the server's database cannot be written right now. "
                "It will be saved when the database recovers; reload the page later to check."
            )
            + status_fragment(mid, "not saved")
        )

    async def chat_queued(self, event: dict[str, Any]) -> None:
        mid, ahead = int(event["message_id"]), int(event["n_ahead"])
        text = "waiting: next in line" if ahead == 0 else f"waiting, {ahead} ahead"
        await self.send(text_data=status_fragment(mid, text))

    async def chat_started(self, event: dict[str, Any]) -> None:
        await self.send(text_data=status_fragment(int(event["message_id"]), "writing…"))

    async def chat_superseded(self, event: dict[str, Any]) -> None:
        ids = [int(i) for i in event["message_ids"]]
        self.known.difference_update(ids)
        await self.send(text_data="".join(f'<div id="m-{i}" hx-swap-oob="delete"></div>' for i in ids))

    async def chat_refresh(self, event: dict[str, Any]) -> None:
        """Another branch of the conversation is shown (a version was chosen): send it whole."""
        await self._refresh()

    async def chat_conversation(self, event: dict[str, Any]) -> None:
        if "title" in event:  # only the title changed, which changes no one's access (actions)
            if self.access_lost:
                return
            self.conversation.title = event["title"]
        elif not await self._still_visible():
            return
        html = await database_sync_to_async(render_to_string)(
            "chat/_title.html", {"conversation": self.conversation, "sidebar_oob": True}
        )
        await self.send(text_data=html.replace("<h1 ", '<h1 hx-swap-oob="true" ', 1))

    # --- live access (conversations/live_access.py) ----------------------------------------------
    access_lost = False

    async def _watch_access(self) -> None:
        """Join the user's group, on which every change of their access is announced."""
        self.access = live_access.Credentials.of(self.scope, self.user)
        self.user_group = live_access.user_group_name(self.user.pk)
        await self.channel_layer.group_add(self.user_group, self.channel_name)

    async def access_changed(self, event: dict[str, Any]) -> None:
        if live_access.ends_this_session(event, self.access):
            await self._lose_access()  # logged out: the session is flushed just after the event
        else:
            await self._still_visible()

    async def _lose_access(self) -> None:
        """Say so, close (4403), and send nothing more: events still queued for this socket are
        dropped (``send``)."""
        if self.access_lost:
            return
        await self.send(text_data=error_fragment("This conversation is no longer available."))
        self.access_lost = True
        await self.close(code=CLOSE_ACCESS_LOST)
        await self._leave_groups()

    async def _leave_groups(self) -> None:
        for name in ("group", "user_group"):
            group = getattr(self, name, None)
            if group is not None:
                await self.channel_layer.group_discard(group, self.channel_name)

    async def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        if self.access_lost:
            return
        await super().send(text_data=text_data, bytes_data=bytes_data, close=close)

    # --- helpers ---------------------------------------------------------------------------------
    @database_sync_to_async
    def _message_fragment(self, message_id: int) -> str:
        message = Message.objects.select_related("author").filter(pk=message_id).first()
        if message is None or message.conversation_id != self.conversation.pk or message.superseded_at:
            return ""
        append = message.pk not in self.known
        self.known.add(message.pk)
        self.streams.pop(message.pk, None)  # the page's body is now the saved text's render
        return message_fragment(message, self.conversation, self.user, append=append)

    async def _refresh(self) -> None:
        """Send the whole visible conversation, replacing the page's list: whatever changed between
        the page's render and this connection (or while a dropped connection was reconnecting:
        htmx-ext-ws reconnects by itself) is then shown, and nothing twice."""

        def load() -> tuple[set[int], str]:
            messages = list(queries.visible_messages(self.conversation).select_related("author"))
            versions = queries.versions_of(messages)
            html = "".join(message_html(m, self.conversation, self.user, versions[m.pk]) for m in messages)
            return {m.pk for m in messages}, f'<div id="messages" hx-swap-oob="innerHTML">{html}</div>'

        self.known, fragment = await database_sync_to_async(load)()
        self.streams.clear()  # streaming answers are shown as saved: they need the whole answer again
        await self.send(text_data=fragment)
