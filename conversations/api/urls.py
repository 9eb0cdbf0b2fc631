from __future__ import annotations

from django.urls import path, re_path

from conversations.api import catalog, completions, http, openapi

urlpatterns = [
    path("chat/completions", completions.chat_completions),
    path("models", catalog.list_models),
    path("models/<path:model_id>", catalog.retrieve_model),
    path("openapi.json", openapi.openapi_json),
    # Anything else under /v1 answers 404 in OpenAI's shape, never Django's HTML page.
    re_path(r"^(?P<rest>.*)$", http.not_found),
]
