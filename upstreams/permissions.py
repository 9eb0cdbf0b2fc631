"""Which models a team may use (``TeamModels``; default: all). A request for any other answers
404 ``model_not_found``, the same as for a model that does not exist."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from conversations.api.protocol import MODEL_ALIASES, NotFound
from conversations.models import ApiKey
from upstreams.models import TeamModels

UNREAD: Any = object()  # the team's models were not read with the row that names the team


def allowed_models(team_id: int, read: Any = UNREAD) -> list[str] | None:
    """The ids the team may use, or None for all. ``read``: what was read with the row that names
    the team (an API key, a conversation's access check), if it was; no query then."""
    if read is not UNREAD:
        return read
    choice = TeamModels.objects.filter(team_id=team_id).first()
    return None if choice is None else list(choice.models)


def embedded_model_id() -> str:
    """The embedded model's id (the loaded model's, else the configured file's)."""
    from conversations.runtime import get_runtime

    runtime = get_runtime()
    return runtime.model.model_id if runtime.model is not None else runtime.model_id


def default_model_id() -> str:
    """The model the aliases and new conversations use: ``CHAT_DEFAULT_MODEL``, else the embedded one."""
    return settings.CHAT_DEFAULT_MODEL or embedded_model_id()


def effective_id(model_id: str) -> str:
    """What a requested id stands for: an alias is the default model, any other id itself."""
    return default_model_id() if model_id in MODEL_ALIASES else model_id


def may_use(allowed: list[str] | None, model_id: str) -> bool:
    return allowed is None or effective_id(model_id) in allowed


async def allowed_for(key: ApiKey) -> Any:
    """The models ``key``'s team may use: read with the key when it was authenticated
    (conversations/api/http.py), so no second trip; else from the database."""
    allowed = getattr(key, "allowed_models", UNREAD)
    if allowed is UNREAD:
        allowed = await database_sync_to_async(allowed_models)(key.team_id)
    return allowed


async def check(key: ApiKey, data: Any) -> None:
    """404 ``model_not_found`` when the key's team may not use the body's model."""
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        return  # the request's own validation answers
    allowed = await allowed_for(key)
    if not may_use(allowed, data["model"]):
        raise NotFound(
            f"The model '{data['model']}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
