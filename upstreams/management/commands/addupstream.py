from __future__ import annotations

import os

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from upstreams import services
from upstreams.models import Upstream


class Command(BaseCommand):
    help = (
        "Add an upstream inference server (an OpenAI-compatible /v1) and discover its models. "
        "The API key is read from an environment variable, never from the command line."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("base_url", help="its OpenAI-compatible root, ending in /v1")
        parser.add_argument(
            "--api-key-env", metavar="VAR", help="the environment variable holding its API key"
        )
        parser.add_argument("--max-concurrent", type=int, default=4, metavar="N")
        parser.add_argument("--queue-max", type=int, default=16, metavar="N")
        parser.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS")
        parser.add_argument("--read-timeout", type=float, default=120.0, metavar="SECONDS")
        parser.add_argument(
            "--model", action="append", default=[], metavar="ID", help="a model it serves (repeatable)"
        )
        parser.add_argument("--no-check", action="store_true", help="do not ask it for its models now")

    def handle(self, *args, **options) -> None:
        api_key = ""
        if options["api_key_env"]:
            api_key = os.environ.get(options["api_key_env"], "")
            if not api_key:
                raise CommandError(f"The environment variable {options['api_key_env']} is empty or not set.")
        if Upstream.objects.filter(name=options["name"]).exists():
            raise CommandError(
                f"An upstream named '{options['name']}' exists already (removeupstream first)."
            )
        if options["max_concurrent"] < 1:
            raise CommandError("--max-concurrent must be at least 1.")
        try:
            upstream = services.create_upstream(
                options["name"],
                options["base_url"],
                api_key=api_key,
                max_concurrent=options["max_concurrent"],
                queue_max=options["queue_max"],
                connect_timeout=options["connect_timeout"],
                read_timeout=options["read_timeout"],
                models=options["model"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"Added upstream {upstream.name} ({upstream.base_url}).")
        if options["no_check"]:
            return
        state = services.check(upstream)
        if state["healthy"]:
            self.stdout.write(f"It serves: {', '.join(upstream.model_ids) or '(no models)'}")
        else:
            self.stderr.write(
                f"Warning: it did not answer GET /models ({state['error']}); "
                f"serving the listed models: {', '.join(upstream.model_ids) or '(none)'}"
            )
