"""Time to the first token of a short prompt, broken into its parts, against the raw engine.

Run with nothing else on the machine: ``.venv/bin/python -m bench.ttft`` (``--help`` for the knobs;
``python -m bench.api --ttft`` runs the same). For each database (SQLite, PostgreSQL) it starts a
real server (Daphne in a subprocess) with ``CHAT_TTFT_TRACE`` on, which writes the server-side
timestamps of every reply's path (conversations/ttft.py), and keeps an in-process copy of the model for
the raw engine. Both use ``--threads`` threads and never run at the same time. Each round sends,
through ``/v1`` (SSE) and through the chat websocket:

- a **cold** prompt: about 30 tokens that share nothing with any slot's cache (a fresh system line),
  so the whole prompt is evaluated;
- a **warm** prompt: the slot holds the start of the prompt (the API: the same system message as
  the previous call; the websocket: the next turn of a conversation), so only the rest is evaluated.

Once each reply has ended, the raw engine does the same work on the same ids in the server's own
slot (``conversations.ttft.raw_engine_probe``, on with ``CHAT_TTFT_TRACE``): the slot's cache cut
back to the prefix the reply found there, one ``eval`` of the rest (batch 64) and an argmax, timed:
the same process, threads and memory as the reply's prefill. The overhead is the server's TTFT (the
client's send to its receipt of the first text) minus that. The bench process's own copy of the model
does the same work too (``bench_raw_ms``), as earlier rounds measured it: two processes' copies of
the model differ from run to run by more than the overhead. Prints the medians of every part and
writes bench/results/ttft.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.run import CORES, ROOT, default_model_path
from conversations.ttft import first_token_seconds
from inference.model import ChatModel
from tests.live_server import PYTHON, LiveServer

PASSWORD = "bench-ttft-password-1"
QUESTIONS = [
    "What colour is the sky on a clear day? One word.",
    "Name one fruit that is yellow. One word.",
    "What is two plus three? Answer with a number.",
    "Name a large animal that lives in the sea.",
    "Which season comes after winter? One word.",
    "What do bees make? One word.",
]
WARM_SYSTEM = "You are a brief assistant. Answer in a few words."
MAX_TOKENS = 4

# The parts of a reply's path, in order: (label, from mark, to mark). "send" and "receive" are the
# client's own times; the others are the server's (conversations/ttft.py).
V1_PARTS = [
    ("HTTP in: connection, Daphne, middleware", "send", "request"),
    ("auth: API key, team's models", "request", "auth"),
    ("body parsed and validated", "auth", "parsed"),
    ("template + tokenization (+ tools plan)", "parsed", "prompt"),
    ("usage limits reserved", "prompt", "reserved"),
    ("admission (scheduler submit)", "reserved", "admitted"),
    ("hand-off to the slot thread", "admitted", "slot"),
    ("prefill (in the slot)", "slot", "prefill"),
    ("first sample", "prefill", "sample"),
    ("detokenize, first Delta emitted", "sample", "delta"),
    ("first Delta -> first SSE write", "delta", "first_write"),
    ("SSE write -> client", "first_write", "receive"),
]
V1_SIDE = [("log rows written (admitted -> logged)", "admitted", "logged")]
WS_PARTS = [
    ("websocket frame in", "send", "request"),
    ("access check", "request", "auth"),
    ("usage limits reserved", "auth", "reserved"),
    # The new message is written with its reply's row, after admission (WS_SIDE).
    ("team's models + history read", "reserved", "history"),
    ("template + tokenization (+ grammar)", "history", "prompt"),
    ("admission (scheduler submit)", "prompt", "admitted"),
    ("hand-off to the slot thread", "admitted", "slot"),
    ("prefill (in the slot)", "slot", "prefill"),
    ("first sample", "prefill", "sample"),
    ("detokenize, first Delta emitted", "sample", "delta"),
    ("first Delta -> first broadcast", "delta", "publish"),
    ("broadcast -> frame written", "publish", "first_write"),
    ("frame -> client", "first_write", "receive"),
]
WS_SIDE = [("user message + reply row written (admitted -> logged)", "admitted", "logged")]


@contextlib.contextmanager
def database_url(database: str, postgres: str) -> Iterator[str | None]:
    if database == "sqlite":
        yield None
        return
    from bench.drill import postgres_database

    with postgres_database(postgres) as url:
        yield url


def raw_ttft(model: ChatModel, ids: list[int], cached: int, threads: int) -> float:
    """The raw engine's time to the first token in this process's copy of the model: ``ids[cached:]``
    evaluated after ``ids[:cached]`` (in the cache, untimed), then an argmax."""
    ctx = model.scheduler.slots[0].ctx
    return first_token_seconds(ctx, ids, cached, threads=threads, batch_size=64)


class Traces:
    """The server's trace file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.unread: list[dict] = []  # lines read while looking for another kind

    def new(self, kind: str, timeout: float = 60, job: str | None = None) -> dict:
        """The next line of ``kind`` (about ``job``, if given: the server writes lines for jobs this
        benchmark did not send, such as its readiness check's)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, trace in enumerate(self.unread):
                if trace["kind"] == kind and job in (None, trace.get("job")):
                    return self.unread.pop(i)
            if self.path.exists():
                with self.path.open() as fh:
                    fh.seek(self.offset)
                    line = fh.readline()
                    if line.endswith("\n"):
                        self.offset = fh.tell()
                        self.unread.append(json.loads(line))
                        continue
            time.sleep(0.01)
        raise RuntimeError(f"no {kind} trace within {timeout} s")


def v1_request(server: LiveServer, messages: list[dict], bias: dict[str, float]) -> tuple[float, float]:
    """(send, receive): the client's monotonic times of sending and of the first content chunk."""
    body = {
        "model": "gpt-3.5-turbo",
        "messages": messages,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "logit_bias": bias,
        "stream": True,
    }
    payload = json.dumps(body)
    headers = {"Authorization": f"Bearer {server.keys['alice']}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.connect()  # the connection is not part of the server's path
    send = time.monotonic()
    conn.request("POST", "/v1/chat/completions", payload, headers)
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    receive = None
    for line in response:
        if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
            chunk = json.loads(line[6:])
            if receive is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                receive = time.monotonic()
    conn.close()
    if receive is None:
        raise RuntimeError("the stream had no content")
    return send, receive


SETUP_WS = """
import json, sys, django
django.setup()
from django.contrib.auth import get_user_model
from conversations import actions
from conversations.models import Team
alice = get_user_model().objects.get(username="alice")
alice.set_password(sys.argv[1]); alice.save()
team = Team.objects.get(name="alpha")
cold = [actions.start_conversation(alice, team, title=f"cold {i}", max_tokens=MAX_TOKENS,
        temperature=0.0, system_prompt=f"Chat {i} of {sys.argv[2]}.").pk for i in range(int(sys.argv[3]))]
warm = actions.start_conversation(alice, team, title="warm", max_tokens=MAX_TOKENS, temperature=0.0,
        system_prompt=WARM_SYSTEM).pk
print(json.dumps({"cold": cold, "warm": warm}))
""".replace("MAX_TOKENS", str(MAX_TOKENS)).replace("WARM_SYSTEM", json.dumps(WARM_SYSTEM))

# A delta: the whole body (the first, consumers.delta_fragment) or the open block; group 2 its HTML.
DELTA = re.compile(r'<div id="m-(\d+)-(?:body|open)" hx-swap-oob="innerHTML">(.+)</div>', re.S)
TAG = re.compile(r"<[^>]*>")
FINISHED = re.compile(r'class="msg msg-assistant status-(?!streaming)')


def ws_request(server: LiveServer, session: str, conversation_id: int, text: str) -> tuple[float, float]:
    from websockets.sync.client import connect

    with connect(
        f"ws://127.0.0.1:{server.port}/ws/c/{conversation_id}/",
        additional_headers={"Origin": server.url, "Cookie": f"sessionid={session}"},
        max_size=None,
    ) as ws:
        while 'id="messages"' not in (frame := ws.recv(timeout=60)):  # the page's first fragment
            pass
        send = time.monotonic()
        ws.send(json.dumps({"action": "send", "text": text}))
        receive = None
        while True:
            frame = ws.recv(timeout=120)
            if receive is None and (match := DELTA.search(frame)) and TAG.sub("", match.group(2)).strip():
                receive = time.monotonic()
            if FINISHED.search(frame):
                if receive is None:
                    raise RuntimeError("the reply ended with no text")
                return send, receive


def parts(trace: dict, send: float, receive: float, table: list[tuple[str, str, str]]) -> dict[str, float]:
    marks = {**trace["marks"], "send": send, "receive": receive}
    return {label: 1000 * (marks[b] - marks[a]) for label, a, b in table if a in marks and b in marks}


def one(model: ChatModel, traces: Traces, kind: str, threads: int, request, *args) -> dict:
    send, receive = request(*args)
    trace = traces.new(kind)
    in_server = traces.new("raw", job=trace["job"])["raw_s"]  # the server's own slot, once it ended
    raw = raw_ttft(model, trace["prompt_ids"], trace["cached"] or 0, threads)
    table = (V1_PARTS + V1_SIDE) if kind == "v1" else (WS_PARTS + WS_SIDE)
    marks = trace["marks"]
    model_s = marks["sample"] - marks["slot"]  # the model's own time in the reply: prefill + first sample
    return {
        "ttft_ms": 1000 * (receive - send),
        "raw_ms": 1000 * in_server,
        "overhead_ms": 1000 * (receive - send - in_server),
        "bench_raw_ms": 1000 * raw,
        "bench_overhead_ms": 1000 * (receive - send - raw),
        # The time outside the model (its slowdown by work beside it is not in this: a lower bound).
        "outside_model_ms": 1000 * (receive - send - model_s),
        "prompt_tokens": len(trace["prompt_ids"]),
        "evaluated": len(trace["prompt_ids"]) - (trace["cached"] or 0),
        "parts_ms": parts(trace, send, receive, table),
    }


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (both the one value when there is one)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def summary(rows: list[dict]) -> dict:
    labels = list(rows[0]["parts_ms"]) if rows else []
    ttft = statistics.median(r["ttft_ms"] for r in rows)
    raw = statistics.median(r["raw_ms"] for r in rows)
    return {
        "n": len(rows),
        "ttft_ms": ttft,
        "raw_ms": raw,
        "overhead_ms": statistics.median(r["overhead_ms"] for r in rows),
        # The per-round overhead is a difference of two noisy times: its spread, and the difference of
        # the two medians, say how far its median can be trusted.
        "overhead_quartiles_ms": quartiles([r["overhead_ms"] for r in rows]),
        "overhead_of_medians_ms": ttft - raw,
        "bench_raw_ms": statistics.median(r["bench_raw_ms"] for r in rows),
        "bench_overhead_ms": statistics.median(r["bench_overhead_ms"] for r in rows),
        "outside_model_ms": statistics.median(r["outside_model_ms"] for r in rows),
        "prompt_tokens": statistics.median(r["prompt_tokens"] for r in rows),
        "evaluated": statistics.median(r["evaluated"] for r in rows),
        "parts_ms": {
            label: statistics.median(r["parts_ms"][label] for r in rows if label in r["parts_ms"])
            for label in labels
        },
    }


def run_database(database: str, args: argparse.Namespace, model: ChatModel, bias: dict[str, float]) -> dict:
    results: dict = {}
    with database_url(database, args.postgres) as url:
        data_dir = Path(tempfile.mkdtemp(prefix=f"bench-ttft-{database}-"))
        trace_path = data_dir / "ttft.jsonl"
        env = {
            "CHAT_MODEL_PATH": str(args.model),
            "CHAT_SLOTS": str(args.slots),
            "CHAT_THREADS": str(args.threads),
            "CHAT_TTFT_TRACE": str(trace_path),
        }
        if url:
            env["DATABASE_URL"] = url
        server = LiveServer(data_dir, env).start()
        try:
            traces = Traces(trace_path)
            traces.offset = trace_path.stat().st_size if trace_path.exists() else 0
            tag = uuid.uuid4().hex[:8]
            rows: dict[str, list[dict]] = {"v1 cold": [], "v1 warm": [], "ws cold": [], "ws warm": []}
            session = conversations = None
            if "ws" in args.transports:
                out = subprocess.run(
                    [PYTHON, "-c", SETUP_WS, PASSWORD, tag, str(args.rounds + 1)],
                    cwd=ROOT,
                    env=server._env(),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                conversations = json.loads(out.stdout.strip().splitlines()[-1])
                session = server.log_in("alice", PASSWORD)
            # One transport after the other: the cold prompts then always go to the least recently
            # used slot, and the warm ones find their prefix in the other.
            for transport in args.transports:
                for i in range(args.rounds + 1):  # round 0 warms the path and is not counted
                    question = QUESTIONS[i % len(QUESTIONS)]
                    got: dict[str, dict] = {}
                    if transport == "v1":
                        cold = [
                            {"role": "system", "content": f"Session {i} of {tag}."},
                            {"role": "user", "content": question},
                        ]
                        warm = [
                            {"role": "system", "content": WARM_SYSTEM},
                            {"role": "user", "content": f"({i}) {question}"},
                        ]
                        got["v1 cold"] = one(
                            model, traces, "v1", args.threads, v1_request, server, cold, bias
                        )
                        got["v1 warm"] = one(
                            model, traces, "v1", args.threads, v1_request, server, warm, bias
                        )
                    else:
                        cid, wid = conversations["cold"][i], conversations["warm"]
                        got["ws cold"] = one(
                            model, traces, "ws", args.threads, ws_request, server, session, cid, question
                        )
                        got["ws warm"] = one(
                            model, traces, "ws", args.threads, ws_request, server, session, wid, question
                        )
                    for key, row in got.items():
                        if i:
                            rows[key].append(row)
                        print(
                            f"  {database} round {i} {key}: TTFT {row['ttft_ms']:.1f} ms,"
                            f" raw {row['raw_ms']:.1f} ms (bench process {row['bench_raw_ms']:.1f}),"
                            f" overhead {row['overhead_ms']:.1f} ms"
                            f" ({row['evaluated']}/{row['prompt_tokens']} evaluated)",
                            flush=True,
                        )
            for key, found in rows.items():
                if found:
                    results[key] = {"summary": summary(found), "rounds": found}
        finally:
            server.stop()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("CHAT_MODEL_PATH") or default_model_path())
    parser.add_argument("--rounds", type=int, default=15, help="counted rounds per database")
    parser.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    parser.add_argument("--transports", nargs="+", default=["v1", "ws"], choices=["v1", "ws"])
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--slots", type=int, default=2, help="CHAT_SLOTS of the server")
    parser.add_argument("--threads", type=int, default=CORES, help="CHAT_THREADS (and the raw engine's)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ttft.json"))
    args = parser.parse_args(argv)

    cache = Path(os.environ.get("CHAT_DATA_DIR", ROOT / ".data")) / "models"
    model = ChatModel.load(args.model, cache_dir=cache, slots=1, threads=args.threads)
    bias = {str(i): -100.0 for i in model.tokenizer.special_ids}
    results: dict = {
        "machine": {"cores": CORES},
        "model": args.model,
        "threads": args.threads,
        "slots": args.slots,
    }
    try:
        for database in args.databases:
            results[database] = run_database(database, args, model, bias)
    finally:
        model.close()

    for database in args.databases:
        for key, found in results[database].items():
            s = found["summary"]
            print(
                f"\n{database}, {key} ({s['n']} rounds, {s['evaluated']:.0f} of {s['prompt_tokens']:.0f}"
                " prompt tokens evaluated), medians in ms"
            )
            rows = [
                ("server TTFT (client send -> first text)", s["ttft_ms"]),
                ("raw engine TTFT in the server's slot (eval + argmax)", s["raw_ms"]),
                ("overhead: server - raw", s["overhead_ms"]),
                ("  its first quartile", s["overhead_quartiles_ms"][0]),
                ("  its third quartile", s["overhead_quartiles_ms"][1]),
                ("  median server TTFT - median raw", s["overhead_of_medians_ms"]),
                ("raw engine TTFT in the bench process", s["bench_raw_ms"]),
                ("overhead against the bench process's raw", s["bench_overhead_ms"]),
                ("time outside the model (TTFT - its prefill and sample)", s["outside_model_ms"]),
                *s["parts_ms"].items(),
            ]
            width = max(len(label) for label, _ in rows)
            for label, value in rows:
                print(f"  {label:<{width}}  {value:8.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
