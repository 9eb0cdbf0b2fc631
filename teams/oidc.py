"""Single sign-on with OpenID Connect (mozilla-django-oidc), off unless CHAT_OIDC_ISSUER is set.

The authorization code flow with PKCE and a nonce. The provider's endpoints come from its discovery
document (``<issuer>/.well-known/openid-configuration``, fetched once per process when the first
sign-in starts), unless set one by one in the environment. On top of the library:

- the id_token's issuer, audience and expiry are checked (the library checks only the signature
  and the nonce);
- an account is found by the provider's subject (``iss`` + ``sub``, kept in ``SsoIdentity``),
  never by e-mail or username, which the provider may let people choose: a first sign-in makes a
  new account (without a password), even if a local account has the same name or address;
- with ``CHAT_OIDC_TEAMS_CLAIM`` set, the claim's team names (existing teams only) make the user
  a member at each sign-in, and a team the claim stops naming is left, but only memberships that
  single sign-on made (``SsoGrant``): invites, the admin and ``addmember`` are never undone;
- a provider that cannot be reached, a bad token or a replayed callback sends the person back to
  the login page with a message, never a 500.

Password login stays the default; the login page offers single sign-on beside it.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from conversations.models import Membership, Team
from review import services as review_services
from teams.models import SsoGrant, SsoIdentity

log = logging.getLogger(__name__)

# The endpoint settings, and the discovery document's name for each.
ENDPOINTS = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
}


class ProviderUnavailable(Exception):
    pass


_discovered: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()


def discovery(issuer: str) -> dict[str, Any]:
    """The provider's discovery document (cached per process once fetched and checked)."""
    with _lock:
        if issuer in _discovered:
            return _discovered[issuer]
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderUnavailable(f"{url}: {exc}") from None
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise ProviderUnavailable(f"{url} names another issuer: {document.get('issuer')!r}")
    with _lock:
        _discovered[issuer] = document
    return document


def forget_discovery() -> None:
    with _lock:
        _discovered.clear()


def setting(name: str, *default: Any) -> Any:
    """A mozilla-django-oidc setting; a missing endpoint comes from the discovery document."""
    if name in ENDPOINTS and not getattr(settings, name, None):
        found = discovery(settings.CHAT_OIDC_ISSUER).get(ENDPOINTS[name])
        if found:
            return found
        if default:
            return default[0]
        raise ProviderUnavailable(f"the provider's discovery document has no {ENDPOINTS[name]}")
    return import_from_settings(name, *default)


def _problem(request: HttpRequest, detail: str) -> HttpResponse:
    context = {"title": "Single sign-on is unavailable", "advice": detail}
    return render(request, "teams/invite_problem.html", context, status=503)


class AuthenticationRequestView(OIDCAuthenticationRequestView):
    """Sends the browser to the provider (404 while single sign-on is off)."""

    get_settings = staticmethod(setting)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.unavailable = ""
        if not settings.CHAT_OIDC:
            return
        try:
            super().__init__(*args, **kwargs)
        except ProviderUnavailable as exc:
            log.error("Single sign-on: the provider cannot be reached: %s", exc)
            self.unavailable = (
                "The sign-on provider cannot be reached just now: try again later, "
                "or log in with your password."
            )

    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.CHAT_OIDC:
            raise Http404("Single sign-on is off")
        if self.unavailable:
            return _problem(request, self.unavailable)
        return super().get(request)


class CallbackView(OIDCAuthenticationCallbackView):
    """The provider sends the browser back here; a failure goes to the login page, which says so."""

    get_settings = staticmethod(setting)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.CHAT_OIDC:
            raise Http404("Single sign-on is off")
        try:
            return super().get(request)
        except SuspiciousOperation as exc:  # a callback whose state this session never started
            log.warning("Single sign-on callback refused: %s", exc)
            return self.login_failure()


def _username_for(claims: dict[str, Any]) -> str:
    """A free username from the claims: preferred_username, the e-mail's local part, or the subject."""
    User = get_user_model()
    candidates = [claims.get("preferred_username"), str(claims.get("email") or "").partition("@")[0]]
    base = next((c for c in candidates if isinstance(c, str) and c.strip()), f"sso-{claims['sub']}")
    base = re.sub(r"[^\w.@+-]", "", base)[:140] or "sso-user"
    name, n = base, 1
    while User._default_manager.filter(**{f"{User.USERNAME_FIELD}__iexact": name}).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _team_names(value: Any) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {part.strip() for part in re.split(r"[,\s]+", value) if part.strip()}
    if isinstance(value, list | tuple):
        return {str(part).strip() for part in value if str(part).strip()}
    return None


