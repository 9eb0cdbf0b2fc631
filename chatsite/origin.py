"""The websocket's Origin check: a handshake is let through only from the site's own origin.

The site's origin is the connection's scheme (``ws`` → ``http``, ``wss`` → ``https``; behind a TLS
proxy, ``SECURE_PROXY_SSL_HEADER`` as Django reads it for HTTP) with the Host header's host and port,
the Host being one of ``ALLOWED_HOSTS``. An origin of ``CSRF_TRUSTED_ORIGINS`` is also let through
(with Django's ``https://*.example.com`` wildcard). Everything else is compared exactly, scheme,
host and port (a missing port is the scheme's default); a missing or malformed Origin is refused.
Channels' ``AllowedHostsOriginValidator`` compared the host only, so any port and scheme passed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]  # scheme, host, port


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` as (scheme, host, port), lower-cased; None for anything else."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in DEFAULT_PORTS or not host or parts.path or parts.query or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    return scheme, host.lower(), port if port is not None else DEFAULT_PORTS[scheme]


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    values = [v for k, v in scope.get("headers", []) if k.lower() == name]
    if len(values) != 1:  # missing, or sent twice: ambiguous
        return None
    try:
        return values[0].decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover (latin-1 decodes any byte)
        return None


def site_scheme(scope: dict[str, Any]) -> str:
    """``http`` or ``https``, as Django would say for an HTTP request on this connection."""
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        header, secure_value = proxy
        name = header.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        forwarded = _header(scope, name)
        if forwarded is not None:
            # As Django: the first value of a comma-separated list is the client's.
            return "https" if forwarded.split(",", 1)[0].strip() == secure_value else "http"
    return "https" if scope.get("scheme") in ("wss", "https") else "http"


def allowed_hosts() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:  # Django's own default for HTTP
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


def site_origin(scope: dict[str, Any]) -> Origin | None:
    """This site's origin for the connection, from the Host header (None when it is not allowed)."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, allowed_hosts()):
        return None
    return parse_origin(f"{site_scheme(scope)}://{host}")


def trusted(origin: Origin) -> bool:
    """Is ``origin`` one of CSRF_TRUSTED_ORIGINS (``*.`` wildcards as Django's CSRF check has them)?"""
    scheme, host, port = origin
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in entry
        allowed = parse_origin(entry.replace("://*.", "://wildcard.", 1) if wildcard else entry)
        if allowed is None:
            continue
        if not wildcard:
            if allowed == origin:
                return True
            continue
        allowed_scheme, allowed_host, allowed_port = allowed
        domain = allowed_host.removeprefix("wildcard")  # ".example.com": it and its subdomains
        if (allowed_scheme, allowed_port) == (scheme, port) and is_same_domain(host, domain):
            return True
    return False


def origin_allowed(scope: dict[str, Any]) -> bool:
    """May this websocket handshake go on? The site's own origin, or a trusted one; the Host must be
    one of ALLOWED_HOSTS either way."""
    site = site_origin(scope)
    raw = _header(scope, b"origin")
    if site is None or raw is None:
        return False
    origin = parse_origin(raw)
    if origin is None:
        return False
    return origin == site or trusted(origin)


class SameOriginValidator:
    """ASGI middleware: refuse (403 at the handshake) a websocket whose Origin is not allowed."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator is for websocket connections only")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
