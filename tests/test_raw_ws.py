"""The raw websocket client of the live-server tests (tests/raw_ws.py) against a scripted peer:
the frames that come in the same read as the handshake's answer are kept, and pings answered.

CI once failed because the old client dropped them: on a loaded machine the 101 and the server's
first frame arrived in one ``recv``; the test waited for a frame it had thrown away until Daphne,
its pings unanswered, reset the connection."""

from __future__ import annotations

import socket
import struct
import threading

from tests.live_server import LiveServer
from tests.raw_ws import RawSocket


def server_frame(opcode: int, payload: bytes) -> bytes:
    return bytes([0x80 | opcode, len(payload)]) + payload


def test_it_keeps_the_frames_that_came_with_the_handshake_and_answers_pings(tmp_path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    got: dict[str, bytes] = {}

    def peer() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            # The answer, a ping and the first text frame in one write: one read on the client.
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
                + server_frame(0x9, b"are you there")
                + server_frame(0x1, b'<div id="messages"></div>')
            )
            head = conn.recv(2)  # the pong: masked, so 2 + 4 + len bytes
            n = head[1] & 0x7F
            rest = b""
            while len(rest) < 4 + n:
                rest += conn.recv(64)
            mask, body = rest[:4], rest[4:]
            got["pong"] = bytes([head[0] & 0x0F]) + bytes(b ^ mask[i % 4] for i, b in enumerate(body))
            conn.sendall(server_frame(0x8, struct.pack(">H", 4403)))

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    server = LiveServer(tmp_path, {}, port=listener.getsockname()[1])
    sock = RawSocket(server, "/ws/c/1/", "session")
    try:
        assert sock.status_line == "HTTP/1.1 101 Switching Protocols"
        assert sock.wait_for('id="messages"', timeout=10) == '<div id="messages"></div>'
        frames, code = sock.read_until_closed(timeout=10)
        assert code == 4403
        thread.join(10)
        assert got["pong"] == b"\x0aare you there"
    finally:
        sock.close()
        listener.close()
