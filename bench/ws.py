"""The web chat's live answer under many viewers: decode speed and event-loop CPU with 1, 5 and 20
websocket viewers of one conversation, against the raw engine loop.

Run with nothing else on the machine: ``.venv/bin/python -m bench.ws`` (``--help`` for the knobs).
It starts a real server (``manage.py serve`` in a subprocess through bench/ws_serve.py, its own
data folder), and keeps an in-process copy of the model for the raw loop; the two never run at the
same time, and a raw run precedes each websocket run, so both see the same machine (each ratio is
one such pair's; --repeats pairs per number of viewers, the table gives the medians). Prints a table
and writes bench/results/ws.json.

For each number of viewers, one conversation shared with the team: the viewers connect (alice's
and bob's sessions in turn), the first sends the message, and all of them read every fragment until
the finished answer arrives. The reply bans the control tokens (bench/ws_serve.py), so it is
exactly --tokens long.

- decode tok/s: the reply's own timings as saved (completion tokens - 1 over duration - TTFT)
  against ``bench.run.raw_decode`` on the same prompt: one-token eval + argmax, no scheduler,
  rendering or websockets at all;
- event-loop CPU per token, over the first 100 tokens and over the last 100: the server's loop
  thread's CPU time (runner, group send, consumers, websocket writes), sampled at each delta the
  runner publishes (bench/ws_serve.py). Flat means a viewer costs the same at token 1,400 as at
  token 100 (before, each viewer re-rendered the whole answer at every delta). It does not depend
  on other load on the machine, unlike tok/s;
- the same per delta, and the tokens each delta carried: a delta costs about the same whatever it
  carries, so the runner holds each one for a few tokens (conversations/live/runner.py
  ``publish_wait``: at most 10 a second, 8 pieces each, or whatever came in 0.25 s); with deltas on
  a clock alone the CPU per token rose whenever decoding slowed (a longer context, a busier
  machine) while each delta cost the same. The per-delta figures show which it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.run import CORES, ROOT, default_model_path, raw_decode
from inference.model import ChatModel
from tests.live_server import PYTHON, LiveServer

STORY = "Write a long story about a lighthouse keeper."
WINDOW = 100  # tokens at each end of the answer whose event-loop CPU is compared

# Run in the server's environment: sessions for alice and bob, one shared conversation per run.
SETUP = """
import json, sys, django
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
from conversations import actions
from conversations.models import Team
lengths = json.loads(sys.argv[1])  # the max tokens of each conversation
User = get_user_model()
alice, bob = User.objects.get(username="alice"), User.objects.get(username="bob")
alpha = Team.objects.get(name="alpha")
cookies = []
for user in (alice, bob):
    client = Client()
    client.force_login(user)
    cookies.append(client.cookies["sessionid"].value)
