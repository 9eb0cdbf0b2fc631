"""The /v1 side of the limits (review/limits.py): reserve before any work, 429 in OpenAI's shape,
and the ``x-ratelimit-*`` headers on the answer."""

from __future__ import annotations

from channels.db import database_sync_to_async
from django.http import HttpResponseBase

from conversations.api.protocol import RateLimited, ServiceUnavailable
from conversations.models import ApiKey
from review import limits


def reserve_now(key: ApiKey, tokens: int) -> limits.Reservation:
    """Take one request and ``tokens`` (prompt + max_tokens × n) from the key's team, user, member
    and key limits, or answer 429 (``type`` "requests" or "tokens") with ``Retry-After``. Synchronous:
    called in a thread that has more to do in the same trip."""
    # A key read by ``authenticate_api_key`` says whether any limit applies: none (most keys) means
    # nothing to read or take. A key from elsewhere has not said: its limits are read.
    applying = [] if getattr(key, "limits_apply", True) is False else None
    try:
        return limits.reserve(
            team_id=key.team_id, user_id=key.user_id, key_id=key.pk, tokens=tokens, applying=applying
        )
    except limits.LimitReached as exc:
        error = RateLimited(str(exc), headers={"Retry-After": str(exc.retry_after), **exc.headers})
        error.type = exc.rule.kind  # OpenAI's "requests" or "tokens"
        raise error from None
    except limits.LimitsUnavailable:
        raise ServiceUnavailable(
            "The usage limits cannot be checked right now. Please retry after a short wait.",
            code="limits_unavailable",
            headers={"Retry-After": "5"},
        ) from None


async def refund(reservation: limits.Reservation) -> None:
    await database_sync_to_async(reservation.refund, thread_sensitive=False)()


def with_headers(response: HttpResponseBase, reservation: limits.Reservation) -> HttpResponseBase:
    for name, value in reservation.headers.items():
        response[name] = value
    return response
