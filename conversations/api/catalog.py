"""GET /v1/models and /v1/models/{id}: the configured model under its own id and the spec's aliases."""

from __future__ import annotations

import os

from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse

from chatsite.runtime import ModelNotReady, get_runtime
from conversations import services
from conversations.api.http import api_view, authenticate, json_response
from inference.model import ChatModel
from inference.protocol import MODEL_ALIASES, ModelCard, ModelList, NotFound, ServiceUnavailable

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


@api_view("GET")
async def list_models(request: HttpRequest) -> HttpResponse:
    key = await authenticate(request)
    await database_sync_to_async(services.record_key_use)(key)
    return json_response(ModelList(data=[_card(i) for i in model_ids()]))


@api_view("GET")
async def retrieve_model(request: HttpRequest, model_id: str) -> HttpResponse:
    key = await authenticate(request)
    await database_sync_to_async(services.record_key_use)(key)
    if model_id not in model_ids():
        raise _not_found(model_id)
    return json_response(_card(model_id))
