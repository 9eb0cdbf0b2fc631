"""Teams, conversations, messages and API keys: one vocabulary for the browser chat, the API and review.

Every write goes through ``conversations.actions`` (reads: ``queries``); this module only declares the data.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        MEMBER = "member"
        ADMIN = "admin"

    team = models.ForeignKey(Team, models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="unique_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


class ApiKey(models.Model):
    """A bearer key for /v1. Stored as a lookup prefix plus the SHA-256 of its secret part."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_keys")
    team = models.ForeignKey(Team, models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)  # hex SHA-256
    created = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name or 'key'} ({self.prefix}…)"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class Conversation(models.Model):
    class Source(models.TextChoices):
        WEB = "web"
        API = "api"

    class Visibility(models.TextChoices):
        PRIVATE = "private"
        TEAM = "team"

    team = models.ForeignKey(Team, models.CASCADE, related_name="conversations")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="conversations")
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.WEB)
    visibility = models.CharField(max_length=10, choices=Visibility.choices, default=Visibility.PRIVATE)
    title = models.CharField(max_length=200, blank=True)
    # Per-conversation settings (the browser chat's; an API call records its request's values).
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    model_id = models.CharField(max_length=200, blank=True)
    # "Answer as JSON": the browser chat's replies follow a grammar (conversations/json_answers.py),
    # any JSON object, or with ``json_schema`` a document valid against it.
    json_answers = models.BooleanField(default=False)
    json_schema = models.JSONField(null=True, blank=True)
    api_key = models.ForeignKey(ApiKey, models.SET_NULL, null=True, blank=True, related_name="conversations")
    request_user = models.CharField(max_length=256, blank=True)  # the API request's `user` field
    deleted_at = models.DateTimeField(null=True, blank=True)  # soft delete: hidden from the owner only
    # Set when the retention policy erased the conversation's text (review/retention.py).
    purged_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated"]
        indexes = [
            models.Index(fields=["owner", "-updated"], name="conv_owner_updated"),
            models.Index(fields=["team", "visibility", "-updated"], name="conv_team_updated"),
            models.Index(fields=["source", "-created"], name="conv_source_created"),
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        STOPPED = "stopped"  # by a person, in the page
        CANCELLED = "cancelled"  # the API client disconnected
        ERROR = "error"
        INTERRUPTED = "interrupted"  # the owning process died (stale heartbeat) or shut down
        UNANSWERED = "unanswered"  # the queue was full; the user message is kept

    conversation = models.ForeignKey(Conversation, models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    # Who wrote a user message in the browser (a shared conversation has several writers).
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    name = models.CharField(max_length=64, blank=True)
    content = models.TextField(blank=True)
    # An API request with n > 1 gets n assistant messages, numbered by choice_index.
    choice_index = models.PositiveSmallIntegerField(default=0)
    # The ids the model generated (the next turn splices them in to reuse the KV cache).
    token_ids = models.JSONField(null=True, blank=True)
    params = models.JSONField(default=dict, blank=True)  # the sampling parameters used
    # An API reply's tools, tool_choice and response_format as requested, and the tool_calls
    # it made (conversations/api/tool_format.py's ToolPlan.record plus "tool_calls"); null for plain replies.
    tools = models.JSONField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    queue_wait = models.FloatField(null=True, blank=True)  # seconds
    ttft = models.FloatField(null=True, blank=True)  # seconds
    duration = models.FloatField(null=True, blank=True)  # seconds
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.COMPLETE)
    finish_reason = models.CharField(max_length=16, blank=True)
    error = models.TextField(blank=True)
    owner_process = models.CharField(max_length=100, blank=True)  # "host:pid" while streaming
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Set when a regenerated answer or an edited user message replaced this one in the browser
    # chat: hidden from the conversation (and from later prompts), kept for reviewers.
    superseded_at = models.DateTimeField(null=True, blank=True)
    # Versions: a regenerated answer, or an edited user message, is a new version of the message it
    # replaced; ``version_of`` is the first version (null on a first version). The page browses the
    # versions (‹ 1 / 3 ›); the one chosen, with the branch after it, is the visible one and the
    # others are ``superseded_at`` (conversations/actions.py: select_version).
    version_of = models.ForeignKey(
        "self", models.CASCADE, null=True, blank=True, related_name="later_versions"
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["conversation", "id"], name="msg_conversation_id"),
            models.Index(fields=["status", "heartbeat_at"], name="msg_status_heartbeat"),
        ]
        constraints = [
            # One generation at a time per conversation, whichever web process starts it: at most
            # one streaming answer per choice (an API call with n > 1 streams n choices at once).
            models.UniqueConstraint(
                fields=["conversation", "choice_index"],
                condition=models.Q(role="assistant", status="streaming"),
                name="one_streaming_reply_per_choice",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class ChatPreferences(models.Model):
    """A person's choices for the chat pages, kept on the server so they follow them to any browser."""

    class Theme(models.TextChoices):
        AUTO = "auto"  # the browser's prefers-color-scheme
        LIGHT = "light"
        DARK = "dark"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, models.CASCADE, related_name="chat_preferences")
    theme = models.CharField(max_length=8, choices=Theme.choices, default=Theme.AUTO)

    class Meta:
        verbose_name_plural = "chat preferences"

    def __str__(self) -> str:
        return f"{self.user}: {self.theme}"
