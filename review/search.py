"""Full-text search over message text: PostgreSQL's own on PostgreSQL, ``icontains`` elsewhere.

On PostgreSQL the match is ``to_tsvector('english', content) @@ websearch_to_tsquery(...)``;
migration review/0002 adds the GIN index on that exact expression.
"""

from __future__ import annotations

from django.contrib.postgres.search import SearchQuery, SearchVector
from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet

from conversations.models import Conversation, Message

CONFIG = "english"


def message_matches(term: str) -> QuerySet[Message]:
    if connection.vendor == "postgresql":
        return Message.objects.annotate(search=SearchVector("content", config=CONFIG)).filter(
            search=SearchQuery(term, config=CONFIG, search_type="websearch")
        )
    return Message.objects.filter(content__icontains=term)


def search_conversations(queryset: QuerySet[Conversation], term: str) -> QuerySet[Conversation]:
    """Conversations whose title, owner, request ``user`` or any message matches ``term``."""
    term = term.strip()
    if not term:
        return queryset
    in_messages = Exists(message_matches(term).filter(conversation=OuterRef("pk")))
    return queryset.filter(
        in_messages
        | Q(title__icontains=term)
        | Q(request_user__icontains=term)
        | Q(owner__username__icontains=term)
    )
