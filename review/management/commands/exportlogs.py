"""exportlogs [--team NAME] [--since DATE] [--until DATE] [--source web|api] [--output FILE]

JSONL, one conversation per line (the admin's export format), streamed to stdout or a file. The
export is written to the audit trail as the operator's.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.models import Conversation, Team
from review import export, services


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a date (YYYY-MM-DD).") from None


class Command(BaseCommand):
    help = "Export conversations with their messages as JSONL (OpenAI messages plus metadata)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--team", action="append", default=[], help="a team's name (repeatable)")
        parser.add_argument("--since", help="first day included, YYYY-MM-DD (UTC, by creation)")
        parser.add_argument("--until", help="last day included, YYYY-MM-DD (UTC, by creation)")
        parser.add_argument("--source", choices=[s.value for s in Conversation.Source])
        parser.add_argument("--output", "-o", help="a file to write (default: stdout)")

    def handle(self, *args: Any, **options: Any) -> None:
        queryset = Conversation.objects.all()
        used: dict[str, Any] = {}
        if options["team"]:
            teams = list(Team.objects.filter(name__in=options["team"]))
            missing = set(options["team"]) - {t.name for t in teams}
            if missing:
                raise CommandError(f"No team named {', '.join(sorted(map(repr, missing)))}.")
            queryset = queryset.filter(team__in=teams)
            used["team"] = sorted(options["team"])
        if options["since"]:
            since = _day(options["since"])
            queryset = queryset.filter(created__gte=datetime.combine(since, time.min, tzinfo=UTC))
            used["since"] = since.isoformat()
        if options["until"]:
            until = _day(options["until"])
            queryset = queryset.filter(
                created__lt=datetime.combine(until + timedelta(days=1), time.min, tzinfo=UTC)
            )
            used["until"] = until.isoformat()
        if options["source"]:
            queryset = queryset.filter(source=options["source"])
            used["source"] = options["source"]

        count = queryset.count()
        services.record_export(None, fmt="jsonl", filters={"command": "exportlogs", **used}, count=count)
        if options["output"]:
            with open(options["output"], "w", encoding="utf-8") as out:
                out.writelines(export.jsonl(queryset))
            self.stderr.write(f"Wrote {count} conversation(s) to {options['output']}.")
        else:
            for line in export.jsonl(queryset):
                self.stdout.write(line, ending="")
