from __future__ import annotations

from django.urls import path, re_path

from conversations.api import catalog, completions, http, openapi

# [\s\S] rather than "." (or Django's path converter): a model id or a stray path may contain a
# newline, and must still get an answer in OpenAI's shape rather than Django's HTML 404 page.
urlpatterns = [
    path("chat/completions", completions.chat_completions),
    path("models", catalog.list_models),
    re_path(r"^models/(?P<model_id>[\s\S]+)\Z", catalog.retrieve_model),
    path("openapi.json", openapi.openapi_json),
    re_path(r"^(?P<rest>[\s\S]*)\Z", http.not_found),
]
