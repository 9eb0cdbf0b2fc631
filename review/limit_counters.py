"""The counters behind the limits (review/limits.py): Redis when REDIS_URL is set, else the database.

A counter is named by its scope and kind (``req:team-3``, ``tok:key-9``) and lives for one window
(a minute for requests, a UTC day for tokens). ``take`` checks every counter of a request and adds
to all of them, or to none, in one atomic step, so two processes can never both take the last unit:
- Redis: one Lua script (GET each, compare, INCRBY each with an expiry), atomic in Redis;
- database: one transaction that locks the counters' rows (``select_for_update``; SQLite's
  ``BEGIN IMMEDIATE`` serializes writers) and adds with ``F()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q

from review.models import LimitCounter


@dataclass(frozen=True)
class Item:
    counter: str  # "req:team-3"
    window: int  # the window's start (epoch seconds)
    amount: int
    limit: int = 0  # for take
    ttl: int = 0  # seconds the counter must outlive its window's start (Redis expiry)


class Refused(Exception):
    def __init__(self, index: int, used: int) -> None:
        super().__init__(index, used)
        self.index, self.used = index, used


class DatabaseCounters:
    name = "database"

    def take(self, items: Sequence[Item]) -> list[int]:
        """Add every item's amount if each stays within its limit; the counters' new values. Raises
        ``Refused`` (the first item without room and its current value) and adds nothing."""
        if not items:
            return []
        with transaction.atomic():
            rows = self._locked(items, create=True)
            for i, item in enumerate(items):
                used = rows[(item.counter, item.window)].used
                if used + item.amount > item.limit:
                    raise Refused(i, used)
            return self._add(items, rows)

    def add(self, items: Sequence[Item]) -> None:
        """Add (or, with a negative amount, give back) without any check: settling a reservation."""
        items = [i for i in items if i.amount]
        if not items:
            return
        with transaction.atomic():
            self._add(items, self._locked(items, create=True))

    def read(self, items: Sequence[Item]) -> list[int]:
        if not items:
            return []
        found = {(r.key, r.window): r.used for r in LimitCounter.objects.filter(_match(items))}
        return [found.get((i.counter, i.window), 0) for i in items]

    def set(self, item: Item) -> None:
        LimitCounter.objects.update_or_create(
            key=item.counter, window=item.window, defaults={"used": item.amount}
        )

    def forget_before(self, window: int) -> int:
        return LimitCounter.objects.filter(window__lt=window).delete()[0]

    @staticmethod
    def _locked(items: Sequence[Item], *, create: bool) -> dict[tuple[str, int], LimitCounter]:
        # Rows in one order (key, window) in every transaction: two never wait for each other.
        query = LimitCounter.objects.select_for_update().filter(_match(items)).order_by("key", "window")
        rows = {(r.key, r.window): r for r in query}
        if create and len(rows) < len({(i.counter, i.window) for i in items}):
            LimitCounter.objects.bulk_create(
                [
                    LimitCounter(key=i.counter, window=i.window, used=0)
                    for i in items
                    if (i.counter, i.window) not in rows
                ],
                ignore_conflicts=True,  # another process made it meanwhile: lock that one
            )
            rows = {(r.key, r.window): r for r in query.all()}
        return rows

    @staticmethod
    def _add(items: Sequence[Item], rows: dict[tuple[str, int], LimitCounter]) -> list[int]:
        out = []
        for item in items:
            row = rows[(item.counter, item.window)]
            LimitCounter.objects.filter(pk=row.pk).update(used=F("used") + item.amount)
            row.used += item.amount  # exact: the row is locked until the commit
            out.append(row.used)
        return out


def _match(items: Sequence[Item]) -> Q:
    q = Q()
    for item in items:
        q |= Q(key=item.counter, window=item.window)
    return q


# KEYS: the counters; ARGV: limit, amount and expiry of each, in order. Checks all, then adds to all.
TAKE = """
local used = {}
for i = 1, #KEYS do
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  if current + tonumber(ARGV[3 * i - 1]) > tonumber(ARGV[3 * i - 2]) then
    return {0, i, current}
  end
end
local out = {1}
for i = 1, #KEYS do
  out[#out + 1] = redis.call('INCRBY', KEYS[i], ARGV[3 * i - 1])
  redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
end
return out
"""

# KEYS: the counters; ARGV: amount and expiry of each. Adds without a check (settling).
ADD = """
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  redis.call('EXPIRE', KEYS[i], ARGV[2 * i])
end
return 1
"""


class RedisCounters:
    name = "redis"

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5)
        self.prefix = prefix
        self._take = self.client.register_script(TAKE)
        self._add = self.client.register_script(ADD)

    def key(self, item: Item) -> str:
        return f"{self.prefix}:limit:{item.counter}:{item.window}"

    def take(self, items: Sequence[Item]) -> list[int]:
        if not items:
            return []
        args: list[int] = []
        for item in items:
            args += [item.limit, item.amount, item.ttl]
        result = self._take(keys=[self.key(i) for i in items], args=args)
        if int(result[0]) == 0:
            raise Refused(int(result[1]) - 1, int(result[2]))
        return [int(v) for v in result[1:]]

    def add(self, items: Sequence[Item]) -> None:
        items = [i for i in items if i.amount]
        if items:
            args: list[int] = []
            for item in items:
                args += [item.amount, item.ttl]
            self._add(keys=[self.key(i) for i in items], args=args)

    def read(self, items: Sequence[Item]) -> list[int]:
        if not items:
            return []
        return [int(v or 0) for v in self.client.mget([self.key(i) for i in items])]

    def set(self, item: Item) -> None:
        self.client.set(self.key(item), item.amount, ex=item.ttl)

    def forget_before(self, window: int) -> int:
        return 0  # Redis expires the counters itself


@cache
def counters() -> DatabaseCounters | RedisCounters:
    """This process's counters (the choice follows REDIS_URL)."""
    if settings.REDIS_URL:
        return RedisCounters(settings.REDIS_URL, f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}")
    return DatabaseCounters()
