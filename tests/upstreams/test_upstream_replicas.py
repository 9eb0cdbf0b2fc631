"""Replicas: two connections that serve the same model ids (scripted servers, each its own process)."""

from __future__ import annotations

import http.client
import json
import threading

import pytest

from tests.upstream_servers import FaultServer, front

pytestmark = pytest.mark.slow

HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    a = FaultServer(tmp_path_factory.mktemp("a")).start()
    b = FaultServer(tmp_path_factory.mktemp("b")).start()
    broken = FaultServer(tmp_path_factory.mktemp("broken"), broken=True).start()
    yield a, b, broken
    for server in (a, b, broken):
        server.kill()


@pytest.fixture(scope="module")
def site(tmp_path_factory, servers):
    a, b, broken = servers
    server = front(
        tmp_path_factory.mktemp("front"),
        [
            ["r1", a.url],
            ["r2", b.url],
            ["pair-broken", broken.url.replace("/v1", "/pair/v1")],
            ["pair-ok", a.url.replace("/v1", "/pair/v1")],
        ],
    )
    yield server
    server.stop()


class Reader:
    """One streaming call, read as it comes."""

    def __init__(self, site, model: str, content: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=60)
        body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": True}
        headers = {"Authorization": f"Bearer {site.keys['alice']}", "Content-Type": "application/json"}
        self.conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.text = ""
        self.error: dict | None = None
        self.done = False

    def read(self, until_chars: int | None = None) -> Reader:
        while not self.done and (until_chars is None or len(self.text) < until_chars):
            line = self.response.readline()
            if not line:
                break
            line = line.strip()
            if line == b"data: [DONE]":
                self.done = True
            elif line.startswith(b"data: "):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    self.error = chunk["error"]
                for choice in chunk.get("choices") or ():
                    self.text += choice["delta"].get("content") or ""
        return self


def reply_for(site, content: str) -> dict:
    return site.query(
        "SELECT m.* FROM conversations_message m JOIN conversations_message u "
        "ON u.conversation_id = m.conversation_id AND u.role = 'user' "
        "WHERE m.role = 'assistant' AND u.content = ? ORDER BY m.id DESC LIMIT 1",
        content,
    )[0]


def test_it_spreads_calls_across_replicas(site, servers) -> None:
    a, b, _ = servers
    readers = [Reader(site, "fault-slow", f"spread {i}") for i in range(4)]
    for reader in readers:
        assert reader.status == 200
    threads = [threading.Thread(target=reader.read) for reader in readers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.done and r.error is None for r in readers)
    on_a = [r for r in a.requests() if str(r.get("messages")).count("spread")]
    on_b = [r for r in b.requests() if str(r.get("messages")).count("spread")]
    assert len(on_a) == 2 and len(on_b) == 2


def test_it_tries_another_replica_when_one_fails_before_the_first_token(site, servers) -> None:
    _, _, broken = servers
    for i in range(4):
        status, _, data = site.request(
            "POST",
            "/v1/chat/completions",
            {"model": "pair/fault-ok", "messages": HELLO, "stream": i % 2 == 0},
        )
        assert status == 200, data
        assert b"one two" in data or b" two" in data
    # Tried first (the replicas were equally idle), marked unhealthy, not tried again meanwhile.
    assert len(broken.requests()) == 1


def test_it_keeps_the_text_of_calls_on_a_replica_that_dies_and_sends_new_ones_to_the_other(
    site, servers
) -> None:
    a, b, _ = servers
    readers = [Reader(site, "fault-slow", f"kill {i}").read(until_chars=10) for i in range(2)]
    a.kill()
    for reader in readers:
        reader.read()
    cut = [r for r in readers if r.error is not None]
    finished = [r for r in readers if r.error is None]
    assert len(cut) == 1 and len(finished) == 1 and all(r.status == 200 and r.done for r in readers)
    row = reply_for(site, "kill 0" if cut[0] is readers[0] else "kill 1")
    assert row["status"] == "interrupted" and row["content"] == cut[0].text and len(cut[0].text) >= 10
    assert json.loads(row["params"])["upstream"] == "r1"

    after = [Reader(site, "fault-slow", f"after {i}") for i in range(3)]
    assert [r.status for r in after] == [200, 200, 200]
    for reader in after:
        reader.read()
        assert reader.done and reader.error is None
    assert len([r for r in b.requests() if "after" in str(r.get("messages"))]) == 3
