"""The core budget: the sum of threads in all concurrent evaluations never exceeds the cores.

ggml collapses when oversubscribed (2 slots x 2 threads on 2 cores measured 0.3-0.8 tok/s in
total), so every ``eval`` call first takes its threads from here and gives them back after. A slot
running alone gets every core; with several active slots each gets an equal share (at least 1).
"""

from __future__ import annotations

import os
import sys
import threading


def lower_this_threads_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (at most 19; Linux only).

    Linux schedules each thread on its own, and a thread starts with its creator's nice value: the
    threads ggml starts for every evaluation (ctransformers makes them per call) inherit the slot
    thread's. With the model's threads below the rest of the process, the event loop and a reply's
    database writes run at once when they wake instead of waiting for a core. Measured on 2 cores
    (2026-12-07, bench/ttft.py and bench/ws.py): at nice 5 a reply's first websocket frame left
    ~1 ms after its broadcast instead of ~3 ms, but each wake-up then takes a core from one of
    ggml's two threads while the other spins at its barrier, and decode watched by one websocket
    viewer fell from 1.04-1.05x to 0.89-0.94x the raw loop. Hence ``CHAT_MODEL_NICE`` is 0 by
    default. Beside other busy processes at nice 0, a niced model also gets a smaller share.
    """
    if nice <= 0 or sys.platform != "linux":
        return
    tid = threading.get_native_id()  # (PRIO_PROCESS with a thread id: that thread only, on Linux)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:  # a sandbox may refuse it: the model then runs at the process's priority
        pass


class CoreBudget:
    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("the core budget needs at least one thread")
        self.total = total
        self._free = total
        self._active = 0
        self._cond = threading.Condition()
        self.peak = 0  # the most threads ever in use at once (tests assert it never exceeds total)

    def activate(self) -> None:
        with self._cond:
            self._active += 1

    def deactivate(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    @property
    def in_use(self) -> int:
        return self.total - self._free

    def share(self) -> int:
        return max(1, self.total // max(1, self._active))

    def acquire(self) -> int:
        with self._cond:
            while self._free == 0:
                self._cond.wait()
            k = min(self._free, self.share())
            self._free -= k
            self.peak = max(self.peak, self.total - self._free)
            return k

    def release(self, k: int) -> None:
        with self._cond:
            self._free += k
            self._cond.notify_all()
