"""GET /v1/models and /v1/models/{id}: the configured model under its own id and the spec's aliases."""

from __future__ import annotations

import os

from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse

from conversations import actions
from conversations.api.http import api_view, authenticate, json_response
from conversations.api.protocol import MODEL_ALIASES, ModelCard, ModelList, NotFound, ServiceUnavailable
from conversations.models import ApiKey
from conversations.runtime import ModelNotReady, get_runtime
from inference.model import ChatModel
from upstreams import permissions, registry

OWNER = "chatsite"


def model_ids() -> list[str]:
    own = get_runtime().model_id
    return [own, *MODEL_ALIASES] if own else list(MODEL_ALIASES)


def _card(model_id: str) -> ModelCard:
    try:
        created = int(os.path.getmtime(get_runtime().model_path))
    except OSError:
        created = 0
    return ModelCard(id=model_id, created=created, owned_by=OWNER)


def _not_found(model_id: str) -> NotFound:
    return NotFound(
        f"The model '{model_id}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def resolve_model(model_id: str) -> ChatModel:
    """The loaded model behind ``model_id``: 404 for an unknown id, 503 while the model loads."""
    if model_id not in model_ids():
        raise _not_found(model_id)
    runtime = get_runtime()
    try:
        return runtime.get()
    except ModelNotReady as exc:
        if runtime.state == "error":  # the reason names files: it is on /status, for staff
            raise ServiceUnavailable(
                "The model could not be loaded on this server, so no completion can be made. "
                "Its operators can see why on the status page.",
                code="model_unavailable",
            ) from None
        raise ServiceUnavailable(
            f"The model is not ready yet: {exc}.", headers={"Retry-After": "5"}
        ) from None


async def _all_cards(key: ApiKey) -> list[ModelCard]:
    """The embedded model (and the aliases), then every upstream model with its connections: those
    the key's team may use."""
    cards = [_card(i) for i in model_ids()]
    pool = await registry.apool()
    for model_id in pool.model_ids():
        if model_id not in model_ids():
            owners = ",".join(c.name for c in pool.replicas(model_id))
            cards.append(ModelCard(id=model_id, created=0, owned_by=f"upstream:{owners}"))
    allowed = await permissions.allowed_for(key)
    return [card for card in cards if permissions.may_use(allowed, card.id)]


@api_view("GET")
async def list_models(request: HttpRequest) -> HttpResponse:
    key = await authenticate(request)
    await database_sync_to_async(actions.record_key_use)(key)
    return json_response(ModelList(data=await _all_cards(key)))


@api_view("GET")
async def retrieve_model(request: HttpRequest, model_id: str) -> HttpResponse:
    key = await authenticate(request)
    await database_sync_to_async(actions.record_key_use)(key)
    card = next((c for c in await _all_cards(key) if c.id == model_id), None)
    if card is None:
        raise _not_found(model_id)
    return json_response(card)
