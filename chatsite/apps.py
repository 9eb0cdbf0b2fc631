from __future__ import annotations

from django.apps import AppConfig


class ChatsiteConfig(AppConfig):
    name = "chatsite"
    verbose_name = "chatsite"

    def ready(self) -> None:
        from chatsite import checks

        checks.register_all()
