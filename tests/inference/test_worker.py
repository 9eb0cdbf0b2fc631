"""The inference worker: jobs, admission and cancels over the Redis channel layer.

A real `manage.py inferenceworker` process (tiny model) and, in this process, the web side's
``WorkerClient`` on its own Redis layer connection, as a web process would have.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from inference.jobs import ContextLengthExceeded, Delta, Finished, Overloaded
from inference.remote import client as worker_module
from inference.sampling import SamplingParams
from tests.paced_model import PACE_MS, paced_env, write_paced_model
from tests.worker_process import ids, new_client, no_eos, redis_layer, run, start_worker, stop_worker


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The tiny model at the test pace, and the worker settings that serve it (tests/paced_model.py):
    for the tests that need a job still running while they act, not the real model's words."""
    model = write_paced_model(tmp_path_factory.mktemp("paced"))
    return model, paced_env(model)


@pytest.mark.slow  # worker processes
def test_it_streams_a_job_from_the_worker(tiny, redis_url, prefix, tmp_path) -> None:
    process = start_worker(tiny, redis_url, prefix, tmp_path)
    try:

        async def scenario():
            client = new_client(redis_url, prefix)
            [job] = await client.submit_n(ids(tiny, "hello"), no_eos(max_tokens=12), 1, user_key="alice")
            return [e async for e in job.aevents()]

        events = run(scenario())
        finished = events[-1]
        assert isinstance(finished, Finished) and finished.reason == "length"
        assert finished.usage.completion_tokens == 12
        assert "".join(e.text for e in events if isinstance(e, Delta)) == finished.text
    finally:
        stop_worker(process)


@pytest.mark.slow  # worker processes
def test_it_cancels_a_remote_job_within_a_token(redis_url, prefix, tmp_path, paced) -> None:
    # At the tests' pace: unpaced, the tiny model could make its 400 tokens on a busy machine
    # before the web side has even read the third (the worker sends events as fast as it can).
    model, env = paced
    process = start_worker(model, redis_url, prefix, tmp_path, **env)
    try:

        async def scenario():
            client = new_client(redis_url, prefix)
            [job] = await client.submit_n(ids(model, "long"), no_eos(max_tokens=400), 1)
            seen = 0
            async for event in job.aevents():
                if isinstance(event, Delta):
                    seen += len(event.token_ids)
                    if seen >= 3 and not job.cancelled:
                        job.cancel()
                        at_cancel = seen
                if isinstance(event, Finished):
                    return event, at_cancel

        finished, at_cancel = run(scenario())
        assert finished.reason == "cancelled"
        # 400 tokens take 400 x PACE_MS: the cancel crosses Redis long before.
        assert finished.usage.completion_tokens < 400
        assert finished.usage.completion_tokens >= at_cancel
    finally:
        stop_worker(process)


@pytest.mark.slow  # worker processes
def test_it_refuses_over_the_queue_and_past_the_context(tiny, redis_url, prefix, tmp_path) -> None:
    process = start_worker(tiny, redis_url, prefix, tmp_path, CHAT_SLOTS="1", CHAT_QUEUE_MAX="0")
    try:

        async def scenario():
            client = new_client(redis_url, prefix)
            with pytest.raises(ContextLengthExceeded) as info:
                await client.submit_n(ids(tiny, "x"), no_eos(max_tokens=10_000), 1)
            assert info.value.context_length == 512
            [busy] = await client.submit_n(ids(tiny, "busy"), no_eos(max_tokens=490), 1)
            with pytest.raises(Overloaded):
                await client.submit_n(ids(tiny, "more"), no_eos(max_tokens=5), 1)
            busy.cancel()
            assert (await asyncio.to_thread(busy.wait, 30)).reason in ("cancelled", "length")

        run(scenario())
    finally:
        stop_worker(process)


def test_it_calls_a_missing_worker_overloaded(redis_url, prefix, monkeypatch) -> None:
    monkeypatch.setattr(worker_module, "ADMISSION_TIMEOUT", 0.5)

    async def scenario():
        client = new_client(redis_url, prefix)
        start = time.monotonic()
        with pytest.raises(Overloaded, match="did not answer"):
            await client.submit_n([1, 2, 3], SamplingParams(max_tokens=2), 1)
        return time.monotonic() - start

    assert run(scenario()) < 5


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.model
def test_it_serves_two_web_processes_from_one_worker(redis_url, prefix, tmp_path) -> None:
    """Two Daphne processes on one database and Redis, the real model in the worker only."""
    from tests.fixtures_model import default_model_path
    from tests.live_server import LiveServer, start_together

    env = {"REDIS_URL": redis_url, "CHAT_CHANNEL_PREFIX": prefix, "CHAT_INFERENCE_WORKER": "1"}
    worker = start_worker(default_model_path(), redis_url, prefix, tmp_path / "worker", CHAT_SLOTS="2")
    a = b = None
    try:
        a = LiveServer(tmp_path / "site", env)
        a._setup()
        b = LiveServer(tmp_path / "site", env, keys=a.keys)  # same database
        start_together(a, b)
        body = {"model": "gpt-3.5-turbo", "max_tokens": 8, "temperature": 0}

        def ask(server: LiveServer, text: str) -> dict:
            status, _, raw = server.request(
                "POST", "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": text}]}
            )
            assert status == 200, raw
            return json.loads(raw)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            first, second = pool.map(lambda args: ask(*args), [(a, "Hello from A"), (b, "Hello from B")])
        assert first["usage"]["completion_tokens"] == second["usage"]["completion_tokens"] == 8
        # Greedy and the same prompt through either process: the same answer, from the one model.
        assert (
            ask(a, "Name a fruit.")["choices"][0]["message"]
            == ask(b, "Name a fruit.")["choices"][0]["message"]
        )
        # Both logged in the one database.
        rows = a.query("SELECT COUNT(*) AS n FROM conversations_message WHERE role = 'assistant'")
        assert rows[0]["n"] >= 4
        # The web processes hold the tokenizer, not the weights (about 100 MB mapped in the worker).
        assert rss_mb(worker.pid) > rss_mb(a.process.pid) + 40
    finally:
        for server in (a, b):
            if server is not None:
                server.stop()
        stop_worker(worker)


