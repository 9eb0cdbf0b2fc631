"""The websocket routes (chatsite/asgi.py wraps them in the origin check and the session auth)."""

from __future__ import annotations

from django.urls import path

from conversations.consumers import ChatConsumer
from conversations.sidebar import ListConsumer

websocket_urlpatterns = [
    path("ws/c/<int:conversation_id>/", ChatConsumer.as_asgi()),
    path("ws/list/", ListConsumer.as_asgi()),
]
