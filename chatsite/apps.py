from __future__ import annotations

from django.apps import AppConfig


class ChatsiteConfig(AppConfig):
    name = "chatsite"
    verbose_name = "chatsite"

    def ready(self) -> None:
        from chatsite import checks, middleware

        checks.register_all()
        middleware.run_pure_hooks_inline()
