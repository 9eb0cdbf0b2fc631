"""The core budget: the sum of threads in all concurrent evaluations never exceeds the cores.

ggml collapses when oversubscribed (2 slots x 2 threads on 2 cores measured 0.3-0.8 tok/s in
total), so every ``eval`` call first takes its threads from here and gives them back after. A slot
running alone gets every core; with several active slots each gets an equal share (at least 1).
"""

from __future__ import annotations

import threading


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
