"""One inference worker per channel prefix: a Redis key with a time to live, which the worker
holds while it runs and refreshes every third of its time to live.

Two workers reading one submit channel would each take submits, and channels_redis hands a message
that one reader has taken but not finished to the other again, so a submit could run twice. A
second ``inferenceworker`` on the same ``CHAT_CHANNEL_PREFIX`` therefore waits up to the time to
live (``CHAT_WORKER_LOCK_TTL``, ``LOCK_TTL`` by default) for the key (a worker killed with -9 stops
refreshing it, and it expires), then refuses to start.
"""

from __future__ import annotations

import threading

import redis

LOCK_TTL = 10.0  # seconds a dead worker's key outlives it
RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
REFRESH = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)


class WorkerAlreadyRunning(Exception):
    pass


class WorkerLock:
    def __init__(self, redis_url: str, prefix: str, owner: str, ttl: float = LOCK_TTL) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.key = f"{prefix}:inference-worker"
        self.owner = owner
        self.ttl_ms = int(ttl * 1000)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait: float | None = None) -> None:
        """Take the key (waiting up to ``wait`` s, the TTL by default, for a dead worker's key to
        expire) and keep refreshing it; ``WorkerAlreadyRunning`` if another worker holds it."""
        deadline_ms = self.ttl_ms if wait is None else int(wait * 1000)
        waited = 0
        while not self.redis.set(self.key, self.owner, nx=True, px=self.ttl_ms):
            if waited >= deadline_ms:
                holder = self.redis.get(self.key) or b"?"
                shown = holder.decode() if isinstance(holder, bytes) else str(holder)
                raise WorkerAlreadyRunning(
                    f"another inference worker ({shown}) serves the channel prefix "
                    f"{self.key.rsplit(':', 1)[0]!r} on this Redis: one worker per CHAT_CHANNEL_PREFIX. "
                    "Stop it first, or give this one's web processes another prefix."
                )
            if self._stop.wait(0.2):
                return
            waited += 200
        self._thread = threading.Thread(target=self._refresh_loop, name="worker-lock", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self.redis.eval(REFRESH, 1, self.key, self.owner, self.ttl_ms):
                    # Lost (Redis restarted or flushed): take it again if free.
                    self.redis.set(self.key, self.owner, nx=True, px=self.ttl_ms)
            except redis.RedisError:
                pass  # Redis unreachable: the channel layer fails too; try again next time

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.redis.eval(RELEASE, 1, self.key, self.owner)
        finally:
            self.redis.close()