chats = [
    actions.start_conversation(alice, alpha, visibility="team", temperature=0, max_tokens=n).pk
    for n in lengths
]
print(json.dumps({"cookies": cookies, "conversations": chats}))
"""


@dataclass
class Run:
    viewers: int
    raw_tps: float
    ws_tps: float
    ratio: float
    tokens: int
    loop_cpu_ms_per_token_first: float
    loop_cpu_ms_per_token_last: float
    loop_cpu_last_vs_first: float
    loop_cpu_ms_per_token: float  # over the whole answer
    loop_cpu_ms_per_delta_first: float
    loop_cpu_ms_per_delta_last: float
    loop_cpu_per_delta_last_vs_first: float
    tokens_per_delta_first: float
    tokens_per_delta_last: float
    deltas_per_viewer: list[int]
    wall_s: float
    # The viewers' own CPU (this process, reading every frame), per token: on 2 cores it is taken
    # from the model too, although on a real site the viewers are other machines.
    client_cpu_ms_per_token: float


async def watch(server: LiveServer, conversation: int, cookies: list[str], viewers: int) -> list[int]:
    """Connect ``viewers`` sockets, send the story from the first, read until every socket has the
    finished answer; returns how many delta fragments each socket got."""
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{server.port}/ws/c/{conversation}/"
    origin = f"http://127.0.0.1:{server.port}"
    sockets = []
    for i in range(viewers):
        socket = await connect(
            url,
            origin=origin,
            additional_headers={"Cookie": f"sessionid={cookies[i % len(cookies)]}"},
            max_size=None,
            open_timeout=60,
        )
        await socket.recv()  # the conversation as it is (the page's list)
        sockets.append(socket)

    async def read(socket) -> int:
        deltas = 0
        while True:
            frame = await socket.recv()
            if 'hx-swap-oob="innerHTML">' in frame and frame.startswith('<div id="m-'):
                deltas += 1
            if "msg-assistant status-" in frame and "status-streaming" not in frame:
                return deltas

    readers = [asyncio.create_task(read(s)) for s in sockets]
    await sockets[0].send(json.dumps({"action": "send", "text": STORY}))
    try:
        return list(await asyncio.wait_for(asyncio.gather(*readers), timeout=1800))
    finally:
        for socket in sockets:
            await socket.close()


@dataclass
class LoopCpu:
    """The event loop's CPU over the first and the last WINDOW tokens of one answer, per token and
    per delta (one publish: one render handed out, one group send, each viewer's frame), and the
    tokens each delta carried there."""

    per_token_first: float
    per_token_last: float
    per_token: float  # over the whole answer
    per_delta_first: float
    per_delta_last: float
    tokens_per_delta_first: float
    tokens_per_delta_last: float


def loop_cpu(trace: Path, message_id: int) -> LoopCpu:
    """Event-loop CPU (ms) per token and per delta over the first and the last WINDOW tokens, and
    per token overall. The CPU per token is the CPU per delta divided by the tokens a delta carries
    (``runner.publish_wait``: 8 unless decoding is slower than ~32 tokens a second). The per-delta
    figures tell the two apart."""
    rows = []
    for line in trace.read_text().splitlines():
        mid, tokens, cpu, _wall = line.split()
        if int(mid) == message_id:
            rows.append((int(tokens), float(cpu)))
    if len(rows) < 3:
        raise RuntimeError(f"only {len(rows)} deltas were traced: make the answer longer (--tokens)")

    first, last = rows[0], rows[-1]
    early = next((i for i, r in enumerate(rows) if r[0] >= first[0] + WINDOW), len(rows) - 1)
    late = next((i for i in range(len(rows) - 1, -1, -1) if rows[i][0] <= last[0] - WINDOW), 0)

    def window(a: int, b: int) -> tuple[float, float, float]:
        """ms per token, ms per delta, tokens per delta from row ``a`` to row ``b``."""
        tokens, deltas, cpu = rows[b][0] - rows[a][0], max(1, b - a), 1000 * (rows[b][1] - rows[a][1])
        return cpu / max(1, tokens), cpu / deltas, tokens / deltas

    token_first, delta_first, tpd_first = window(0, early)
    token_last, delta_last, tpd_last = window(late, len(rows) - 1)
    overall, _, _ = window(0, len(rows) - 1)
    return LoopCpu(token_first, token_last, overall, delta_first, delta_last, tpd_first, tpd_last)


def median_run(runs: list[Run]) -> Run:
    """One row of the table: every figure the median of its runs' (each ratio a pair's own)."""
    fields = {}
    for name, value in asdict(runs[0]).items():
        if isinstance(value, float):
            fields[name] = statistics.median(getattr(r, name) for r in runs)
        elif isinstance(value, list):
            fields[name] = [n for r in runs for n in getattr(r, name)]
        else:
            fields[name] = value
    return Run(**fields)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("CHAT_MODEL_PATH") or default_model_path())
    parser.add_argument("--tokens", type=int, default=1500, help="tokens of the answer")
    parser.add_argument(
        "--viewers", default="1,5,20", help="numbers of websocket viewers, --repeats runs each"
    )
    parser.add_argument("--threads", type=int, default=CORES, help="CHAT_THREADS (and the raw loop's)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="raw/websocket pairs per number of viewers; the table gives each figure's median",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ws.json"))
    args = parser.parse_args()
    counts = [int(v) for v in args.viewers.split(",")]

    cache = Path(os.environ.get("CHAT_DATA_DIR", ROOT / ".data")) / "models"
    model = ChatModel.load(args.model, cache_dir=cache, slots=1, threads=args.threads)
    prompt = model.prompt_ids([{"role": "user", "content": STORY}])
    folder = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    trace = folder / "trace.txt"
    server = LiveServer(
        folder / "site",
        {
            "CHAT_MODEL_PATH": str(args.model),
            "CHAT_SLOTS": "1",
            "CHAT_THREADS": str(args.threads),
            "BENCH_WS_TRACE": str(trace),
        },
        command=["-m", "bench.ws_serve"],
    ).start()
    runs: list[Run] = []
    try:
        out = subprocess.run(
            [PYTHON, "-c", SETUP, json.dumps([16] + [args.tokens] * len(counts) * args.repeats)],
            cwd=ROOT,
            env=server._env(),
            capture_output=True,
            text=True,
            check=True,
        )
        setup = json.loads(out.stdout.strip().splitlines()[-1])
        cookies, chats = setup["cookies"], setup["conversations"]
        # Warm both paths (page cache, allocations) before measuring.
        raw_decode(model, prompt, 16, args.threads)
        asyncio.run(watch(server, chats[0], cookies, 1))
        # Each websocket run right after a raw one: the machine's speed drifts (the raw loop moved
        # between 68 and 90 tok/s from one run to the next), so each ratio is of a pair.
        plan = [v for v in counts for _ in range(args.repeats)]
        for viewers, conversation in zip(plan, chats[1:], strict=True):
            raw = raw_decode(model, prompt, args.tokens, args.threads)
            start = time.perf_counter()
            client_cpu = time.process_time()
            deltas = asyncio.run(watch(server, conversation, cookies, viewers))
            client_cpu = time.process_time() - client_cpu
            wall = time.perf_counter() - start
            (row,) = server.query(
                "SELECT id, completion_tokens, ttft, duration, status FROM conversations_message"
                " WHERE conversation_id = ? AND role = 'assistant'",
                conversation,
            )
            if row["status"] != "complete":
                raise RuntimeError(f"the answer ended {row['status']}")
            tps = (row["completion_tokens"] - 1) / (row["duration"] - row["ttft"])
            cpu = loop_cpu(trace, row["id"])
            runs.append(
                Run(
                    viewers=viewers,
                    raw_tps=raw,
                    ws_tps=tps,
                    ratio=tps / raw,
                    tokens=row["completion_tokens"],
                    loop_cpu_ms_per_token_first=cpu.per_token_first,
                    loop_cpu_ms_per_token_last=cpu.per_token_last,
                    loop_cpu_last_vs_first=ratio(cpu.per_token_last, cpu.per_token_first),
                    loop_cpu_ms_per_token=cpu.per_token,
                    loop_cpu_ms_per_delta_first=cpu.per_delta_first,
                    loop_cpu_ms_per_delta_last=cpu.per_delta_last,
                    loop_cpu_per_delta_last_vs_first=ratio(cpu.per_delta_last, cpu.per_delta_first),
                    tokens_per_delta_first=cpu.tokens_per_delta_first,
                    tokens_per_delta_last=cpu.tokens_per_delta_last,
                    deltas_per_viewer=deltas,
                    wall_s=wall,
                    client_cpu_ms_per_token=1000 * client_cpu / row["completion_tokens"],
                )
            )
    finally:
        model.close()
        server.stop()

    medians = [median_run([r for r in runs if r.viewers == v]) for v in counts]
    results = {
        "machine": {"cores": CORES},
        "model": args.model,
        "tokens": args.tokens,
        "threads": args.threads,
        "window_tokens": WINDOW,
        "repeats": args.repeats,
        "runs": [asdict(r) for r in runs],
        "medians": [asdict(r) for r in medians],
    }
    header = (
        "viewers",
        "raw tok/s",
        "ws tok/s",
        "ws/raw",
        f"loop ms/tok first {WINDOW}",
        f"last {WINDOW}",
        "last/first",
        "ms/delta first",
        "last",
        "last/first",
        "tok/delta first",
        "last",
        "viewers' CPU ms/tok",
    )
    table = [header] + [
        (
            str(r.viewers),
            f"{r.raw_tps:.1f}",
            f"{r.ws_tps:.1f}",
            f"{r.ratio:.3f}",
            f"{r.loop_cpu_ms_per_token_first:.3f}",
            f"{r.loop_cpu_ms_per_token_last:.3f}",
            f"{r.loop_cpu_last_vs_first:.2f}",
            f"{r.loop_cpu_ms_per_delta_first:.3f}",
            f"{r.loop_cpu_ms_per_delta_last:.3f}",
            f"{r.loop_cpu_per_delta_last_vs_first:.2f}",
            f"{r.tokens_per_delta_first:.1f}",
            f"{r.tokens_per_delta_last:.1f}",
            f"{r.client_cpu_ms_per_token:.3f}",
        )
        for r in medians
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out_path}")
    print(f"medians of {args.repeats} pairs; each ratio is a pair's (raw run, then websocket run)")
    failed = [r.viewers for r in medians if r.ratio < 0.95 or not 0.8 <= r.loop_cpu_last_vs_first <= 1.2]
    if failed:
        sys.exit(f"below the goal (ws/raw >= 0.95, loop CPU last/first within ±20%) with {failed} viewers")


if __name__ == "__main__":
    main()
