"""The inference worker protocol: web processes send jobs, admission requests and cancels to ONE
model process over the channel layer (Redis), and receive each job's events back.

Two cores cannot serve two copies of the model's threads, so with several web processes the model
runs only in the worker (`manage.py inferenceworker`). Messages on the worker's channel:
- ``inference.submit`` {request_id, reply_channel, prompt_ids, params, n, user_key}: admission is
  decided at once, and answered on reply_channel with ``inference.admitted`` {request_id, worker,
  worker_channel, job_ids, seqs, max_tokens} or ``inference.refused`` {request_id, kind:
  overloaded|context, message, ...};
- ``inference.cancel`` {job_id}, sent to the job's worker's own ``worker_channel``: at most one
  more token.
Job ids are uuid4 hex, unique across workers and restarts; ``worker`` is the worker process's own
random id, and ``seqs`` number its admissions. Several workers may serve one Redis (each takes the
submits it reads first), and a restarted worker is a new one.
Each job's events then arrive on the reply channel as ``inference.event`` {worker, job_id, event},
in order. Every ``ALIVE_INTERVAL`` seconds each worker also sends each web process with jobs
``inference.alive`` {worker, job_ids: its jobs still running, last_seq}. A web process ends a job it
waits for as interrupted (with the text so far) when an alive message of that job's worker no
longer lists it (its end was lost on the way), or when that worker has said nothing for
``WORKER_SILENCE`` seconds (it died): a reply never waits forever, and never blocks its
conversation.

The messages are declared in messages.py; the worker's side is server.py. On the web side,
``WorkerClient`` turns them back into ``inference.jobs.Job`` objects, so the runner, the API and the
websocket consumer use remote jobs exactly as local ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync

from inference.gguf import GGUFInfo, read_gguf
from inference.jobs import (
    BackendUnreachable,
    ContextLengthExceeded,
    Finished,
    Job,
    Overloaded,
    finish_or_cancel,
)
from inference.remote import messages
from inference.remote.messages import ALIVE_INTERVAL, WORKER_CHANNEL, Admitted, Alive, JobEvent, Refused
from inference.remote.receiving import close_receiver, receive_until_closed
from inference.sampling import SamplingParams
from inference.scheduler import resolve_max_tokens

if TYPE_CHECKING:
    from inference.model import ChatModel

log = logging.getLogger(__name__)

ADMISSION_TIMEOUT = 10.0  # seconds to wait for the worker's answer before calling it overloaded
WORKER_SILENCE = 20.0  # seconds without a word from the worker after which its jobs are given up


class WorkerClient:
    """The web process's side: one reply channel, one task dispatching what arrives on it."""

    def __init__(self, layer) -> None:
        self.layer = layer
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reply_channel: str | None = None
        self._answers: dict[str, tuple[asyncio.Future, list[int], SamplingParams, str]] = {}
        self._jobs: dict[str, Job] = {}  # made when their admission is read (Job.submitted_at)
        # job id → (its worker's id, its admission number there, that worker's own channel)
        self._owners: dict[str, tuple[str, int, str]] = {}
        self._heard: dict[str, float] = {}  # worker id → when it last sent anything (monotonic)
        self._task: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self._started = asyncio.Lock()

    async def _ensure_started(self) -> None:
        async with self._started:
            if self._task is None or self._task.done():
                self.loop = asyncio.get_running_loop()
                self.reply_channel = await self.layer.new_channel()
                receiving = receive_until_closed(
                    self.layer, self.reply_channel, self._dispatch, "from the inference worker"
                )
                self._task = self.loop.create_task(receiving)
                self._watchdog = self.loop.create_task(self._watch())

    async def aclose(self) -> None:
        """Stop receiving (see ``inference.remote.receiving``)."""
        task, self._task = self._task, None
        if self._watchdog is not None:
            self._watchdog.cancel()
        await close_receiver(self.layer, self.reply_channel, task)

    async def _watch(self) -> None:
        """Give up the jobs of a worker that has said nothing for ``WORKER_SILENCE`` seconds."""
        while True:
            await asyncio.sleep(min(ALIVE_INTERVAL, WORKER_SILENCE / 4))
            now = time.monotonic()
            for job_id, job in list(self._jobs.items()):
                worker = self._owners.get(job_id, ("", 0, ""))[0]
                if now - max(self._heard.get(worker, 0.0), job.submitted_at) > WORKER_SILENCE:
                    self._give_up(job_id, f"the inference worker has not answered for {WORKER_SILENCE:g} s")

    def waiting_jobs(self) -> list[Job]:
        """This process's jobs whose end has not arrived yet."""
        return list(self._jobs.values())

    def _give_up(self, job_id: str, why: str) -> None:
        job = self._jobs.pop(job_id, None)
        self._owners.pop(job_id, None)
        if job is not None and not job.done:
            log.warning("job %s given up: %s", job_id, why)
            job.abandon(why)

    async def submit_n(
        self, prompt_ids: list[int], params: SamplingParams, n: int, *, user_key: str = ""
    ) -> list[Job]:
        """Ask the worker to admit n jobs; return them, or raise Overloaded / ContextLengthExceeded."""
        await self._ensure_started()
        assert self.loop is not None and self.reply_channel is not None  # set by _ensure_started
        request_id = uuid.uuid4().hex
        answer = self.loop.create_future()
        self._answers[request_id] = (answer, list(prompt_ids), params, user_key)
        message = messages.Submit(
            request_id=request_id,
            reply_channel=self.reply_channel,
            prompt_ids=list(prompt_ids),
            params=params.to_json(),
            n=n,
            user_key=user_key,
        )
        try:
            await self.layer.send(WORKER_CHANNEL, messages.dump(message))
            reply, jobs = await asyncio.wait_for(answer, ADMISSION_TIMEOUT)
        except TimeoutError:
            raise BackendUnreachable(
                "the inference worker did not answer (is `inferenceworker` running?)"
            ) from None
        except Exception as exc:  # a full or unreachable channel layer
            raise BackendUnreachable(
                f"the inference worker cannot be reached ({type(exc).__name__})"
            ) from None
        finally:
            self._answers.pop(request_id, None)
        if isinstance(reply, Refused):
            if reply.kind == "context":
                raise ContextLengthExceeded(
                    reply.message,
                    prompt_tokens=reply.prompt_tokens or 0,
                    max_tokens=reply.max_tokens or 0,
                    context_length=reply.context_length or 0,
                )
            raise Overloaded(reply.message)
        return jobs

    def _dispatch(self, data: dict[str, Any]) -> None:
        message = messages.parse(data)
        if isinstance(message, JobEvent | Alive | Admitted):
            self._heard[message.worker] = time.monotonic()
        if isinstance(message, JobEvent):
            job = self._jobs.get(message.job_id)
            if job is None:
                return
            event = messages.event_from_dict(message.event)
            job.emit(event)
            if isinstance(event, Finished):
                self._jobs.pop(message.job_id, None)
                self._owners.pop(message.job_id, None)
            return
        if isinstance(message, Alive):
            # Only this worker's jobs, admitted before its list was made (a later one's admission
            # may arrive first).
            running = set(message.job_ids)
            for job_id, (owner, seq, _) in list(self._owners.items()):
                if owner == message.worker and seq <= message.last_seq and job_id not in running:
                    self._give_up(job_id, "the inference worker no longer has this job (its end was lost)")
            return
        if not isinstance(message, Admitted | Refused):
            raise ValueError(f"a web process does not take {message.type} messages")
        waiting = self._answers.get(message.request_id)
        if waiting is None:
            if isinstance(message, Admitted):  # nobody waits any more (timed out): cancel them
                for job_id in message.job_ids:
                    self._send_cancel(job_id, message.worker_channel)
            return
        answer, prompt_ids, params, user_key = waiting
        jobs = []
        if isinstance(message, Admitted):
            # The jobs are registered here, before any of their events can be dispatched.
            for i, (job_id, seq) in enumerate(zip(message.job_ids, message.seqs, strict=True)):
                job = Job(prompt_ids, params, user_key, message.max_tokens, seed_offset=i)
                job.id = job_id
                job.on_cancel(self._cancel)
                self._jobs[job_id] = job
                self._owners[job_id] = (message.worker, seq, message.worker_channel)
                jobs.append(job)
        if not answer.done():
            answer.set_result((message, jobs))

    def _cancel(self, job: Job) -> None:
        owner = self._owners.get(job.id)
        if owner is not None:
            self._send_cancel(job.id, owner[2])

    def _send_cancel(self, job_id: str, channel: str) -> None:
        # Job.cancel may be called from any thread. To the job's own worker: with several workers
        # on one Redis, the shared channel would hand it to any of them.
        message = messages.dump(messages.Cancel(job_id=job_id))
        assert self.loop is not None  # a job exists only once the client has started
        sent = asyncio.run_coroutine_threadsafe(self.layer.send(channel, message), self.loop)

        def check(future) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.error("could not send the cancel of job %s to the worker: %r", job_id, future.exception())

        sent.add_done_callback(check)


