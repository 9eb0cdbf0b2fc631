"""The limits end to end with the real default model: a live server, a key limited by
``manage.py setlimits`` in the server's database, the SDK-shaped 429."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.live_server import PYTHON, ROOT

pytestmark = pytest.mark.model


def setlimits(server, *args: str) -> str:
    done = subprocess.run(
        [PYTHON, "manage.py", "setlimits", *args], cwd=ROOT, env=server._env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_key(server, user: str) -> str:
    """A key of this test's own: the shared server's keys are used by other tests, whose calls
    within the last minute would count against a limit of one request per minute."""
    done = subprocess.run(
        [PYTHON, "manage.py", "createapikey", user, "--name", "limits"],
        cwd=ROOT,
        env=server._env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_it_limits_a_key_of_the_real_server_and_counts_its_real_usage(api_server) -> None:
    key = new_key(api_server, "bob")
    prefix = key.removeprefix("csk-").split("-")[0]
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
    setlimits(api_server, "--key", prefix, "--rpm", "1", "--tokens-per-day", "100000")
    try:
        minute = int(time.time() // 60)  # requests per minute count in fixed UTC minutes
        status, headers, raw = api_server.request("POST", "/v1/chat/completions", body, key=key)
        assert status == 200
        usage = json.loads(raw)["usage"]
        headers = {k.lower(): v for k, v in headers.items()}
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert int(headers["x-ratelimit-remaining-tokens"]) <= 100000 - usage["prompt_tokens"] - 5
        status, headers, raw = api_server.request("POST", "/v1/chat/completions", body, key=key)
        if status == 200:
            # Admitted in the next minute (a call takes seconds on a busy machine, and the two can
            # straddle a minute's end): then it was that minute's one request, and the next is not.
            assert int(time.time() // 60) > minute, "a second request in one minute was admitted"
            status, headers, raw = api_server.request("POST", "/v1/chat/completions", body, key=key)
        assert status == 429
        error = json.loads(raw)["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert {k.lower() for k in headers} >= {"retry-after", "x-ratelimit-reset-requests"}
    finally:
        setlimits(api_server, "--key", prefix, "--rpm", "off", "--tokens-per-day", "off")
