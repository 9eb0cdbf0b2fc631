from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from upstreams import services


class Command(BaseCommand):
    help = "Remove an upstream inference server (its logged calls stay)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")

    def handle(self, *args, **options) -> None:
        if not services.remove_upstream(options["name"]):
            raise CommandError(f"There is no upstream named '{options['name']}'.")
        self.stdout.write(f"Removed upstream {options['name']}.")
