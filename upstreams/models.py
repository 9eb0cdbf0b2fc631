"""An upstream inference server: an OpenAI-compatible /v1 whose models chatsite serves beside its own."""

from __future__ import annotations

from django.core.validators import MinValueValidator
from django.db import models


class Upstream(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    base_url = models.URLField(max_length=500, help_text="Its OpenAI-compatible root, ending in /v1.")
    # Fernet token (upstreams.crypto); the plain key is never shown again once saved.
    api_key_encrypted = models.TextField(blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    max_concurrent = models.PositiveIntegerField(
        default=4, validators=[MinValueValidator(1)], help_text="Calls sent to it at once."
    )
    queue_max = models.PositiveIntegerField(
        default=16, help_text="Calls that may wait for a free slot; beyond that the answer is 429."
    )
    connect_timeout = models.FloatField(
        default=5.0, validators=[MinValueValidator(0.1)], help_text="Seconds."
    )
    read_timeout = models.FloatField(
        default=120.0,
        validators=[MinValueValidator(0.1)],
        help_text="Seconds to wait for the first token, or between two chunks.",
    )
    # The ids an operator listed, and those its GET /v1/models reported at the last refresh.
    listed_models = models.JSONField(default=list, blank=True)
    discovered_models = models.JSONField(default=list, blank=True, editable=False)
    models_refreshed_at = models.DateTimeField(null=True, blank=True, editable=False)
    refresh_error = models.TextField(blank=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def model_ids(self) -> list[str]:
        return list(dict.fromkeys([*self.listed_models, *self.discovered_models]))

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted)


class TeamModels(models.Model):
    """The models a team may use, chosen by its admins. No row: every model."""

    team = models.OneToOneField("conversations.Team", models.CASCADE, related_name="model_choice")
    models = models.JSONField(default=list, blank=True, help_text="The model ids the team may use.")

    class Meta:
        verbose_name = "team's models"
        verbose_name_plural = "teams' models"

    def __str__(self) -> str:
        return f"models of {self.team}"
