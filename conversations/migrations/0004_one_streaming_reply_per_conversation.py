from __future__ import annotations

from django.db import migrations, models
from django.db.models import Max


def interrupt_duplicate_streams(apps, schema_editor) -> None:
    """Before the constraint: where a conversation has several streaming answers for one choice (a
    race the constraint now prevents), keep the newest and mark the others interrupted."""
    Message = apps.get_model("conversations", "Message")
    streaming = Message.objects.filter(role="assistant", status="streaming")
    groups = streaming.values("conversation_id", "choice_index").annotate(newest=Max("id"))
    for group in groups:
        streaming.filter(
            conversation_id=group["conversation_id"],
            choice_index=group["choice_index"],
            id__lt=group["newest"],
        ).update(status="interrupted", error="the server stopped during the reply")


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0003_message_tools"),
    ]

    operations = [
        migrations.RunPython(interrupt_duplicate_streams, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="message",
            constraint=models.UniqueConstraint(
                condition=models.Q(("role", "assistant"), ("status", "streaming")),
                fields=("conversation", "choice_index"),
                name="one_streaming_reply_per_choice",
            ),
        ),
    ]
