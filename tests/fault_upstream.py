"""A scripted OpenAI-compatible server for the upstream fault tests, run as its own process:
``python tests/fault_upstream.py PORT [--broken]`` (broken: every completion answers 500). The
model id picks the behaviour:

- ``fault-ok``: streams "one two three four" (no usage, even when asked) or answers at once;
- ``fault-slow``: streams 40 words, one every 50 ms;
- ``fault-500``: 500 before any token;
- ``fault-400``: an OpenAI-shaped 400 (``{"error": {..., "code": "fault_refused"}}``);
- ``fault-halfway``: two tokens, then the connection closes without [DONE];
- ``fault-hang``: headers and a role chunk, then nothing (until the client goes away);
- ``fault-malformed``: one token, then a chunk that is not JSON;
- ``fault-echo``: echoes the request's top-level fields (sorted, as JSON) as the content;
- ``fault-markdown``: streams ``MARKDOWN`` (headings, lists, a table, code fences, a quote) three
  characters at a time, one piece every 20 ms.

Every request body is appended (one JSON line) to ``requests.log`` in the working directory of the
process, and the time a client closed a hanging call as ``{"disconnected": time}``.
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MODELS = [
    "fault-ok",
    "fault-slow",
    "fault-500",
    "fault-400",
    "fault-halfway",
    "fault-hang",
    "fault-malformed",
    "fault-echo",
    "fault-markdown",
]
MARKDOWN = (
    "# A streamed answer\n\nSome **bold** text, `code` and a [link](https://example.org).\n\n"
    "## Steps\n\n1. Install it\n2. Run it\n   - with *care*\n   - twice\n3. Done\n\n"
    "| name | value |\n| :--- | ---: |\n| alpha | 1 |\n| beta | `2` |\n\n"
    "```python\ndef double(x):\n    # twice as much\n    return x * 2\n```\n\n"
    "Setext heading\n---\n\n> A quote\nwith a lazy line.\n\n- one\n- two\n\n"
    "```\n<script>alert(1)</script>\n\n\nplain\n```\n\n***\n\nThe **end**."
)
LOG = Path("requests.log")
BROKEN = "--broken" in sys.argv  # every completion answers 500


def chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        # /v1/models lists the MODELS; /<tag>/v1/models lists them as <tag>/fault-… (a second
        # connection to the same process that is not a replica of the first).
        path = self.path.rstrip("/")
        if not path.endswith("/v1/models"):
            self._json(404, {"error": {"message": "no such path", "type": "invalid_request_error"}})
            return
        tag = path.removesuffix("/v1/models").strip("/")
        ids = [f"{tag}/{m}" if tag else m for m in MODELS]
        self._json(
            200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "f"} for m in ids]}
        )

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        with LOG.open("a") as log:
            log.write(json.dumps(body) + "\n")
        model = str(body.get("model")).rsplit("/", 1)[-1]
        if model == "fault-500" or BROKEN:
            self._json(500, {"error": {"message": "boom", "type": "server_error"}})
            return
        if model == "fault-400":
            self._json(
                400,
                {
                    "error": {
                        "message": "refused by the fault server",
                        "type": "invalid_request_error",
                        "param": "x",
                        "code": "fault_refused",
                    }
                },
            )
            return
        text = ["one", " two", " three", " four"]
        if model == "fault-slow":  # 40 words, one every 50 ms
            text = [f" w{i}" for i in range(40)]
        if model == "fault-echo":
            text = [json.dumps(sorted(body))]
        if model == "fault-markdown":
            text = [MARKDOWN[i : i + 3] for i in range(0, len(MARKDOWN), 3)]
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(text)}
            choices = [{"index": 0, "message": message, "finish_reason": "stop"}]
            self._json(
                200,
                {
                    "id": "chatcmpl-fault",
                    "object": "chat.completion",
                    "created": 0,
                    "model": model,
                    "choices": choices,
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(chunk(model, {"role": "assistant", "content": ""}))
        self.wfile.flush()
        if model == "fault-hang":
            self._hang()
            return
        for i, piece in enumerate(text):
            if model == "fault-halfway" and i == 2:
                self.close_connection = True
                return
            if model == "fault-malformed" and i == 1:
                self.wfile.write(b"data: {not json\n\n")
                self.wfile.flush()
                return
            self.wfile.write(chunk(model, {"content": piece}))
            self.wfile.flush()
            if model == "fault-slow":
                time.sleep(0.05)
            if model == "fault-markdown":
                time.sleep(0.02)
        self.wfile.write(chunk(model, {}, "stop"))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _hang(self) -> None:
        """Send nothing more; note when the client closes the connection."""
        try:
            self.connection.recv(1)  # blocks until the client goes away
        except OSError:
            pass
        with LOG.open("a") as log:
            log.write(json.dumps({"disconnected": time.time()}) + "\n")
        self.close_connection = True


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
