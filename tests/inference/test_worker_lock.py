"""One inference worker per channel prefix: a second one on the same Redis prefix refuses to start
(two readers of one submit channel could run a submit twice), and a dead worker's lock expires."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from inference.remote.lock import WorkerAlreadyRunning, WorkerLock
from tests.worker_process import ROOT, WORKER_LOCK_TTL, start_worker, stop_worker


@pytest.mark.slow  # worker processes
def test_it_refuses_a_second_worker_on_the_same_prefix(tiny, redis_url, prefix, tmp_path) -> None:
    first = start_worker(tiny, redis_url, prefix, tmp_path / "first")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_") and k != "DATABASE_URL"}
        env.update(
            REDIS_URL=redis_url,
            CHAT_CHANNEL_PREFIX=prefix,
            CHAT_MODEL_PATH=str(tiny),
            CHAT_DATA_DIR=str(tmp_path / "second"),
            CHAT_THREADS="1",
            CHAT_WORKER_LOCK_TTL=WORKER_LOCK_TTL,  # the wait for the first one's lock
        )
        Path(env["CHAT_DATA_DIR"]).mkdir()
        second = subprocess.Popen(
            [sys.executable, "manage.py", "inferenceworker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = second.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            second.kill()
            second.communicate()
            raise AssertionError("a second worker on the same prefix kept running") from None
        assert second.returncode != 0
        assert "another inference worker" in err and prefix in err and "CHAT_CHANNEL_PREFIX" in err
        assert "inference worker:" not in out  # it did not load the model
        assert first.poll() is None  # the first one serves on
    finally:
        stop_worker(first)


def test_it_takes_over_the_lock_of_a_worker_that_died(redis_url) -> None:
    key_prefix = f"test{uuid.uuid4().hex[:8]}"
    dead = WorkerLock(redis_url, key_prefix, "dead", ttl=1.0)
    dead.acquire()
    dead._stop.set()  # it stops refreshing, as a killed process would
    dead._thread.join()
    with pytest.raises(WorkerAlreadyRunning):
        WorkerLock(redis_url, key_prefix, "early", ttl=1.0).acquire(wait=0)
    heir = WorkerLock(redis_url, key_prefix, "heir", ttl=1.0)
    heir.acquire(wait=5)  # waits until the dead one's key expires
    assert heir.redis.get(heir.key) == b"heir"
    heir.release()
    assert heir_free(redis_url, key_prefix)


def heir_free(url: str, key_prefix: str) -> bool:
    successor = WorkerLock(url, key_prefix, "next")
    successor.acquire(wait=0)  # released: free at once
    successor.release()
    return True
