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
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q

from review.models import LimitCounter

_TABLE = LimitCounter._meta.db_table


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
        ``Refused`` (the first item without room and its current value) and adds nothing.

        Raw SQL, in few round trips (it runs for every limited request): lock the rows (``FOR
        UPDATE`` in one order on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` holds the write lock
        already), make the missing ones, check, then one UPDATE for all."""
        if not items:
            return []
        table, key, window, used = (connection.ops.quote_name(n) for n in (_TABLE, "key", "window", "used"))
        match = " OR ".join([f"({key} = %s AND {window} = %s)"] * len(items))
        params = [v for item in items for v in (item.counter, item.window)]
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        select = f"SELECT {key}, {window}, {used} FROM {table} WHERE {match} ORDER BY {key}, {window}{lock}"
        with transaction.atomic(), connection.cursor() as cursor:
            _relax(cursor)
            cursor.execute(select, params)
            current = {(k, int(w)): int(u) for k, w, u in cursor.fetchall()}
            if len(current) < len(items):
                cursor.execute(
                    f"INSERT INTO {table} ({key}, {window}, {used}) VALUES "
                    + ", ".join(["(%s, %s, 0)"] * len(items))
                    + f" ON CONFLICT ({key}, {window}) DO NOTHING",
                    params,
                )
                cursor.execute(select, params)
                current = {(k, int(w)): int(u) for k, w, u in cursor.fetchall()}
            for i, item in enumerate(items):
                if current[(item.counter, item.window)] + item.amount > item.limit:
                    raise Refused(i, current[(item.counter, item.window)])
            values = " UNION ALL ".join(
                ["SELECT CAST(%s AS VARCHAR(80)) AS k, CAST(%s AS BIGINT) AS w, CAST(%s AS BIGINT) AS a"]
                * len(items)
            )
            cursor.execute(
                f"UPDATE {table} SET {used} = {table}.{used} + v.a FROM ({values}) AS v "
                f"WHERE {table}.{key} = v.k AND {table}.{window} = v.w",
                [v for item in items for v in (item.counter, item.window, item.amount)],
            )
        return [current[(item.counter, item.window)] + item.amount for item in items]

    def add(self, items: Sequence[Item]) -> None:
        """Add (or, with a negative amount, give back) without any check: settling a reservation.
        One statement (an upsert), atomic on its own."""
        items = sorted((i for i in items if i.amount), key=lambda i: (i.counter, i.window))
        if not items:
            return
        table, key, window, used = (connection.ops.quote_name(n) for n in (_TABLE, "key", "window", "used"))
        with transaction.atomic(), connection.cursor() as cursor:
            _relax(cursor)
            cursor.execute(
                f"INSERT INTO {table} ({key}, {window}, {used}) VALUES "
                + ", ".join(["(%s, %s, %s)"] * len(items))
                + f" ON CONFLICT ({key}, {window}) DO UPDATE SET {used} = {table}.{used} + excluded.{used}",
                [v for item in items for v in (item.counter, item.window, item.amount)],
            )

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


def _relax(cursor: Any) -> None:
    """On PostgreSQL, the counter's commit does not wait for the WAL flush: a crash may lose the
    last few milliseconds of counting (in the users' favour), never the data of a conversation."""
    if connection.vendor == "postgresql":
        cursor.execute("SET LOCAL synchronous_commit TO OFF")


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