def sync_teams(user: AbstractBaseUser, claims: dict[str, Any]) -> None:
    """Follow CHAT_OIDC_TEAMS_CLAIM: join the named teams that exist; leave the teams no longer
    named, but only where single sign-on made the membership. A claim that is absent changes nothing."""
    claim = settings.CHAT_OIDC_TEAMS_CLAIM
    if not claim:
        return
    names = _team_names(claims.get(claim))
    if names is None:
        log.warning("Single sign-on: no %r claim for %s: teams left as they are", claim, user.get_username())
        return
    via = f"single sign-on, claim {claim!r}"
    for team in Team.objects.filter(name__in=names):
        if not Membership.objects.filter(team=team, user=user).exists():
            membership = review_services.add_member(team, user, Membership.Role.MEMBER, by=user, via=via)
            SsoGrant.objects.create(membership=membership)
    stale = SsoGrant.objects.filter(membership__user=user).exclude(membership__team__name__in=names)
    for grant in stale.select_related("membership__team", "membership__user"):
        review_services.remove_member(grant.membership, by=user, via=via)


class Backend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend, matching accounts by subject (see the module's docstring)."""

    get_settings = staticmethod(setting)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Django makes a backend for every authenticate() call, password logins included: nothing
        # here may reach the provider. The endpoints are looked up when a callback arrives.
        self.UserModel = get_user_model()

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> AbstractBaseUser | None:
        # Only the callback view passes a nonce; a password login never gets here.
        if not settings.CHAT_OIDC or request is None or "nonce" not in kwargs:
            return None
        try:
            self.OIDC_OP_TOKEN_ENDPOINT = setting("OIDC_OP_TOKEN_ENDPOINT")
            self.OIDC_OP_USER_ENDPOINT = setting("OIDC_OP_USER_ENDPOINT", None)
            self.OIDC_OP_JWKS_ENDPOINT = setting("OIDC_OP_JWKS_ENDPOINT")
            self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
            self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
            self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
            self.OIDC_RP_IDP_SIGN_KEY = None
            return super().authenticate(request, **kwargs)
        except (
            ProviderUnavailable,
            requests.RequestException,
            SuspiciousOperation,
            jwt.PyJWTError,
            ValueError,
            KeyError,
        ) as exc:
            log.warning("Single sign-on failed: %s: %s", type(exc).__name__, exc)
            return None

    def get_user(self, user_id: int) -> AbstractBaseUser | None:
        return ModelBackend.get_user(self, user_id)  # refuses inactive users, as for passwords

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        payload = super().verify_token(token, **kwargs)
        if payload.get("iss") != settings.CHAT_OIDC_ISSUER:
            raise SuspiciousOperation(f"id_token from another issuer: {payload.get('iss')!r}")
        audience = payload.get("aud")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        if settings.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation(f"id_token for another client: {audience!r}")
        if "exp" not in payload:  # PyJWT checks exp when present
            raise SuspiciousOperation("id_token without an expiry")
        return payload

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The id_token's claims, with the userinfo endpoint's (when the provider has one) on top:
        the teams claim may be in either."""
        claims = dict(payload)
        if self.OIDC_OP_USER_ENDPOINT:
            info = super().get_userinfo(access_token, id_token, payload)
            if info.get("sub") != payload.get("sub"):
                raise SuspiciousOperation("userinfo is about another subject")
            claims.update(info)
        return claims

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return isinstance(claims.get("sub"), str) and bool(claims["sub"])

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        return self.UserModel._default_manager.filter(
            sso_identities__issuer=settings.CHAT_OIDC_ISSUER, sso_identities__subject=claims["sub"]
        )

    def describe_user_by_claims(self, claims: dict[str, Any]) -> str:
        return f"subject {claims.get('sub')!r}"

    def create_user(self, claims: dict[str, Any]) -> AbstractBaseUser:
        email = claims.get("email") if claims.get("email_verified", True) is True else ""
        with transaction.atomic():
            user = self.UserModel._default_manager.create_user(_username_for(claims), email=email or "")
            user.set_unusable_password()
            user.save(update_fields=["password"])
            SsoIdentity.objects.create(
                user=user, issuer=settings.CHAT_OIDC_ISSUER, subject=claims["sub"], last_login=timezone.now()
            )
            sync_teams(user, claims)
        return user

    def update_user(self, user: AbstractBaseUser, claims: dict[str, Any]) -> AbstractBaseUser:
        with transaction.atomic():
            SsoIdentity.objects.filter(
                user=user, issuer=settings.CHAT_OIDC_ISSUER, subject=claims["sub"]
            ).update(last_login=timezone.now())
            sync_teams(user, claims)
        return user
