"""``{% load review_tags %}{% review_policy team %}``: the team's review policy, for its members' pages."""

from __future__ import annotations

from typing import Any

from django import template

from review.views import policy_context

register = template.Library()


@register.inclusion_tag("review/policy_snippet.html")
def review_policy(team: Any) -> dict[str, Any]:
    return policy_context(team)
