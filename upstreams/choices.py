"""The models a browser conversation can use: the embedded model and every upstream model the
conversation's team may use, each with its connections and their health (the settings' picker).

A conversation with no model of its own uses ``CHAT_DEFAULT_MODEL`` (else the embedded model); its
first reply records the model it used, so that the conversation keeps it (and the log says which).
"""

from __future__ import annotations

from dataclasses import dataclass

from upstreams import registry
from upstreams.permissions import allowed_models, default_model_id, embedded_model_id


@dataclass(frozen=True)
class Replica:
    name: str
    healthy: bool
    error: str = ""


@dataclass(frozen=True)
class ModelChoice:
    id: str
    replicas: tuple[Replica, ...] = ()  # none: the embedded model

    @property
    def embedded(self) -> bool:
        return not self.replicas

    @property
    def healthy(self) -> bool:
        return self.embedded or any(r.healthy for r in self.replicas)

    @property
    def label(self) -> str:
        if self.embedded:
            return f"{self.id} — embedded"
        where = ", ".join(f"{r.name} ({'healthy' if r.healthy else 'unhealthy'})" for r in self.replicas)
        return f"{self.id} — upstream {where}"


def model_for(conversation_model_id: str) -> str:
    """The model a conversation's replies use."""
    return conversation_model_id or default_model_id()


def choices(team_id: int) -> list[ModelChoice]:
    """The embedded model, then each upstream model (in connection order) the team may use.
    Synchronous: not on the event loop."""
    allowed = allowed_models(team_id)
    embedded = embedded_model_id()
    out = [ModelChoice(embedded)] if allowed is None or embedded in allowed else []
    pool = registry.pool()
    for model_id in pool.model_ids():
        if model_id == embedded or (allowed is not None and model_id not in allowed):
            continue
        replicas = tuple(Replica(c.name, c.healthy, c.error) for c in pool.replicas(model_id))
        out.append(ModelChoice(model_id, replicas))
    return out
