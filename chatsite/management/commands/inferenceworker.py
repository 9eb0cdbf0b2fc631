"""The one model process of a machine, serving the web processes over the channel layer."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid

import redis
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

from conversations import metrics
from conversations.runtime import ModelNotReady, get_runtime
from inference.jobs import ContextLengthExceeded, Event, Job, Overloaded
from inference.remote.client import ALIVE_INTERVAL, WORKER_CHANNEL, event_to_dict
from inference.remote.lock import WorkerAlreadyRunning, WorkerLock
from inference.remote.receiving import close_receiver, receive_until_closed
from inference.sampling import SamplingParams


class Command(BaseCommand):
    help = "Run the model for several web processes: jobs arrive over the channel layer (REDIS_URL)."

    def add_arguments(self, parser):
        parser.add_argument("--drain-timeout", type=float, default=settings.CHAT_DRAIN_TIMEOUT)

    def handle(self, *args, drain_timeout: float, **options):
        if not settings.REDIS_URL:
            raise CommandError("REDIS_URL is not set: the worker serves other processes through Redis")
        # One worker per channel prefix, checked before the model loads (see inference/remote/lock.py).
        prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix", "asgi")
        lock = WorkerLock(settings.REDIS_URL, prefix, f"{socket.gethostname()}:{os.getpid()}")
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
        asyncio.run(Worker(model.scheduler).serve(drain_timeout))
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


class Worker:
    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.layer = get_channel_layer()
        # Admitted and not finished (their Finished not yet sent): job id → (job, the reply channel
        # of its web process).
        self.jobs: dict[str, tuple[Job, str]] = {}
        self.clients: dict[str, float] = {}  # reply channel → when it last had a job (monotonic)
        self.worker_id = uuid.uuid4().hex  # a restarted worker is another worker to the web side
        self.seq = 0  # admissions so far (the alive messages' last_seq)
        self.channel = ""  # this worker's own channel (cancels of its jobs)

    async def serve(self, drain_timeout: float, stop: asyncio.Event | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or ``stop`` is set), then drain: running jobs may finish for
        ``drain_timeout`` s, and every job's last event is sent before this returns."""
        loop = asyncio.get_running_loop()
        self.outbox: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
        if stop is None:
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        self.channel = await self.layer.new_channel()
        sender = loop.create_task(self._send_loop())
        receiver = loop.create_task(
            receive_until_closed(self.layer, WORKER_CHANNEL, self._handle, f"on {WORKER_CHANNEL}")
        )
        own = loop.create_task(receive_until_closed(self.layer, self.channel, self._handle, "cancels"))
        alive = loop.create_task(self._alive_loop())
        await stop.wait()
        receiver.cancel()
        # Running jobs may finish; their events still go out before the worker exits.
        await asyncio.to_thread(self.scheduler.drain, drain_timeout)
        await self._flush(10.0)
        alive.cancel()
        sender.cancel()
        await close_receiver(self.layer, self.channel, own)

    async def _flush(self, timeout: float) -> None:
        """Wait until every job's Finished has been handed to the sender (a job's listener queues it
        from the slot's thread, possibly after ``drain`` returned) and every queued message is sent
        (the send in progress included: cancelling it would lose the reply's end)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.jobs and loop.time() < deadline:
            await asyncio.sleep(0.02)
        try:
            await asyncio.wait_for(self.outbox.join(), max(0.1, deadline - loop.time()))
        except TimeoutError:
            self.stderr_write(f"{self.outbox.qsize()} message(s) not sent at exit")

    async def _handle(self, message: dict) -> None:
        if message["type"] == "inference.submit":
            await self._submit(message)
        elif message["type"] == "inference.cancel":
            job, _ = self.jobs.get(message["job_id"], (None, ""))
            if job is not None:
                job.cancel()

    @staticmethod
    def stderr_write(text: str) -> None:
        import sys

        print(text, file=sys.stderr, flush=True)

    async def _submit(self, message: dict) -> None:
        reply_to = message["reply_channel"]
        base = {"request_id": message["request_id"]}
        try:
            params = SamplingParams.from_json(message["params"])
            jobs = self.scheduler.submit_n(
                message["prompt_ids"], params, message["n"], user_key=message["user_key"]
            )
        except ContextLengthExceeded as exc:
            await self.layer.send(
                reply_to,
                {
                    **base,
                    "type": "inference.refused",
                    "kind": "context",
                    "message": str(exc),
                    "prompt_tokens": exc.prompt_tokens,
                    "max_tokens": exc.max_tokens,
                    "context_length": exc.context_length,
                },
            )
            return
        except Overloaded as exc:
            await self.layer.send(
                reply_to, {**base, "type": "inference.refused", "kind": "overloaded", "message": str(exc)}
            )
            return
        seqs = []
        for job in jobs:  # known (to cancels and to the alive messages) before the answer goes out
            self.jobs[job.id] = (job, reply_to)
            self.seq += 1
            seqs.append(self.seq)
        self.clients[reply_to] = time.monotonic()
        # The answer goes out before any event: the client registers the jobs when it reads it.
        try:
            await self.layer.send(
                reply_to,
                {
                    **base,
                    "type": "inference.admitted",
                    "worker": self.worker_id,
                    "worker_channel": self.channel,
                    "job_ids": [j.id for j in jobs],
                    "seqs": seqs,
                    "max_tokens": jobs[0].max_tokens,
                },
            )
        except BaseException:
            for job in jobs:  # nobody will read them
                job.cancel()
                self.jobs.pop(job.id, None)
            raise
        loop = asyncio.get_running_loop()
        for job in jobs:

            def forward(event: Event, job_id: str = job.id) -> None:
                message = {
                    "type": "inference.event",
                    "worker": self.worker_id,
                    "job_id": job_id,
                    "event": event_to_dict(event),
                }
                loop.call_soon_threadsafe(self.outbox.put_nowait, (reply_to, message))

            job.subscribe(forward)

    async def _alive_loop(self) -> None:
        """Tell each web process with jobs here (or lately) which of its jobs are still running:
        a job it waits for that is not listed lost its end on the way, and a web process that
        hears nothing for a while knows the worker is gone (``WorkerClient``). The message goes
        through the outbox, after the events already queued: a job's Finished always arrives
        before the first list without it."""
        while True:
            await asyncio.sleep(ALIVE_INTERVAL)
            now = time.monotonic()
            running: dict[str, list[str]] = {}
            for job_id, (_, owner) in self.jobs.items():
                running.setdefault(owner, []).append(job_id)
                self.clients[owner] = now
            for owner, seen in list(self.clients.items()):
                if now - seen > 60:  # no job for a minute: nothing to tell it
                    del self.clients[owner]
                    continue
                message = {
                    "type": "inference.alive",
                    "worker": self.worker_id,
                    "job_ids": running.get(owner, []),
                    "last_seq": self.seq,
                }
                self.outbox.put_nowait((owner, message))

    async def _send_loop(self) -> None:
        while True:
            channel, message = await self.outbox.get()
            if message["type"] == "inference.event" and message["event"]["type"] == "finished":
                self.jobs.pop(message["job_id"], None)
            try:
                await self.layer.send(channel, message)
            except Exception as exc:  # a web process that went away, or a full channel
                self.stderr_write(f"could not send to {channel}: {type(exc).__name__}")
            finally:
                self.outbox.task_done()
