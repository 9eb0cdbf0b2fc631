"""Which models a team may use (``TeamModels``; default: all). A request for any other answers
404 ``model_not_found``, the same as for a model that does not exist."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from conversations.models import ApiKey
from inference.protocol import MODEL_ALIASES, NotFound
from upstreams.models import TeamModels


def allowed_models(team_id: int) -> list[str] | None:
    """The ids the team may use, or None for all."""
    choice = TeamModels.objects.filter(team_id=team_id).first()
    return None if choice is None else list(choice.models)


def effective_id(model_id: str) -> str:
    """What an alias stands for: ``CHAT_DEFAULT_MODEL``, else the embedded model."""
    if model_id not in MODEL_ALIASES:
        return model_id
    if settings.CHAT_DEFAULT_MODEL:
        return settings.CHAT_DEFAULT_MODEL
    from chatsite.runtime import get_runtime

    return get_runtime().model_id


def may_use(allowed: list[str] | None, model_id: str) -> bool:
    return allowed is None or effective_id(model_id) in allowed


async def check(key: ApiKey, data: Any) -> None:
    """404 ``model_not_found`` when the key's team may not use the body's model."""
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        return  # the request's own validation answers
    allowed = await database_sync_to_async(allowed_models)(key.team_id)
    if not may_use(allowed, data["model"]):
        raise NotFound(
            f"The model '{data['model']}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
