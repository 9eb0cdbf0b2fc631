"""The inference worker's side of the protocol (client.py describes it): one model process reads
submits from ``WORKER_CHANNEL``, runs the jobs on its scheduler and sends each job's events back.
``manage.py inferenceworker`` (chatsite/management/commands/inferenceworker.py) runs it."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from typing import Any

from inference.jobs import ContextLengthExceeded, Event, Finished, Job, Overloaded
from inference.remote import messages
from inference.remote.messages import ALIVE_INTERVAL, WORKER_CHANNEL
from inference.remote.receiving import close_receiver, receive_until_closed
from inference.sampling import SamplingParams

FULL_WAIT = 10.0  # seconds a send waits for room in a web process's full channel before it gives up


class Worker:
    """Serves ``scheduler``'s jobs to the web processes on the channel ``layer``."""

    def __init__(self, scheduler, layer) -> None:
        self.scheduler = scheduler
        self.layer = layer
        # Admitted and not finished (their Finished not yet sent): job id → (job, the reply channel
        # of its web process).
        self.jobs: dict[str, tuple[Job, str]] = {}
        self.clients: dict[str, float] = {}  # reply channel → when it last had a job (monotonic)
        self.worker_id = uuid.uuid4().hex  # a restarted worker is another worker to the web side
        self.seq = 0  # admissions so far (the alive messages' last_seq)
        self.channel = ""  # this worker's own channel (cancels of its jobs)
        self.full_waits = 0  # times a send waited for room in a full channel

    async def serve(self, drain_timeout: float, stop: asyncio.Event | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or ``stop`` is set), then drain: running jobs may finish for
        ``drain_timeout`` s, and every job's last event is sent before this returns."""
        loop = asyncio.get_running_loop()
        # (channel, message): a message to send as it is, or a job's (id, event), made a message by
        # the sender (``_send_loop``), off the slot's thread.
        self.outbox: asyncio.Queue[tuple[str, dict[str, Any] | tuple[str, Event]]] = asyncio.Queue()
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

    async def _handle(self, data: dict[str, Any]) -> None:
        message = messages.parse(data)
        if isinstance(message, messages.Submit):
            await self._submit(message)
        elif isinstance(message, messages.Cancel):
            job, _ = self.jobs.get(message.job_id, (None, ""))
            if job is not None:
                job.cancel()
        else:
            raise ValueError(f"the worker does not take {message.type} messages")

    @staticmethod
    def stderr_write(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    async def _submit(self, message: messages.Submit) -> None:
        reply_to = message.reply_channel
        refused: messages.Refused | None = None
        try:
            params = SamplingParams.from_json(message.params)
            jobs = self.scheduler.submit_n(message.prompt_ids, params, message.n, user_key=message.user_key)
        except ContextLengthExceeded as exc:
            refused = messages.Refused(
                request_id=message.request_id,
                kind="context",
                message=str(exc),
                prompt_tokens=exc.prompt_tokens,
                max_tokens=exc.max_tokens,
                context_length=exc.context_length,
            )
        except Overloaded as exc:
            refused = messages.Refused(request_id=message.request_id, kind="overloaded", message=str(exc))
        if refused is not None:
            await self.layer.send(reply_to, messages.dump(refused))
            return
        seqs = []
        for job in jobs:  # known (to cancels and to the alive messages) before the answer goes out
            self.jobs[job.id] = (job, reply_to)
            self.seq += 1
            seqs.append(self.seq)
        self.clients[reply_to] = time.monotonic()
        admitted = messages.Admitted(
            request_id=message.request_id,
            worker=self.worker_id,
            worker_channel=self.channel,
            job_ids=[j.id for j in jobs],
            seqs=seqs,
            max_tokens=jobs[0].max_tokens,
        )
        # The answer goes out before any event: the client registers the jobs when it reads it.
        try:
            await self.layer.send(reply_to, messages.dump(admitted))
        except BaseException:
            for job in jobs:  # nobody will read them
                job.cancel()
                self.jobs.pop(job.id, None)
            raise
        loop = asyncio.get_running_loop()
        put = self.outbox.put_nowait
        for job in jobs:
            # Called on the slot's thread after every token: it only hands the event over.
            def forward(event: Event, job_id: str = job.id) -> None:
                loop.call_soon_threadsafe(put, (reply_to, (job_id, event)))

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
                alive = messages.Alive(
                    worker=self.worker_id, job_ids=running.get(owner, []), last_seq=self.seq
                )
                self.outbox.put_nowait((owner, messages.dump(alive)))

    async def _send_loop(self) -> None:
        while True:
            channel, item = await self.outbox.get()
            if isinstance(item, tuple):  # a job's event
                job_id, event = item
                message = messages.job_event(self.worker_id, job_id, event)
                if isinstance(event, Finished):
                    self.jobs.pop(job_id, None)
            else:
                message = item
            try:
                await self._send(channel, message)
            except Exception as exc:  # a web process that went away, or a channel full for long
                self.stderr_write(f"could not send to {channel}: {type(exc).__name__}")
            finally:
                self.outbox.task_done()

    async def _send(self, channel: str, message: dict[str, Any]) -> None:
        """Send, waiting for room while the web process's channel is full (the model can make
        tokens faster than a busy web process reads them: a dropped event would lose text, or a
        reply's end), for up to ``FULL_WAIT`` seconds: a web process gone for good never empties
        its channel, and the other jobs' events wait behind this one."""
        deadline, pause = time.monotonic() + FULL_WAIT, 0.002
        while True:
            try:
                await self.layer.send(channel, message)
                return
            except Exception as exc:
                # channels' ChannelFull, by name: inference/ does not import channels.
                if type(exc).__name__ != "ChannelFull" or time.monotonic() >= deadline:
                    raise
            self.full_waits += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
