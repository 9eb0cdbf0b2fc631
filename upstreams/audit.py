"""The audit trail (review/services.py ``audit``) of model and connection changes: upstream
connections added, changed and removed, and a team's choice of models. An API key is never
written, only that it was set, replaced or removed."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from conversations.models import Team
from review.models import AuditEntry
from upstreams.models import Upstream

SECRET_FIELDS = {"api_key": "API key replaced", "clear_api_key": "API key removed"}


def _audit(by: AbstractBaseUser | None, action: str, **kwargs: Any) -> AuditEntry:
    from review.services import audit

    return audit(by, action, **kwargs)


def _models(models: list[str]) -> str:
    return ", ".join(models) or "(none)"


def upstream_added(upstream: Upstream, by: AbstractBaseUser | None) -> AuditEntry:
    detail = (
        f"{upstream.base_url}; models {_models(list(upstream.listed_models or []))}; "
        f"{'enabled' if upstream.enabled else 'disabled'}; max_concurrent {upstream.max_concurrent}, "
        f"queue_max {upstream.queue_max}; API key {'set' if upstream.has_api_key else 'none'}"
    )
    return _audit(
        by, AuditEntry.Action.UPSTREAM_ADDED, object_repr=f"upstream {upstream.name}", detail=detail
    )


def upstream_changed(
    upstream: Upstream, by: AbstractBaseUser | None, changed: list[str], before: dict[str, Any]
) -> AuditEntry | None:
    """``changed``: the form's changed fields; ``before``: their values before (secrets left out)."""
    parts = []
    for name in changed:
        if name in SECRET_FIELDS:
            parts.append(SECRET_FIELDS[name])
            continue
        old, new = before.get(name), getattr(upstream, name, None)
        if name == "listed_models":
            old, new = _models(list(old or [])), _models(list(new or []))
        if old != new:
            parts.append(f"{name}: {old} → {new}")
    if not parts:
        return None
    return _audit(
        by,
        AuditEntry.Action.UPSTREAM_CHANGED,
        object_repr=f"upstream {upstream.name}",
        detail="; ".join(parts),
    )


def upstream_removed(upstream: Upstream, by: AbstractBaseUser | None) -> AuditEntry:
    detail = f"{upstream.base_url}; served {_models(upstream.model_ids)}"
    return _audit(
        by, AuditEntry.Action.UPSTREAM_REMOVED, object_repr=f"upstream {upstream.name}", detail=detail
    )


def team_models(team: Team, by: AbstractBaseUser | None, models: list[str] | None) -> AuditEntry:
    """``models``: the team's choice now, or None when it may use every model again."""
    detail = "may use every model" if models is None else f"may use only: {_models(models)}"
    return _audit(
        by, AuditEntry.Action.TEAM_MODELS, team=team, object_repr=f"models of {team}", detail=detail
    )
