"""A real inference worker (`manage.py inferenceworker`) for a test, and the web side's end of it:
``WorkerClient`` on its own Redis layer connection, as a web process would have. The tiny model's
path is the ``tiny`` fixture (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from channels_redis.core import RedisChannelLayer

from inference.gguf import read_gguf
from inference.remote.client import WorkerClient
from inference.sampling import SamplingParams
from inference.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
# Seconds a killed worker's lock outlives it (10 in production): a worker started after one was
# killed waits this long; long enough that a live worker's refresh (every third) is never late.
WORKER_LOCK_TTL = "3"


def start_worker(tiny: Path, url: str, prefix: str, tmp_path: Path, **env: str) -> subprocess.Popen:
    child = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_") and k != "DATABASE_URL"}
    child.update(
        {
            "REDIS_URL": url,
            "CHAT_CHANNEL_PREFIX": prefix,
            "CHAT_MODEL_PATH": str(tiny),
            "CHAT_DATA_DIR": str(tmp_path),
            "CHAT_THREADS": "1",  # the tiny model needs no more; see tests/live_server.py
            "CHAT_WORKER_LOCK_TTL": WORKER_LOCK_TTL,
            **env,
        }
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "worker.log"
    with log.open("w") as out:  # a file, not a pipe: nobody reads a pipe, and a full one blocks
        process = subprocess.Popen(
            [sys.executable, "manage.py", "inferenceworker"], cwd=ROOT, env=child, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if "inference worker:" in log.read_text():
            return process
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise AssertionError("the worker did not start:\n" + log.read_text())


def stop_worker(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(30)


def redis_layer(url: str, prefix: str) -> RedisChannelLayer:
    # As the settings configure it (a socket timeout longer than channels_redis's 5 s blocking read).
    return RedisChannelLayer(hosts=[{"address": url, "socket_timeout": 15}], prefix=prefix)


def ids(tiny: Path, text: str) -> list[int]:
    return Tokenizer.from_gguf(read_gguf(tiny)).encode(
        f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    )


def no_eos(**kwargs) -> SamplingParams:
    return SamplingParams(temperature=0, logit_bias={0: -100, 1: -100, 2: -100}, **kwargs)


_clients: list[WorkerClient] = []


def new_client(url: str, prefix: str) -> WorkerClient:
    """A web process's client; ``run`` closes it at the end (as a web process would at exit)."""
    client = WorkerClient(redis_layer(url, prefix))
    _clients.append(client)
    return client


def run(coro):
    async def main():
        try:
            return await coro
        finally:
            while _clients:
                await _clients.pop().aclose()

    return asyncio.run(main())
