"""The conversation list kept live: every open sidebar hears when a conversation it may list changed.

A conversation made, renamed, shared, made private or deleted is announced (after its write commits)
on its owner's list group and, when it is or was shared, on its team's (``actions.notify_lists``).
Each page's sidebar holds a socket (``/ws/list/``) in the groups of its user and of the user's
teams; the announcement carries no data (the word ``changed``), and the page fetches its list again
over HTTP, where the usual visibility rules apply (a teammate sees a shared conversation, nobody
else's private one).
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from conversations.faults import layer_errors
from conversations.models import Membership

log = logging.getLogger(__name__)

CHANGED = {"type": "list.changed"}


def user_group(user_id: int) -> str:
    return f"list-user-{user_id}"


def team_group(team_id: int) -> str:
    return f"list-team-{team_id}"


class ListConsumer(AsyncWebsocketConsumer):
    """One page's sidebar: told ``changed`` when its list may have changed."""

    joined: list[str]

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        team_ids = await database_sync_to_async(
            lambda: list(Membership.objects.filter(user=user).values_list("team_id", flat=True))
        )()
        self.joined = []
        try:
            for group in [user_group(user.pk), *(team_group(t) for t in team_ids)]:
                await self.channel_layer.group_add(group, self.channel_name)
                self.joined.append(group)
        except layer_errors():
            log.warning("list socket: the channel layer is unreachable")
            await self.close(code=4503)
            return
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "joined", []):
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except layer_errors():
                return

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """The page sends nothing on this socket; whatever comes is ignored."""

    async def list_changed(self, event: dict[str, Any]) -> None:
        await self.send(text_data="changed")
