from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from upstreams import services
from upstreams.models import Upstream


class Command(BaseCommand):
    help = "List the upstream inference servers with their health (each is asked for its models now)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-check", action="store_true", help="show the saved state without asking them"
        )

    def handle(self, *args, **options) -> None:
        upstreams = list(Upstream.objects.all())
        if not upstreams:
            self.stdout.write("No upstreams. Add one with: manage.py addupstream NAME BASE_URL")
            return
        for upstream in upstreams:
            if not upstream.enabled:
                health = "disabled"
            elif options["no_check"]:
                health = f"not checked ({upstream.refresh_error or 'last check ok'})"
            else:
                state = services.check(upstream)
                health = "healthy" if state["healthy"] else f"unhealthy: {state['error']}"
            key = "key set" if upstream.has_api_key else "no key"
            self.stdout.write(
                f"{upstream.name}\t{upstream.base_url}\t{health}\tmax {upstream.max_concurrent}, "
                f"queue {upstream.queue_max}, {key}\tmodels: {', '.join(upstream.model_ids) or '-'}"
            )