# --- A worker that dies or loses a job's end: the web side never waits forever ---------------------


def story(model: Path) -> list[int]:
    return ids(model, "Tell me a very long story about the sea.")


@pytest.mark.slow  # worker processes
def test_a_job_whose_worker_dies_ends_with_the_text_so_far(
    redis_url,
    prefix,
    tmp_path,
    monkeypatch,
    paced,
) -> None:
    monkeypatch.setattr(worker_module, "WORKER_SILENCE", 3.0)
    model, env = paced
    process = start_worker(model, redis_url, prefix, tmp_path, CHAT_SLOTS="1", **env)
    try:

        async def scenario():
            client = new_client(redis_url, prefix)
            [job] = await client.submit_n(story(model), no_eos(max_tokens=2000), 1)
            texts: list[str] = []
            async for event in job.aevents():
                if isinstance(event, Delta):
                    texts.append(event.text)
                    if len(texts) == 5:
                        process.kill()  # kill -9 in the middle of the reply
                elif isinstance(event, Finished):
                    return event, texts

        finished, texts = run(asyncio.wait_for(scenario(), 60))
        assert finished.reason == "cancelled" and "has not answered" in finished.error
        assert finished.text == "".join(texts) and 5 <= finished.usage.completion_tokens < 2000
    finally:
        process.kill()
        process.wait(10)


@pytest.mark.slow  # worker processes
def test_alive_messages_keep_a_long_wait_going_and_a_lost_end_is_given_up(
    redis_url,
    prefix,
    tmp_path,
    monkeypatch,
    paced,
) -> None:
    monkeypatch.setattr(worker_module, "WORKER_SILENCE", 3.0)
    model, env = paced
    n_first = 250
    assert n_first * PACE_MS / 1000 >= 5  # the first job lasts longer than the silence allowed
    # The third job still runs in the worker when the test ends: stopping it need not wait for it.
    process = start_worker(model, redis_url, prefix, tmp_path, CHAT_SLOTS="1", CHAT_DRAIN_TIMEOUT="1", **env)
    try:

        async def scenario():
            client = new_client(redis_url, prefix)
            # One slot: the second job waits for the first (seconds, more than the silence allowed)
            # with no event of its own meanwhile: the worker's alive messages keep both going.
            [first] = await client.submit_n(story(model), no_eos(max_tokens=n_first), 1)
            [second] = await client.submit_n(story(model), no_eos(max_tokens=4), 1)
            ends = await asyncio.gather(*(asyncio.to_thread(job.wait, 120) for job in (first, second)))
            # A job the worker does not list any more as running lost its end on the way.
            [third] = await client.submit_n(story(model), no_eos(max_tokens=2000), 1)
            async for event in third.aevents():
                if isinstance(event, Delta):
                    break
            other_process = redis_layer(redis_url, prefix)  # as the worker would say it
            worker, seq, _ = client._owners[third.id]
            alive = {"type": "inference.alive", "worker": worker, "job_ids": [], "last_seq": seq}
            await other_process.send(client.reply_channel, alive)
            return ends, await asyncio.to_thread(third.wait, 30)

        (first, second), third = run(scenario())
        assert (first.reason, first.usage.completion_tokens) == ("length", n_first)
        assert (second.reason, second.usage.completion_tokens) == ("length", 4)
        assert second.timings.queue_wait > 3.0  # it did wait longer than the silence allowed
        assert third.reason == "cancelled" and "no longer has this job" in third.error
    finally:
        stop_worker(process)


@pytest.mark.slow  # worker processes
def test_the_worker_serves_its_own_metrics(redis_url, prefix, tmp_path, paced) -> None:
    """The queue of a multi-process deployment is the worker's: it serves its gauges itself, read
    at each scrape."""
    import urllib.request

    from tests.live_server import free_port

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return response.read().decode()

    port = free_port()
    model, env = paced
    process = start_worker(
        model, redis_url, prefix, tmp_path, CHAT_SLOTS="1", CHAT_WORKER_METRICS_PORT=str(port), **env
    )
    try:
        idle = scrape()
        assert "chatsite_slots 1.0" in idle and "chatsite_model_ready 1.0" in idle
        assert "chatsite_queue_depth 0.0" in idle and "chatsite_running_generations 0.0" in idle

        async def scenario() -> str:
            client = new_client(redis_url, prefix)
            jobs = [(await client.submit_n(story(model), no_eos(max_tokens=2000), 1))[0] for _ in range(2)]
            async for event in jobs[0].aevents():  # the first one runs; the second waits for the slot
                if isinstance(event, Delta):
                    break
            busy = await asyncio.to_thread(scrape)
            for job in jobs:
                job.cancel()
            await asyncio.gather(*(asyncio.to_thread(job.wait, 30) for job in jobs))
            return busy

        busy = run(scenario())
        assert "chatsite_running_generations 1.0" in busy and "chatsite_queue_depth 1.0" in busy
    finally:
        stop_worker(process)
