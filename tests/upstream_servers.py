"""Real servers for the upstream tests, each its own process: the scripted fault server
(tests/fault_upstream.py), chatsite itself as an upstream (``manage.py serve`` with the tiny model
and its own database), and the chatsite under test in front of them."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.live_server import PYTHON, ROOT, LiveServer, free_port
from tests.tiny_gguf import write_tiny_llama

FAULT_SERVER = Path(__file__).with_name("fault_upstream.py")


@dataclass
class FaultServer:
    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    broken: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FaultServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [PYTHON, str(FAULT_SERVER), str(self.port), *(["--broken"] if self.broken else [])],
            cwd=self.folder,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"
        return self

    def requests(self) -> list[dict]:
        path = self.folder / "requests.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def wait_for(self, predicate, timeout: float = 10) -> dict:
        """The first logged request that matches, waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((r for r in self.requests() if predicate(r)), None)
            if found is not None:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no such request in {self.requests()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def tiny_model(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_tiny_llama(folder / f"{name}.gguf", context_length=2048)


def chatsite_upstream(folder: Path) -> LiveServer:
    """chatsite serving the tiny model as ``upstream-tiny``: one thread (another model process
    shares the two cores), four slots."""
    model = tiny_model(folder, "upstream-tiny")
    return LiveServer(
        folder / "data",
        {"CHAT_MODEL_PATH": str(model), "CHAT_SLOTS": "4", "CHAT_THREADS": "1", "CHAT_QUEUE_MAX": "16"},
        command=["manage.py", "serve"],
    ).start()


def front(
    folder: Path,
    upstreams: list[list[str]],
    env: dict[str, str] | None = None,
    command_env: dict[str, str] | None = None,
) -> LiveServer:
    """The chatsite under test (its own tiny model, ``front-tiny``), with ``upstreams`` added by
    ``manage.py addupstream`` (each a list of its arguments, run with ``command_env``) before it
    starts."""
    model = tiny_model(folder, "front-tiny")
    server = LiveServer(
        folder / "data",
        {"CHAT_MODEL_PATH": str(model), "CHAT_SLOTS": "1", "CHAT_THREADS": "1", **(env or {})},
        command=["manage.py", "serve"],
    )
    server._setup()
    # One process for all of them: a Django start-up each cost a second or two.
    commands = [["addupstream", *args] for args in upstreams]
    code = (
        "import sys, django\ndjango.setup()\nfrom django.core.management import call_command\n"
        f"for args in {commands!r}:\n    call_command(*args)\n"
    )
    out = subprocess.run(
        [PYTHON, "-c", code],
        cwd=ROOT,
        env={**server._env(), **(command_env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise AssertionError(f"manage.py addupstream failed:\n{out.stdout}\n{out.stderr}")
    return server.start(setup=False)


def manage(server: LiveServer, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env={**server._env(), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out
