"""The upstream connections of a process, and which of them serve each model id.

Two connections that serve the same model id are replicas: a call goes to the least busy healthy
one. One that cannot be reached or answers 5xx before the first token is marked unhealthy (and
re-checked in the background) and the call is tried once more on another replica. Once a token
has been read, a call is never sent again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from inference.upstream.connection import Connection, Opened, UpstreamConfig
from inference.upstream.errors import UpstreamUnavailable

log = logging.getLogger(__name__)

ATTEMPTS = 2  # the first replica, and one other


class Pool:
    def __init__(self) -> None:
        self.connections: dict[str, Connection] = {}

    def configure(self, configs: Iterable[UpstreamConfig]) -> None:
        """Adopt the current settings. A connection whose settings are unchanged keeps its state
        (slots, queue, health); a changed one starts afresh (its running calls finish on the old one)."""
        current: dict[str, Connection] = {}
        for config in configs:
            if not config.enabled:
                continue
            existing = self.connections.get(config.name)
            if existing is not None and existing.config == config:
                current[config.name] = existing
            else:
                current[config.name] = Connection(config)
        self.connections = current

    def serves(self, connection: Connection) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*connection.config.models, *connection.discovered)))

    def model_ids(self) -> list[str]:
        """Every model id some enabled connection serves, in connection order."""
        ids: dict[str, None] = {}
        for connection in self.connections.values():
            ids.update(dict.fromkeys(self.serves(connection)))
        return list(ids)

    def replicas(self, model_id: str) -> list[Connection]:
        return [c for c in self.connections.values() if model_id in self.serves(c)]

    def pick(self, model_id: str, exclude: set[str] = frozenset()) -> Connection | None:  # type: ignore[assignment]
        """The least busy healthy replica (an unhealthy one only when no healthy one is left)."""
        candidates = [c for c in self.replicas(model_id) if c.name not in exclude]
        if not candidates:
            return None
        healthy = [c for c in candidates if c.healthy] or candidates
        return min(healthy, key=lambda c: (c.load(), c.in_flight))

    async def open(
        self,
        model_id: str,
        body: dict[str, Any],
        *,
        stream: bool,
        first: Connection | None = None,
        sent: Callable[[], None] | None = None,
    ) -> Opened:
        """Open a call on a replica of ``model_id`` (``first``: the one ``pick`` chose already),
        trying one other replica if the first cannot be reached or fails before its first token.
        See ``Connection.open`` for what it raises, and for ``sent``."""
        tried: set[str] = set()
        error: UpstreamUnavailable | None = None
        for attempt in range(ATTEMPTS):
            connection = first if attempt == 0 and first is not None else self.pick(model_id, tried)
            if connection is None:
                break
            tried.add(connection.name)
            try:
                return await connection.open(body, stream=stream, sent=sent)
            except UpstreamUnavailable as exc:
                log.warning("upstream %s failed before the first token: %s", connection.name, exc)
                connection.mark_unhealthy(str(exc))
                error = exc
        if error is None:
            error = UpstreamUnavailable(f"no upstream serves the model '{model_id}'")
        raise error

    async def aclose(self) -> None:
        for connection in self.connections.values():
            await connection.aclose()
