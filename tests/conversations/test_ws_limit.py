"""Daphne's websocket message-size limit, as `manage.py serve` sets it (CHAT_WS_MAX_MESSAGE_BYTES):
an oversized message closes the socket with 1009, nothing is stored, and the server carries on.
A raw websocket client against a real server process (the tiny model: no reply is wanted)."""

from __future__ import annotations

import base64
import http.client
import os
import re
import socket
import struct
import subprocess

import pytest

from tests.conversations.test_chat_browser import PASSWORD, SETUP
from tests.live_server import PYTHON, ROOT, LiveServer
from tests.tiny_gguf import write_tiny_llama

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ws-limit")
    tiny = write_tiny_llama(root / "tiny.gguf")
    live = LiveServer(
        root / "site",
        {"CHAT_MODEL_PATH": str(tiny), "CHAT_WS_MAX_MESSAGE_BYTES": str(LIMIT)},
        command=["manage.py", "serve"],
    ).start()
    try:
        done = subprocess.run(
            [PYTHON, "-c", SETUP], cwd=ROOT, env=live._env(), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        yield live
    finally:
        live.stop()


def log_in(server: LiveServer) -> str:
    """The session cookie of alice, through the real login form."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/accounts/login/")
    response = conn.getresponse()
    page = response.read().decode()
    csrf_cookie = re.search(r"csrftoken=([^;]+)", response.getheader("Set-Cookie")).group(1)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    body = f"username=alice&password={PASSWORD}&csrfmiddlewaretoken={token}"
    conn.request(
        "POST",
        "/accounts/login/",
        body,
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={csrf_cookie}",
            "Referer": server.url + "/",
        },
    )
    response = conn.getresponse()
    response.read()
    assert response.status == 302, response.status
    return re.search(r"sessionid=([^;]+)", response.getheader("Set-Cookie")).group(1)


def open_ws(server: LiveServer, path: str, session: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {server.url}\r\nCookie: sessionid={session}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    return sock


def send_text(sock: socket.socket, payload: bytes) -> None:
    mask = os.urandom(4)
    n = len(payload)
    header = b"\x81" + (
        bytes([0x80 | n])
        if n < 126
        else b"\xfe" + struct.pack(">H", n)
        if n < 65536
        else b"\xff" + struct.pack(">Q", n)
    )
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(header + mask + masked)


def read_until_closed(sock: socket.socket, timeout: float = 10) -> tuple[list[tuple[int, bytes]], int | None]:
    """Read frames until the connection ends: (the frames seen, the close code if a close frame came).

    A connection still open after ``timeout`` seconds fails the read."""
    sock.settimeout(timeout)
    data, opcodes = b"", []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return opcodes, None
        data += chunk
        while len(data) >= 2:
            opcode, n = data[0] & 0x0F, data[1] & 0x7F
            offset = 2
            if n == 126:
                n, offset = struct.unpack(">H", data[2:4])[0], 4
            elif n == 127:
                n, offset = struct.unpack(">Q", data[2:10])[0], 10
            if len(data) < offset + n:
                break
            frame, data = data[offset : offset + n], data[offset + n :]
            opcodes.append((opcode, frame))
            if opcode == 0x8:
                return opcodes, struct.unpack(">H", frame[:2])[0] if len(frame) >= 2 else None


@pytest.mark.slow  # a live server
def test_it_closes_a_websocket_that_sends_an_oversized_message(server: LiveServer) -> None:
    session = log_in(server)
    conversation_id = server.query(
        "SELECT id FROM conversations_conversation WHERE title = 'Release notes draft'"
    )[0]["id"]
    before = server.query("SELECT COUNT(*) AS n FROM conversations_message")[0]["n"]
    sock = open_ws(server, f"/ws/c/{conversation_id}/", session)
    try:
        text = '{"action": "send", "text": "' + "x" * (LIMIT + 1000) + '"}'
        send_text(sock, text.encode())
        frames, code = read_until_closed(sock)
        # Daphne (autobahn) ends the connection: with 1009 "message too big", or by dropping it.
        # The consumer never saw the message: it would have refused it and kept the connection.
        assert code in (1009, None)
        assert not any(b"too large" in payload for _, payload in frames)
    finally:
        sock.close()
    assert server.query("SELECT COUNT(*) AS n FROM conversations_message")[0]["n"] == before
    # The server carries on, and a message under the limit is still accepted on a new socket.
    status, _, _ = server.request("GET", "/health", key=None)
    assert status == 200
    sock = open_ws(server, f"/ws/c/{conversation_id}/", session)
    sock.close()
