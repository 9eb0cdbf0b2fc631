"""Serve chatsite with Daphne, and shut down gracefully.

Daphne has no ASGI lifespan, and on SIGTERM it cancels every running request at once. This command
embeds Daphne's server and handles the signals itself. On SIGTERM (or Ctrl+C):
1. new work is refused (/v1 answers 503; the pages say the server is restarting);
2. running generations may finish for up to ``--drain-timeout`` seconds;
3. the rest are cancelled, and their replies are saved as ``interrupted`` with their text;
4. once every reply's final state is written, the process exits.
A second signal exits at once (replies still streaming are then found by the next start-up).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from conversations.runtime import get_runtime

log = logging.getLogger("chatsite.serve")


class Command(BaseCommand):
    help = "Serve the site (HTTP, websockets, static files) with Daphne, draining replies on SIGTERM."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--drain-timeout",
            type=float,
            default=settings.CHAT_DRAIN_TIMEOUT,
            help="seconds running replies may take to finish on SIGTERM (default: CHAT_DRAIN_TIMEOUT)",
        )
        parser.add_argument("--no-preload", action="store_true", help="load the model on first use instead")

    def handle(self, *args, host: str, port: int, drain_timeout: float, no_preload: bool, **options):
        # Daphne installs Twisted's asyncio reactor when its server module is imported: first.
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server
        from twisted.internet import reactor, task, threads

        from chatsite.asgi import application
        from conversations import actions
        from conversations.live import runner

        self.runtime = get_runtime()
        if not no_preload:
            self.runtime.start_loading()
        orphaned = actions.interrupt_orphaned_messages()
        if orphaned:
            self.stdout.write(f"marked {orphaned} replies of a stopped process as interrupted")

        self.server = Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            signal_handlers=False,
            action_logger=None,
            websocket_max_message_size=settings.CHAT_WS_MAX_MESSAGE_BYTES,
            websocket_max_frame_size=settings.CHAT_WS_MAX_MESSAGE_BYTES,
            verbosity=options.get("verbosity", 1),
        )
        self.reactor = reactor
        self.drain_timeout = drain_timeout
        self.stopping = False
        self.runner = runner

        def sweep() -> None:
            threads.deferToThread(runner.sweep_stale_sync).addErrback(lambda f: log.error("sweep: %s", f))

        # Replies left 'streaming' by a process that died elsewhere: found by their stale heartbeats.
        task.LoopingCall(sweep).start(actions.STALE_AFTER, now=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: reactor.callFromThread(self._on_signal, signum))
        from review.retention import start_daily_purge

        daily_purge = start_daily_purge()  # the retention purge, once a day, in a thread of its own
        self.stdout.write(f"chatsite on http://{host}:{port}/ (SIGTERM drains for {drain_timeout:g} s)")
        self.server.run()
        if daily_purge is not None:
            daily_purge.stop()
        self.runtime.close()
        self.stdout.write("chatsite stopped")

    def _on_signal(self, signum: int) -> None:
        if self.stopping:
            self.stdout.write("second signal: exiting now")
            self.reactor.stop()
            return
        self.stopping = True
        self.stdout.write(f"{signal.Signals(signum).name}: draining (up to {self.drain_timeout:g} s)")
        threading.Thread(target=self._drain, name="drain", daemon=True).start()

    def _drain(self) -> None:
        start = time.monotonic()
        summary = self.runtime.drain(self.drain_timeout)
        self.stdout.write(
            f"drained in {time.monotonic() - start:.1f} s: {summary['finished']} finished, "
            f"{summary['cancelled']} interrupted, {summary['queued_cancelled']} queued cancelled"
        )
        # The runner writes each reply's final state on the event loop, and the HTTP responses
        # (an SSE stream's last chunks and [DONE]) are still being sent: wait for both.
        future = asyncio.run_coroutine_threadsafe(self._finish_in_flight(15.0), self._loop())
        try:
            future.result(20)
        except Exception:
            log.exception("waiting for the final writes")
        self.reactor.callFromThread(self.reactor.stop)

    async def _finish_in_flight(self, timeout: float) -> None:
        from daphne.ws_protocol import WebSocketProtocol

        deadline = time.monotonic() + timeout
        await self.runner.wait_all(timeout)

        def http_busy() -> bool:
            return any(
                not isinstance(protocol, WebSocketProtocol)
                and details.get("application_instance") is not None
                and not details["application_instance"].done()
                for protocol, details in self.server.connections.items()
            )

        while http_busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # let the transports write what the responses handed them
        await self.runner.stop_listening()

    def _loop(self) -> asyncio.AbstractEventLoop:
        return self.reactor._asyncioEventloop
