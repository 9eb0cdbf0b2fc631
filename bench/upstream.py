"""chatsite in front of an upstream: the same load sent directly to the upstream and through chatsite.

``.venv/bin/python -m bench.upstream`` (``--help`` for the knobs). It starts two real servers, each
``manage.py serve`` with its own data folder:

- the upstream: chatsite with the real default model (one thread: two model processes must never
  share the two cores with two threads each);
- the front: chatsite with no model work of its own (a tiny generated model it never runs), the
  upstream added by ``manage.py addupstream`` and ``CHAT_DEFAULT_MODEL`` set to the upstream's
  model, so that the same request (``gpt-3.5-turbo``) goes to the same model either way.

Measured, with direct and through-chatsite runs interleaved so that both see the same machine:

- decode tok/s of one greedy stream (control tokens banned, so it runs to the end), from its first
  content chunk to its last: through chatsite / direct (target ≥ 0.97);
- TTFT (request sent → first content chunk) of --ttft-pairs short calls each way, in pairs: the
  median of what chatsite adds in a pair (target ≤ 10 ms). Every prompt starts with its own tag,
  so no call finds its prompt in the upstream's prompt cache (which would favour the second of a
  pair) and each shares the same template prefix with the calls before it;
- --clients concurrent streams through chatsite (and the same directly): every answer complete;
- the front's CPU time per streamed token (its event loop, and the whole process): unlike the
  tok/s and TTFT figures it does not depend on what else the machine is doing.

Prints a table and writes bench/results/upstream.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.api import STORY, concurrent, main_thread_cpu, percentile, report, stream
from bench.run import CORES, ROOT, default_model_path
from inference.model import model_id_for
from tests.live_server import NO_EOS, PYTHON, LiveServer
from tests.tiny_gguf import write_tiny_llama


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by all of a process's threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_upstream(folder: Path, model: str, slots: int, clients: int) -> LiveServer:
    return LiveServer(
        folder / "upstream",
        {
            "CHAT_MODEL_PATH": model,
            "CHAT_SLOTS": str(slots),
            "CHAT_THREADS": "1",
            "CHAT_QUEUE_MAX": str(max(32, clients)),
        },
        command=["manage.py", "serve"],
    ).start(timeout=300)


def start_front(folder: Path, upstream: LiveServer, model_id: str, slots: int, clients: int) -> LiveServer:
    tiny = write_tiny_llama(folder / "front-tiny.gguf")
    front = LiveServer(
        folder / "front",
        {
            "CHAT_MODEL_PATH": str(tiny),
            "CHAT_SLOTS": "1",
            "CHAT_THREADS": "1",
            "CHAT_DEFAULT_MODEL": model_id,
        },
        command=["manage.py", "serve"],
    )
    front._setup()
    args = [
        "addupstream",
        "bench",
        f"{upstream.url}/v1",
        "--api-key-env",
        "BENCH_UPSTREAM_KEY",
        "--max-concurrent",
        str(slots),
        "--queue-max",
        str(max(32, clients)),
        "--model",
        model_id,
    ]
    env = {**front._env(), "BENCH_UPSTREAM_KEY": upstream.keys["alice"]}
    out = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"addupstream failed:\n{out.stdout}\n{out.stderr}")
    return front.start(setup=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("CHAT_MODEL_PATH") or default_model_path())
    parser.add_argument("--tokens", type=int, default=128, help="tokens per single stream")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved direct/through decode runs")
    parser.add_argument("--ttft-pairs", type=int, default=30, help="interleaved direct/through TTFT calls")
    parser.add_argument("--clients", type=int, default=16, help="concurrent streaming clients")
    parser.add_argument("--client-tokens", type=int, default=32, help="tokens per concurrent stream")
    parser.add_argument("--slots", type=int, default=4, help="the upstream's CHAT_SLOTS")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "upstream.json"))
    args = parser.parse_args()

    model_id = model_id_for(args.model)
    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="bench-upstream-"))
    upstream = start_upstream(folder, str(args.model), args.slots, args.clients)
    front = None
    try:
        front = start_front(folder, upstream, model_id, args.slots, args.clients)
        # Warm both paths (page cache, the front's connection pool) before measuring.
        for _ in range(3):
            stream(upstream, f"(warm) {STORY}", 8, NO_EOS)
            stream(front, f"(warm) {STORY}", 8, NO_EOS)
        first_direct, first_through = [], []
        for i in range(args.ttft_pairs):
            # The order alternating, each prompt its own (see the module's docstring).
            pair = [(first_direct, upstream, "d"), (first_through, front, "t")]
            for out, server, tag in pair if i % 2 == 0 else reversed(pair):
                out.append(stream(server, f"({tag}{i}) {STORY}", 2, NO_EOS))
        direct, through = [], []
        loop_cpu = process_cpu = 0.0
        assert front.process is not None
        pid = front.process.pid
        for i in range(args.repeats):
            pair = [(direct, upstream, "D"), (through, front, "T")]
            for out, server, tag in pair if i % 2 == 0 else reversed(pair):
                loop_before, process_before = main_thread_cpu(pid), process_cpu_seconds(pid)
                out.append(stream(server, f"({tag}{i}) {STORY}", args.tokens, NO_EOS))
                if server is front:
                    loop_cpu += main_thread_cpu(pid) - loop_before
                    process_cpu += process_cpu_seconds(pid) - process_before
        # Their own prompts too: the second crowd must not find the first's in the prompt cache.
        crowd_direct = concurrent(
            upstream, args.clients, args.client_tokens, NO_EOS, lambda i: f"(c{i}) {STORY}"
        )
        crowd_through = concurrent(
            front, args.clients, args.client_tokens, NO_EOS, lambda i: f"(C{i}) {STORY}"
        )
    finally:
        if front is not None:
            front.stop()
        upstream.stop()

    direct_tps = statistics.median(s.decode_tps for s in direct if s.decode_tps)
    through_tps = statistics.median(s.decode_tps for s in through if s.decode_tps)
    ttft_direct = statistics.median(s.ttft for s in first_direct)
    ttft_through = statistics.median(s.ttft for s in first_through)
    added = sorted(t.ttft - d.ttft for d, t in zip(first_direct, first_through, strict=True))
    results = {
        "machine": {
            "cores": CORES,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "model": args.model,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "upstream_slots": args.slots,
        "ttft_pairs": args.ttft_pairs,
        "ttft_direct": [vars(s) for s in first_direct],
        "ttft_through": [vars(s) for s in first_through],
        "direct": [vars(s) for s in direct],
        "through": [vars(s) for s in through],
        "decode_tps_direct": direct_tps,
        "decode_tps_through": through_tps,
        "through_vs_direct": through_tps / direct_tps,
        "ttft_median_direct_s": ttft_direct,
        "ttft_median_through_s": ttft_through,
        "ttft_added_median_ms": 1000 * statistics.median(added),
        "ttft_added_p10_p90_ms": [1000 * percentile(added, 10), 1000 * percentile(added, 90)],
        "ttft_added_difference_of_medians_ms": 1000 * (ttft_through - ttft_direct),
        "ttft_median_decode_runs_direct_s": statistics.median(s.ttft for s in direct),
        "ttft_median_decode_runs_through_s": statistics.median(s.ttft for s in through),
        "front_loop_cpu_ms_per_token": 1000 * loop_cpu / sum(s.tokens for s in through),
        "front_process_cpu_ms_per_token": 1000 * process_cpu / sum(s.tokens for s in through),
        "concurrent_direct": crowd_direct,
        "concurrent_through": crowd_through,
    }
    rows = [
        ("decode tok/s direct (median)", f"{direct_tps:.1f}"),
        ("decode tok/s through chatsite (median)", f"{through_tps:.1f}"),
        ("through / direct (target >= 0.97)", f"{results['through_vs_direct']:.3f}"),
        ("TTFT direct / through (median s)", f"{ttft_direct:.3f} / {ttft_through:.3f}"),
        (
            f"added TTFT, median of {args.ttft_pairs} pairs (ms, target <= 10)",
            f"{results['ttft_added_median_ms']:.1f}",
        ),
        (
            "added TTFT, p10 / p90 of the pairs (ms)",
            "{:.1f} / {:.1f}".format(*results["ttft_added_p10_p90_ms"]),
        ),
        (
            "added TTFT, difference of the medians (ms)",
            f"{results['ttft_added_difference_of_medians_ms']:.1f}",
        ),
        (
            "load average before / after (1 min)",
            f"{load_before[0]:.2f} / {results['machine']['load_average_after'][0]:.2f}",
        ),
        ("front event-loop CPU per token (ms)", f"{results['front_loop_cpu_ms_per_token']:.3f}"),
        ("front process CPU per token (ms)", f"{results['front_process_cpu_ms_per_token']:.3f}"),
    ]
    for name, crowd in (("direct", crowd_direct), ("through", crowd_through)):
        rows += [
            (f"{args.clients} clients {name}: complete", f"{crowd['complete']} / {args.clients}"),
            (f"{args.clients} clients {name}: aggregate tok/s", f"{crowd['aggregate_tps']:.1f}"),
            (
                f"{args.clients} clients {name}: TTFT p50 / p95 (s)",
                f"{crowd['ttft_p50']:.2f} / {crowd['ttft_p95']:.2f}" if crowd["ttft_p50"] else "-",
            ),
        ]
    report(rows, results, Path(args.out))
    if crowd_through["complete"] != args.clients:
        sys.exit(f"only {crowd_through['complete']} of {args.clients} streams through chatsite were complete")


if __name__ == "__main__":
    main()
