"""The /v1 API under load: decode speed through SSE vs the raw engine loop, TTFT, concurrent streams.

Run with nothing else on the machine: ``.venv/bin/python -m bench.api`` (``--help`` for the knobs;
``--ttft`` runs bench/ttft.py instead: the time to the first token in parts, /v1 and websocket).
It starts a real server (Daphne in a subprocess, its own data folder, keys made by createapikey),
and keeps an in-process copy of the model for the raw loop; the two never run at the same time, and
their runs are interleaved so that both see the same machine. Prints a table and writes
bench/results/api.json.

- decode tok/s through SSE: one greedy stream of --tokens tokens (control tokens banned, so it runs
  to the end), timed from its first content chunk to its last, against ``bench.run.raw_decode`` on
  the same prompt: one-token eval + argmax with no scheduler, HTTP or JSON at all;
- the event loop's CPU time per streamed token (runner, SSE encoding, HTTP writes): unlike the
  tok/s figures it does not depend on what else the machine is doing;
- TTFT: from sending the request to the first content chunk (the prompt is not in any cache);
- --clients concurrent streams (different prompts): every answer must be complete (all its tokens
  and a finish_reason), with the aggregate tok/s and the TTFT p50/p95.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.run import CORES, ROOT, default_model_path, raw_decode
from inference.model import ChatModel
from tests.live_server import LiveServer

STORY = "Write a long story about a lighthouse keeper."


@dataclass
class Stream:
    ttft: float  # request sent -> first content chunk
    decode_tps: float | None  # (tokens - 1) / (last chunk - first chunk)
    tokens: int
    finish_reason: str | None
    seconds: float


def stream(server: LiveServer, content: str, max_tokens: int, bias: dict[str, float]) -> Stream:
    body = {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": bias,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    start = time.perf_counter()
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(body),
        {"Authorization": f"Bearer {server.keys['alice']}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    first = last = None
    tokens, finish = 0, None
    for line in response:
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"in-band error: {chunk['error']}")
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk["choices"]:
            if choice["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
            finish = choice["finish_reason"] or finish
    end = time.perf_counter()
    conn.close()
    if first is None:
        raise RuntimeError("the stream had no content")
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else None
    return Stream(first - start, decode, tokens, finish, end - start)


def main_thread_cpu(pid: int) -> float:
    """CPU seconds used so far by a process's main thread: Daphne's event loop, where the runner,
    the SSE encoder and the HTTP writes run (the model runs in its slot threads)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def concurrent(
    server: LiveServer,
    clients: int,
    max_tokens: int,
    bias: dict[str, float],
    prompt: Callable[[int], str] = lambda i: f"{STORY} Its number is {i}.",
) -> dict:
    results: list[Stream | Exception] = [RuntimeError("not run")] * clients

    def run(i: int) -> None:
        try:
            results[i] = stream(server, prompt(i), max_tokens, bias)
        except Exception as exc:  # reported, not raised: every client's fate is a figure
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if isinstance(r, Stream)]
    complete = [r for r in ok if r.finish_reason in ("stop", "length") and r.tokens == max_tokens]
    ttfts = [r.ttft for r in ok]
    return {
        "clients": clients,
        "complete": len(complete),
        "errors": [str(r) for r in results if not isinstance(r, Stream)],
        "aggregate_tps": sum(r.tokens for r in ok) / wall,
        "ttft_p50": percentile(ttfts, 50) if ttfts else None,
        "ttft_p95": percentile(ttfts, 95) if ttfts else None,
        "wall_s": wall,
    }


def report(rows: list[tuple[str, str]], results: dict, out: Path) -> None:
    """Print the figures as an aligned table and write the results as JSON to ``out``."""
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


def main() -> None:
    if "--ttft" in sys.argv[1:]:  # the TTFT breakdown: bench/ttft.py, with the remaining arguments
        from bench import ttft

        ttft.main([a for a in sys.argv[1:] if a != "--ttft"])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("CHAT_MODEL_PATH") or default_model_path())
    parser.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved raw/SSE decode runs")
    parser.add_argument("--clients", type=int, default=4, help="concurrent streaming clients")
    parser.add_argument("--slots", type=int, default=2, help="CHAT_SLOTS of the server")
    parser.add_argument("--threads", type=int, default=CORES, help="CHAT_THREADS (and the raw loop's)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "api.json"))
    args = parser.parse_args()

    cache = Path(os.environ.get("CHAT_DATA_DIR", ROOT / ".data")) / "models"
    model = ChatModel.load(args.model, cache_dir=cache, slots=1, threads=args.threads)
    bias = {str(i): -100.0 for i in model.tokenizer.special_ids}
    prompt = model.prompt_ids([{"role": "user", "content": STORY}])
    server = LiveServer(
        Path(tempfile.mkdtemp(prefix="bench-api-")),
        {
            "CHAT_MODEL_PATH": str(args.model),
            "CHAT_SLOTS": str(args.slots),
            "CHAT_THREADS": str(args.threads),
            "CHAT_QUEUE_MAX": str(max(32, args.clients)),
        },
    ).start()
    try:
        # Warm both paths (page cache, allocations) before measuring.
        raw_decode(model, prompt, 16, args.threads)
        stream(server, STORY, 16, bias)
        raw, sse = [], []
        loop_cpu = 0.0
        for i in range(args.repeats):
            raw.append(raw_decode(model, prompt, args.tokens, args.threads))
            # A different prompt each time: no KV-cache reuse, so TTFT includes the whole prefill.
            before = main_thread_cpu(server.process.pid)
            sse.append(stream(server, f"{STORY} ({i})", args.tokens, bias))
            loop_cpu += main_thread_cpu(server.process.pid) - before
        model.close()
        crowd = concurrent(server, args.clients, args.tokens, bias)
    finally:
        server.stop()

    sse_tps = [s.decode_tps for s in sse if s.decode_tps]
    results = {
        "machine": {"cores": CORES},
        "model": args.model,
        "tokens": args.tokens,
        "slots": args.slots,
        "threads": args.threads,
        "raw_decode_tps": raw,
        "sse": [asdict(s) for s in sse],
        "sse_vs_raw": statistics.median(sse_tps) / statistics.median(raw) if sse_tps else None,
        # Independent of other load on the machine: what serving a token costs besides the model.
        "loop_cpu_ms_per_token": 1000 * loop_cpu / sum(s.tokens for s in sse),
        "concurrent": crowd,
    }
    rows = [
        ("raw engine decode (median tok/s)", f"{statistics.median(raw):.1f}"),
        ("SSE decode (median tok/s)", f"{statistics.median(sse_tps):.1f}" if sse_tps else "-"),
        ("SSE / raw", f"{results['sse_vs_raw']:.3f}" if results["sse_vs_raw"] else "-"),
        ("event-loop CPU per streamed token (ms)", f"{results['loop_cpu_ms_per_token']:.3f}"),
        ("TTFT, single stream (median s)", f"{statistics.median(s.ttft for s in sse):.3f}"),
        (f"{args.clients} clients: complete answers", f"{crowd['complete']} / {args.clients}"),
        (f"{args.clients} clients: aggregate tok/s", f"{crowd['aggregate_tps']:.1f}"),
        (f"{args.clients} clients: TTFT p50 / p95 (s)", f"{crowd['ttft_p50']:.2f} / {crowd['ttft_p95']:.2f}"),
    ]
    report(rows, results, Path(args.out))
    if crowd["complete"] != args.clients:
        sys.exit(f"only {crowd['complete']} of {args.clients} concurrent answers were complete")


if __name__ == "__main__":
    main()
