"""The websocket's Origin check: exactly the site's own scheme, host and port (from the Host header
and the connection's scheme), or an origin of CSRF_TRUSTED_ORIGINS; nothing else.

Through Channels' WebsocketCommunicator and the real ASGI application, then with a raw websocket
against a real `manage.py serve` process.
"""

from __future__ import annotations

import base64
import os
import socket

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from chatsite.asgi import application
from conversations import actions
from tests.conversations.test_chat_browser import PASSWORD, SETUP
from tests.live_server import LiveServer, start_with_script
from tests.tiny_gguf import write_tiny_llama
from tests.ws_chat import cookie_for

SITE = "127.0.0.1:8000"


@pytest.fixture
def chat(alice, alpha):
    return actions.start_conversation(alice, alpha, visibility="team")


async def opens(
    user, conversation_id: int, origin: str | None, *, host: str = SITE, scheme: str = "ws", extra=()
) -> bool:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    headers.extend(extra)
    headers.append(await sync_to_async(cookie_for)(user))
    communicator = WebsocketCommunicator(application, f"/ws/c/{conversation_id}/", headers=headers)
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    return connected


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_accepts_the_sites_own_origin(alice, chat) -> None:
    assert await opens(alice, chat.pk, f"http://{SITE}")
    assert await opens(alice, chat.pk, f"HTTP://{SITE}")  # scheme and host are case-insensitive
    assert await opens(alice, chat.pk, "http://localhost", host="localhost")
    assert await opens(alice, chat.pk, "http://localhost", host="localhost:80")  # the default port


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:9999",  # another port
        "http://localhost:1",  # another host (allowed, but not this site's) and port
        "https://127.0.0.1",  # another scheme (and port)
        "https://127.0.0.1:8000",  # another scheme
        "http://127.0.0.1",  # port 80, not 8000
        "http://evil.example",
        "http://127.0.0.1:8000.evil.example",
        "null",
        "",
        None,
    ],
)
async def test_it_refuses_any_other_origin(alice, chat, origin) -> None:
    assert not await opens(alice, chat.pk, origin)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_refuses_a_host_outside_allowed_hosts_even_with_a_matching_origin(alice, chat) -> None:
    # DNS rebinding: a page of evil.example:8000 resolved to this server is "same origin" with itself.
    assert not await opens(alice, chat.pk, "http://evil.example:8000", host="evil.example:8000")
    assert not await opens(alice, chat.pk, f"http://{SITE}", host="")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_takes_the_scheme_from_the_connection(alice, chat, settings) -> None:
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    assert await opens(alice, chat.pk, "https://chat.example.com", host="chat.example.com", scheme="wss")
    assert not await opens(alice, chat.pk, "http://chat.example.com", host="chat.example.com", scheme="wss")
    assert not await opens(alice, chat.pk, "https://chat.example.com", host="chat.example.com", scheme="ws")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_trusts_x_forwarded_proto_only_behind_a_tls_proxy(alice, chat, settings) -> None:
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    https = [(b"x-forwarded-proto", b"https")]
    # Not configured: the header is anyone's to send, and changes nothing.
    assert not await opens(alice, chat.pk, "https://chat.example.com", host="chat.example.com", extra=https)
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")  # CHAT_BEHIND_TLS_PROXY=1
    assert await opens(alice, chat.pk, "https://chat.example.com", host="chat.example.com", extra=https)
    assert not await opens(alice, chat.pk, "http://chat.example.com", host="chat.example.com", extra=https)
    assert await opens(alice, chat.pk, "http://chat.example.com", host="chat.example.com")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_accepts_the_csrf_trusted_origins(alice, chat, settings) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com", "https://*.example.org"]
    assert await opens(alice, chat.pk, "https://chat.example.com")
    assert await opens(alice, chat.pk, "https://team.example.org")
    assert not await opens(alice, chat.pk, "http://chat.example.com")  # not the trusted scheme
    assert not await opens(alice, chat.pk, "https://chat.example.com:8443")  # nor its port
    assert not await opens(alice, chat.pk, "https://example.com")


# --- A raw websocket against `manage.py serve` -----------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ws-origin")
    tiny = write_tiny_llama(root / "tiny.gguf")
    live = LiveServer(root / "site", {"CHAT_MODEL_PATH": str(tiny)}, command=["manage.py", "serve"])
    start_with_script(live, SETUP)
    try:
        yield live
    finally:
        live.stop()


def handshake(server: LiveServer, path: str, origin: str | None, session: str) -> bytes:
    """The status line of the server's answer to a websocket handshake with ``origin``."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        origin_line = f"Origin: {origin}\r\n" if origin is not None else ""
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"{origin_line}Cookie: sessionid={session}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        return head.split(b"\r\n", 1)[0]


@pytest.mark.slow  # a live server
def test_it_checks_the_origin_of_a_real_handshake(server: LiveServer) -> None:
    session = server.log_in("alice", PASSWORD)
    conversation_id = server.query(
        "SELECT id FROM conversations_conversation WHERE title = 'Release notes draft'"
    )[0]["id"]
    path = f"/ws/c/{conversation_id}/"
    assert handshake(server, path, server.url, session).startswith(b"HTTP/1.1 101")  # its own
    for origin in (
        "http://127.0.0.1:9999",
        "http://localhost:1",
        "https://127.0.0.1",
        f"https://127.0.0.1:{server.port}",
        f"http://localhost:{server.port}",
        "null",
        None,
    ):
        assert handshake(server, path, origin, session).startswith(b"HTTP/1.1 403"), origin
