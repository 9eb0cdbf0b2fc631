"""A small OpenID Connect provider for the single sign-on tests, run in its own process:

    python tests/oidc_provider.py PORT CLIENT_ID CLIENT_SECRET

It serves discovery, a JWKS with a real RSA key (made at start), an authorize page (a form: the
username to sign in as and its groups, prefilled from USERS), a token endpoint that checks the
client's secret, the code, the redirect URI and PKCE and issues an RS256-signed id_token, and
userinfo. It prints "ready <issuer>" once listening. Test hooks (POST /test/...) make the next
token misbehave: another issuer, another audience, a wrong key, expired.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

USERS = {
    "erin": {
        "sub": "u-erin-1",
        "email": "erin@example.com",
        "preferred_username": "erin",
        "groups": ["alpha"],
    },
    "frank": {"sub": "u-frank-2", "email": "frank@example.com", "preferred_username": "alice", "groups": []},
}


def b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Provider:
    def __init__(self, port: int, client_id: str, client_secret: str) -> None:
        self.issuer = f"http://127.0.0.1:{port}"
        self.client_id, self.client_secret = client_id, client_secret
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(4)
        self.codes: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.next_fault = ""

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": self.kid,
                    "n": b64(numbers.n),
                    "e": b64(numbers.e),
                }
            ]
        }

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        }

    def id_token(self, claims: dict[str, Any], nonce: str) -> str:
        now = int(time.time())
        payload = {
            **claims,
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
        }
        key, fault = self.key, self.next_fault
        self.next_fault = ""
        if fault == "issuer":
            payload["iss"] = "http://127.0.0.1:1/evil"
        elif fault == "audience":
            payload["aud"] = "another-client"
        elif fault == "expired":
            payload["iat"], payload["exp"] = now - 600, now - 300
        elif fault == "key":
            key = self.other_key
        return jwt.encode(payload, key, algorithm="RS256", headers={"kid": self.kid})


class Handler(BaseHTTPRequestHandler):
    provider: Provider

    def log_message(self, *args: Any) -> None:
        pass

    def send(
        self, status: int, body: Any, content_type: str = "application/json", headers: dict | None = None
    ) -> None:
        data = (json.dumps(body) if content_type == "application/json" else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        return {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        p = self.provider
        if url.path == "/.well-known/openid-configuration":
            self.send(200, p.discovery())
        elif url.path == "/jwks":
            self.send(200, p.jwks())
        elif url.path == "/authorize":
            if query.get("client_id") != p.client_id or query.get("response_type") != "code":
                self.send(400, "<p>unknown client</p>", "text/html")
                return
            hidden = "".join(
                f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                for k, v in query.items()
            )
            page = (
                "<!doctype html><title>Stub provider</title><h1>Stub provider: sign in</h1>"
                f'<form method="post" action="/authorize">{hidden}'
                '<label>Username <input name="username" id="username" value="erin"></label> '
                '<label>Groups <input name="groups" id="groups" value=""></label> '
                '<button type="submit" id="sign-in">Sign in</button></form>'
            )
            self.send(200, page, "text/html; charset=utf-8")
        elif url.path == "/userinfo":
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            claims = p.tokens.get(token)
            if claims is None:
                self.send(401, {"error": "invalid_token"})
            else:
                self.send(200, claims)
        else:
            self.send(404, {"error": "not found"})

    def do_POST(self) -> None:
        p = self.provider
        url = urlsplit(self.path)
        if url.path.startswith("/test/fault/"):
            p.next_fault = url.path.rsplit("/", 1)[-1]
            self.send(200, {"ok": True})
            return
        form = self.form()
        if url.path == "/authorize":
            user = USERS.get(form.get("username", ""))
            if user is None:
                self.send(403, "<p>no such user</p>", "text/html")
                return
            claims = dict(user)
            groups = form.get("groups", "").strip()  # empty: the user's own; "-": none
            if groups:
                claims["groups"] = [g.strip() for g in groups.split(",") if g.strip() and g.strip() != "-"]
            code = secrets.token_urlsafe(16)
            p.codes[code] = {
                "claims": claims,
                "redirect_uri": form["redirect_uri"],
                "nonce": form.get("nonce", ""),
                "challenge": form.get("code_challenge", ""),
            }
            target = form["redirect_uri"] + "?" + urlencode({"code": code, "state": form.get("state", "")})
            self.send(302, "", "text/plain", {"Location": target})
        elif url.path == "/token":
            grant = p.codes.pop(form.get("code", ""), None)  # single use
            if (form.get("client_id"), form.get("client_secret")) != (p.client_id, p.client_secret):
                self.send(401, {"error": "invalid_client"})
            elif grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
                self.send(400, {"error": "invalid_grant"})
            elif (
                grant["challenge"]
                and grant["challenge"]
                != base64.urlsafe_b64encode(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
                .rstrip(b"=")
                .decode()
            ):
                self.send(400, {"error": "invalid_grant", "error_description": "PKCE"})
            else:
                access = secrets.token_urlsafe(16)
                p.tokens[access] = grant["claims"]
                body = {
                    "access_token": access,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": p.id_token(
                        {"sub": grant["claims"]["sub"], "email": grant["claims"]["email"]}, grant["nonce"]
                    ),
                }
                self.send(200, body)
        else:
            self.send(404, {"error": "not found"})


def main() -> None:
    port, client_id, client_secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    Handler.provider = Provider(port, client_id, client_secret)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"ready {Handler.provider.issuer}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
