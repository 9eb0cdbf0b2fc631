"""Static files under a live `manage.py serve`: a path that climbs out of the static folders, or
that no file can have, is a 404, never a 500 (and never a file from elsewhere).

Requests are written on a raw socket so that nothing normalises the path (as `curl --path-as-is`).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.live_server import LiveServer
from tests.tiny_gguf import write_tiny_llama

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("static-site")
    model = write_tiny_llama(folder / "tiny.gguf", context_length=256)
    server = LiveServer(
        folder / "data",
        {"CHAT_MODEL_PATH": str(model), "CHAT_SLOTS": "1", "CHAT_THREADS": "1", "CHAT_MAX_TOKENS_CAP": "1"},
        command=["manage.py", "serve"],
    ).start()
    yield server
    server.stop()


def raw_get(server: LiveServer, target: bytes) -> tuple[int, bytes]:
    """GET ``target`` exactly as given; (status, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


CLIMBING = [
    b"/static/../../etc/passwd",
    b"/static/../../../../../../etc/passwd",
    b"/static/..%2f..%2f..%2fetc/passwd",
    b"/static/%2e%2e/%2e%2e/etc/passwd",
    b"/static/css/../../../manage.py",
    b"/static//etc/passwd",
    b"/static/..",
    b"/static/a%00b.css",
    b"/static/%ed%a0%80.css",
    b"/static/" + b"a/" * 2000,
]


@pytest.mark.parametrize("target", CLIMBING, ids=[t.decode()[:40] for t in CLIMBING])
def test_it_answers_404_to_a_path_out_of_the_static_folders(site: LiveServer, target: bytes) -> None:
    status, body = raw_get(site, target)
    assert status == 404, body[:300]
    assert b"root:" not in body and b"DJANGO_SETTINGS_MODULE" not in body


def test_it_still_serves_a_static_file(site: LiveServer) -> None:
    name = next((Path(__file__).resolve().parents[2] / "static" / "css").glob("*.css")).name
    status, body = raw_get(site, f"/static/css/{name}".encode())
    assert status == 200 and body
