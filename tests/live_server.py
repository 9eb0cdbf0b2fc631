"""A real chatsite server for the API tests: Daphne in a subprocess, its own data folder and SQLite.

The folder is migrated and given three users before the server starts: alice and bob share the
team "alpha", charlie (an outsider) has his own. Their API keys are made by the ``createapikey``
management command; alice also has a revoked key. Tests read the server's log of calls straight
from its SQLite file (read-only), since the server is another process.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # as tests/fixtures_model.py
# The default model's conversions, shared by the tests' servers and in-process loads (content-
# addressed, written whole then renamed): the project's own cache.
MODEL_CACHE = ROOT / ".data" / "models"

SETUP = """
import io, json, django
django.setup()
from django.contrib.auth import get_user_model
from django.core.management import call_command
from conversations import actions
call_command("migrate", verbosity=0)
User = get_user_model()
users = {name: User.objects.create_user(name) for name in ("alice", "bob", "charlie")}
alpha = actions.create_team("alpha", admin=users["alice"])
actions.add_member(alpha, users["bob"])

def key(*args):
    out = io.StringIO()
    call_command("createapikey", *args, stdout=out)
    return out.getvalue().strip()

keys = {"alice": key("alice", "--name", "tests"), "bob": key("bob"), "charlie": key("charlie")}
keys["revoked"] = key("alice", "--team", "alpha", "--name", "old")
actions.revoke_api_key(actions.authenticate_api_key(keys["revoked"]))
print(json.dumps(keys))
"""


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    keys: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    # The server command; None: plain Daphne. `["manage.py", "serve"]` runs the project's launcher.
    command: list[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "db.sqlite3"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_") and k != "DATABASE_URL"}
        # The site's settings with a fast password hasher (tests/live_settings.py says why); a test
        # that wants the site's own passes DJANGO_SETTINGS_MODULE=chatsite.settings in its env.
        env.update({"CHAT_DATA_DIR": str(self.data_dir), "DJANGO_SETTINGS_MODULE": "tests.live_settings"})
        # One model thread unless a test says otherwise: ggml's threads spin-wait for each other,
        # and on a machine busy with other work two of them decode the real model ~15x slower than
        # one (0.8 vs 12 tok/s measured at load 7 on 2 cores).
        env["CHAT_THREADS"] = "1"
        env.update(self.env)
        return env

    def start(self, timeout: float = 120, *, setup: bool = True, model: bool = True) -> LiveServer:
        """Set up the data folder (unless ``setup`` is false: a restart) and start the server; wait
        for a completion to answer 200 (or, with ``model`` false, for /health: a server that
        cannot complete, such as a web process whose inference worker is unreachable)."""
        if setup:
            self._setup()
        self.log = open(self.data_dir / "server.log", "a")  # noqa: SIM115
        daphne = [
            PYTHON,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            "chatsite.asgi:application",
        ]
        self.process = subprocess.Popen(
            [PYTHON, *self.command, "--port", str(self.port)] if self.command else daphne,
            cwd=ROOT,
            env=self._env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if model:
            self._wait_ready(timeout)
        else:
            self._wait_alive(timeout)
        return self

    def _wait_alive(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.server_log()}")
            try:
                status, _, _ = self.request("GET", "/health", key=None, timeout=10)
            except (OSError, urllib.error.URLError):
                status = None
            if status == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start:\n{self.server_log()}")

    def _setup(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = self._env()
        # The default model's conversion is content-addressed: share the project's cache, convert
        # it once. Not the test models: their conversions are named after the file (tiny.gguf), and
        # converting one deletes the older conversions of that name, which another server (another
        # xdist worker) may be about to load.
        model = env.get("CHAT_MODEL_PATH")
        shared = model is None or Path(model).name == DEFAULT_MODEL_FILE
        if shared and not (self.data_dir / "models").exists():
            MODEL_CACHE.mkdir(parents=True, exist_ok=True)
            (self.data_dir / "models").symlink_to(MODEL_CACHE)
        if "DATABASE_URL" in env or self.db_path != self.data_dir / "db.sqlite3":
            self.keys = run_setup(env)
            return
        # The usual case, an SQLite file in the data folder: a copy of one set up once per process
        # (the migrations take seconds), with its secret key; the same users and keys.
        template, keys = set_up_template()
        for item in template.iterdir():
            if item.is_file():
                shutil.copy2(item, self.data_dir / item.name)
        self.keys = dict(keys)

    def _wait_ready(self, timeout: float) -> None:
        """Wait for the process, then for the model (a 1-token completion stops answering 503)."""
        deadline = time.monotonic() + timeout
        body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.server_log()}")
            try:
                status, _, _ = self.request("POST", "/v1/chat/completions", body, key="alice", timeout=30)
            except (OSError, urllib.error.URLError):
                status = None
            if status == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not become ready:\n{self.server_log()}")

    def server_log(self) -> str:
        path = self.data_dir / "server.log"
        return path.read_text()[-5000:] if path.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = "alice",
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> tuple[int, dict[str, str], bytes]:
        """One raw HTTP request: (status, headers, body). ``body`` may be bytes or JSON-able."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        if key is not None:
            all_headers["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        all_headers.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, dict(error.headers), error.read()

    def run_python(self, script: str, *args: str) -> str:
        """Run ``script`` (Python, with ``args`` as sys.argv[1:]) in this server's environment (its
        data folder and settings: its database), as the tests' set-up does; returns its output."""
        process = self.python(script, *args)
        out, err = process.communicate()
        assert process.returncode == 0, err
        return out

    def python(self, script: str, *args: str) -> subprocess.Popen:
        """``script`` started in this server's environment (``run_python`` waits for it)."""
        return subprocess.Popen(
            [PYTHON, "-c", script, *args],
            cwd=ROOT,
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def log_in(self, username: str, password: str) -> str:
        """The session cookie of ``username``, through the real login form (CSRF token and all)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/accounts/login/")
        response = conn.getresponse()
        page = response.read().decode()
        csrf_cookie = re.search(r"csrftoken=([^;]+)", response.getheader("Set-Cookie") or "")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        if csrf_cookie is None or token is None:
            raise RuntimeError(f"the login page has no CSRF token (status {response.status})")
        conn.request(
            "POST",
            "/accounts/login/",
            urllib.parse.urlencode(
                {"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)}
            ),
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": f"csrftoken={csrf_cookie.group(1)}",
                "Referer": self.url + "/",
            },
        )
        response = conn.getresponse()
        response.read()
        session = re.search(r"sessionid=([^;]+)", response.getheader("Set-Cookie") or "")
        if response.status != 302 or session is None:
            raise RuntimeError(f"logging in as {username} answered {response.status}")
        return session.group(1)

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def query(self, sql: str, *args: Any) -> list[Any]:
        """Rows (by column name) from the server's database: its SQLite file, read-only, or the
        PostgreSQL database of its ``DATABASE_URL``."""
        url = self.env.get("DATABASE_URL", "")
        if url.startswith(("postgres://", "postgresql://")):
            import psycopg
            from psycopg.rows import dict_row

            with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
                return conn.execute(sql.replace("?", "%s"), args).fetchall()
        with closing(self.db()) as conn:
            return conn.execute(sql, args).fetchall()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None) is not None:
            self.log.close()


def start_together(*servers: LiveServer) -> None:
    """Start servers whose data folder is set up (``_setup``: the first's, when they share one)
    at once, each waited for in a thread of its own: their start-ups overlap. The caller stops
    them, even when one did not start."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(servers)) as pool:
        for started in [pool.submit(server.start, setup=False) for server in servers]:
            started.result()


def start_with_script(server: LiveServer, code: str, *others: LiveServer) -> LiveServer:
    """Set up the server's data folder, then start it (and ``others``, on the same database and
    given its keys) while ``code`` (a Python script that sets up Django itself, on the server's
    database: a test module's users and conversations) runs beside the start-ups: Python start-ups
    at once, not one after the other."""
    server._setup()
    for other in others:
        other.keys = server.keys
    script = server.python(code)
    try:
        try:
            start_together(server, *others)
        finally:
            out, err = script.communicate(timeout=120)
        if script.returncode != 0:
            raise AssertionError(f"the set-up script failed:\n{out}\n{err}")
    except BaseException:
        for each in (server, *others):
            each.stop()
        raise
    return server


def run_setup(env: dict[str, str]) -> dict[str, str]:
    """Migrate the database of ``env``, make the users, teams and keys (SETUP); the keys."""
    out = subprocess.run(
        [PYTHON, "-c", SETUP], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"setting up the server's database failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


_template: tuple[Path, dict[str, str]] | None = None


def set_up_template() -> tuple[Path, dict[str, str]]:
    """A data folder set up by SETUP once per test process (removed at exit), for servers to copy."""
    global _template
    if _template is None:
        folder = Path(tempfile.mkdtemp(prefix="chatsite-live-template-"))
        atexit.register(shutil.rmtree, folder, True)
        keys = run_setup(LiveServer(folder, {})._env())
        _template = folder, keys
    return _template


NO_EOS = {"0": -100, "1": -100, "2": -100}  # the default model's control tokens: replies run long


class Stream:
    """A streaming chat completion (as alice), read chunk by chunk, noting when each piece of text
    arrived. If the server dies, reading ends: what was read is what the client saw."""

    def __init__(
        self, server: LiveServer, max_tokens: int, content: str = "Tell me a long story about a lighthouse."
    ) -> None:
        self.content = content
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        body = {
            "model": "gpt-3.5-turbo",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "stream": True,
            "logit_bias": NO_EOS,
        }
        headers = {"Authorization": f"Bearer {server.keys['alice']}", "Content-Type": "application/json"}
        self.conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.text = ""
        self.timeline: list[tuple[float, int]] = []  # (time.monotonic(), length of the text so far)
        self.finish_reason: str | None = None
        self.done = False
        self.error: dict | None = None

    def read(self, until_chars: int | None = None) -> None:
        try:
            while not self.done and (until_chars is None or len(self.text) < until_chars):
                line = self.response.readline()
                if not line:
                    return
                line = line.strip()
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    self.done = True
                    return
                chunk = json.loads(line[6:])
                if "error" in chunk:  # an error after the 200: delivered in the stream
                    self.error = chunk["error"]
                    continue
                choice = chunk["choices"][0]
                if content := choice["delta"].get("content"):
                    self.text += content
                    self.timeline.append((time.monotonic(), len(self.text)))
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
        except (OSError, http.client.HTTPException):
            return  # the server died

    def behind(self, saved: int, killed_at: float) -> float:
        """Seconds the oldest text beyond the first ``saved`` characters had been on the client at
        ``killed_at`` (0: it had nothing more)."""
        for at, length in self.timeline:
            if length > saved:
                return max(0.0, killed_at - at)
        return 0.0
