"""purge [--dry-run]: erase what each team's retention policy says (review/retention.py)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from review import retention


class Command(BaseCommand):
    help = (
        "Erase the conversations each team's retention policy no longer keeps: messages' text and token "
        "ids, titles, flags' notes (token counts stay). Conversations under a legal hold are kept. "
        "--dry-run counts without erasing. `serve` and `inferenceworker` run this once a day unless "
        "CHAT_PURGE_DAILY=0; from cron: `17 3 * * * cd /srv/chatsite && .venv/bin/python manage.py purge`."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be erased, erase nothing"
        )
        parser.add_argument(
            "--batch-size", type=int, default=retention.BATCH_SIZE, help="messages per transaction"
        )

    def handle(self, *args: Any, dry_run: bool, batch_size: int, **options: Any) -> None:
        report = retention.purge(dry_run=dry_run, batch_size=max(1, batch_size))
        verb = "would erase" if dry_run else "erased"
        for team in report.teams:
            self.stdout.write(
                f"{team.team}: {verb} {team.conversations} conversation(s) ({team.expired} past keep_days="
                f"{team.policy['keep_days']}, {team.deleted} deleted over deleted_keep_days="
                f"{team.policy['deleted_keep_days']}), {team.messages} message(s); {team.held} held"
            )
        self.stdout.write(
            f"{'Dry run: ' if dry_run else ''}{verb} {report.conversations} conversation(s), "
            f"{report.messages} message(s) in all."
        )
