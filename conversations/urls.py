from __future__ import annotations

from django.urls import path

from conversations.views import export, keys, pages

app_name = "chat"

urlpatterns = [
    path("", pages.home, name="home"),
    path("conversations", pages.conversation_list, name="list"),
    path("team", pages.switch_team, name="switch_team"),
    path("c/new", pages.create, name="create"),
    path("c/<int:conversation_id>/", pages.conversation, name="conversation"),
    path("c/<int:conversation_id>/rename", pages.rename, name="rename"),
    path("c/<int:conversation_id>/sharing", pages.sharing, name="sharing"),
    path("c/<int:conversation_id>/settings", pages.conversation_settings, name="settings"),
    path("c/<int:conversation_id>/delete", pages.delete, name="delete"),
    path("c/<int:conversation_id>/export.json", export.export_json, name="export_json"),
    path("c/<int:conversation_id>/export.md", export.export_markdown, name="export_markdown"),
    path("settings/theme", pages.theme, name="theme"),
    path("settings/keys", keys.api_keys, name="api_keys"),
    path("settings/keys/<int:key_id>/revoke", keys.revoke, name="revoke_key"),
]
