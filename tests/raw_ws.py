"""A raw websocket client for the tests that talk to a real server process (`manage.py serve`):
the handshake, text frames out, frames in with a deadline, pings answered.

Bytes that arrive with the handshake's answer are kept: a loaded machine often reads the 101 and
the server's first frame in one ``recv``, and dropping them once left a test waiting for a frame
that had come, until Daphne's unanswered pings made it reset the connection.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time

from tests.live_server import LiveServer

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


def _masked(opcode: int, payload: bytes) -> bytes:
    """One client frame (clients mask what they send)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = b"\xfe" + struct.pack(">H", n)
    else:
        length = b"\xff" + struct.pack(">Q", n)
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawSocket:
    def __init__(self, server: LiveServer, path: str, session: str, origin: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: {origin or server.url}\r\nCookie: sessionid={session}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            head += chunk
        self.status_line = head.split(b"\r\n", 1)[0].decode()
        self.buffer = head.partition(b"\r\n\r\n")[2]  # frames that came with the handshake's answer
        self.close_code: int | None = None
        self.ended = False  # the server closed the connection (with or without a close frame)
        self.frames: list[tuple[int, bytes]] = []  # every data or close frame read, in order

    def send_text(self, payload: bytes) -> None:
        self.sock.sendall(_masked(TEXT, payload))

    def send_json(self, data: dict) -> None:
        self.send_text(json.dumps(data).encode())

    def next_frame(self, deadline: float) -> str | None:
        """The next text frame; None at the deadline or when the connection ends (see close_code)."""
        while True:
            if len(self.buffer) >= 2:
                opcode, n = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
                offset = 2
                if n == 126:
                    n, offset = struct.unpack(">H", self.buffer[2:4])[0], 4
                elif n == 127:
                    n, offset = struct.unpack(">Q", self.buffer[2:10])[0], 10
                if len(self.buffer) >= offset + n:
                    frame = self.buffer[offset : offset + n]
                    self.buffer = self.buffer[offset + n :]
                    if opcode == PING:
                        self._reply(PONG, frame)
                        continue
                    if opcode == PONG:
                        continue
                    self.frames.append((opcode, frame))
                    if opcode == CLOSE:
                        self.ended = True
                        self.close_code = struct.unpack(">H", frame[:2])[0] if len(frame) >= 2 else 1005
                        return None
                    if opcode == TEXT:
                        return frame.decode()
                    continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.ended = True
                return None
            self.buffer += chunk

    def _reply(self, opcode: int, payload: bytes) -> None:
        try:
            self.sock.sendall(_masked(opcode, payload))
        except OSError:
            pass  # the connection is ending: the next read says so

    def wait_for(self, needle: str, timeout: float) -> str | None:
        """The first text frame holding ``needle``; None if none came within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while (frame := self.next_frame(deadline)) is not None:
            if needle in frame:
                return frame
        return None

    def read_until_closed(self, timeout: float) -> tuple[list[tuple[int, bytes]], int | None]:
        """Read until the connection ends: (every frame seen, the close code if a close frame came).
        Fails if it is still open after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.next_frame(deadline) is not None:
            pass
        if not self.ended:
            raise AssertionError(f"the websocket was still open after {timeout} s")
        return self.frames, self.close_code

    def close(self) -> None:
        self.sock.close()
