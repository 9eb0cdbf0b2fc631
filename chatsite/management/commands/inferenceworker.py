"""The one model process of a machine, serving the web processes over the channel layer (the
protocol and the server are in inference/remote/; this command loads the model and runs them)."""

from __future__ import annotations

import asyncio
import os
import socket

import redis
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

from conversations import metrics
from conversations.runtime import ModelNotReady, get_runtime
from inference.remote.lock import WorkerAlreadyRunning, WorkerLock
from inference.remote.messages import WORKER_CHANNEL
from inference.remote.server import Worker


class Command(BaseCommand):
    help = "Run the model for several web processes: jobs arrive over the channel layer (REDIS_URL)."

    def add_arguments(self, parser):
        parser.add_argument("--drain-timeout", type=float, default=settings.CHAT_DRAIN_TIMEOUT)

    def handle(self, *args, drain_timeout: float, **options):
        if not settings.REDIS_URL:
            raise CommandError("REDIS_URL is not set: the worker serves other processes through Redis")
        # One worker per channel prefix, checked before the model loads (see inference/remote/lock.py).
        prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix", "asgi")
        owner = f"{socket.gethostname()}:{os.getpid()}"
        lock = WorkerLock(settings.REDIS_URL, prefix, owner, ttl=settings.CHAT_WORKER_LOCK_TTL)
        try:
            lock.acquire()
        except WorkerAlreadyRunning as exc:
            lock.release()
            raise CommandError(str(exc)) from None
        except redis.RedisError as exc:
            raise CommandError(f"Redis at REDIS_URL is not reachable: {exc}") from None
        try:
            self._run(drain_timeout)
        finally:
            lock.release()

    def _run(self, drain_timeout: float) -> None:
        runtime = get_runtime()
        runtime.use_worker = False  # this process IS the worker: it loads the weights
        try:
            model = runtime.load()
        except ModelNotReady as exc:
            raise CommandError(f"the model could not be loaded: {exc}") from None
        if settings.CHAT_WORKER_METRICS_PORT:
            serve_metrics(settings.CHAT_WORKER_METRICS_PORT)
        self.stdout.write(
            f"inference worker: {model.model_id}, {runtime.slots} slot(s) x {runtime.threads} thread(s), "
            f"queue {runtime.queue_max}, on channel {WORKER_CHANNEL}"
        )
        self.stdout.flush()
        from review.retention import start_daily_purge

        daily_purge = start_daily_purge()  # the retention purge, once a day, in a thread of its own
        asyncio.run(Worker(model.scheduler, get_channel_layer()).serve(drain_timeout))
        if daily_purge is not None:
            daily_purge.stop()
        runtime.close()
        self.stdout.write("inference worker stopped")


REGISTRY = CollectorRegistry(auto_describe=True)


def serve_metrics(port: int) -> None:
    """The worker's own /metrics on 127.0.0.1:``port`` (it has no web server): the scheduler's
    gauges, read at each scrape."""

    class Gauges(Collector):
        def collect(self):
            metrics.refresh_gauges()
            return []

    REGISTRY.register(Gauges())  # runs first: the gauges below are fresh when collected
    for gauge in (metrics.QUEUE_DEPTH, metrics.RUNNING, metrics.SLOTS, metrics.MODEL_READY):
        REGISTRY.register(gauge)
    start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
