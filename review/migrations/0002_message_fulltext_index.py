"""On PostgreSQL, a GIN index on the expression review.search matches message text with.

The expression must be the one Django generates for ``SearchVector("content", config="english")``,
or the planner will not use the index. Other databases get nothing (their search is icontains).
"""

from __future__ import annotations

from django.db import migrations

INDEX = "review_message_content_fts"


def create_index(apps, schema_editor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"CREATE INDEX IF NOT EXISTS {INDEX} ON conversations_message "
        "USING GIN (to_tsvector('english'::regconfig, COALESCE(content, '')))"
    )


def drop_index(apps, schema_editor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("review", "0001_initial"),
        ("conversations", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_index, drop_index)]