@dataclasses.dataclass(frozen=True)
class RemoteEngine:
    """What a web process knows of the worker's engine: the file's metadata and the context."""

    info: GGUFInfo
    context_length: int

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size


class RemoteScheduler:
    """The scheduler's interface in a web process, backed by the inference worker."""

    def __init__(self, client: WorkerClient, *, context_length: int, slots: int, queue_max: int) -> None:
        self.client = client
        self.context_length = context_length
        self.n_slots = slots  # the worker's; only their number is known here
        self.queue_max = queue_max
        self.draining = False
        # The worker's queue and slots are its own: its /metrics and status report them.
        self.queue_depth = 0
        self.running = 0

    @property
    def capacity(self) -> int:
        return self.n_slots + self.queue_max

    def resolve_max_tokens(self, n_prompt: int, max_tokens: int | None) -> int:
        return resolve_max_tokens(self.context_length, n_prompt, max_tokens)

    async def asubmit_n(
        self, prompt_ids: list[int], params: SamplingParams, n: int, *, user_key: str = ""
    ) -> list[Job]:
        self.resolve_max_tokens(len(prompt_ids), params.max_tokens)  # refuse locally what cannot fit
        return await self.client.submit_n(prompt_ids, params, n, user_key=user_key)

    async def asubmit(self, prompt_ids: list[int], params: SamplingParams, *, user_key: str = "") -> Job:
        return (await self.asubmit_n(prompt_ids, params, 1, user_key=user_key))[0]

    def submit_n(
        self, prompt_ids: list[int], params: SamplingParams, n: int, *, user_key: str = ""
    ) -> list[Job]:
        """For sync code in a ``sync_to_async`` thread (on the event loop itself: ``asubmit_n``)."""
        return async_to_sync(self.asubmit_n)(prompt_ids, params, n, user_key=user_key)

    def submit(self, prompt_ids: list[int], params: SamplingParams, *, user_key: str = "") -> Job:
        return self.submit_n(prompt_ids, params, 1, user_key=user_key)[0]

    def drain(self, timeout: float) -> dict[str, int]:
        """This process's jobs (in the worker) may finish for ``timeout`` s; the rest are cancelled,
        so that their replies are saved by this process's runner before it exits."""
        self.draining = True
        finished, cancelled = finish_or_cancel(self.client.waiting_jobs(), timeout)
        return {"queued_cancelled": 0, "finished": finished, "cancelled": cancelled}

    def close(self) -> None:
        pass


def load_remote_model(
    model_path: str, layer: Any, *, context_length: int | None, slots: int, queue_max: int
) -> ChatModel:
    """A ChatModel whose generations run in the inference worker, reached over the channel
    ``layer``: the tokenizer and the chat template are loaded here (prompts are built in the web
    process), the weights are not."""
    from inference.model import ChatModel, model_id_for
    from inference.prompts import ChatTemplate
    from inference.tokenizer import Tokenizer

    info = read_gguf(model_path)
    ctx = context_length or info.context_length
    scheduler = RemoteScheduler(WorkerClient(layer), context_length=ctx, slots=slots, queue_max=queue_max)
    return ChatModel(
        model_id_for(model_path),
        RemoteEngine(info, ctx),
        Tokenizer.from_gguf(info),
        ChatTemplate.from_gguf(info),
        scheduler,
    )
