from __future__ import annotations

from django.apps import AppConfig


class UpstreamsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "upstreams"
    verbose_name = "Upstream inference servers"
