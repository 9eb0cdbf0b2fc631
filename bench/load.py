"""The overload burst: several bursts of 10x what the slots and the queue can hold, against a real
server (`manage.py serve`, the real default model).

It prints the status-code counts (only 200 and 429 are right), the 5xx count (must be 0), the
server's peak resident memory (VmHWM) before the first burst and after the last, its RSS after each
burst, and whether the logged replies equal the successful answers (a refused call writes nothing).

    .venv/bin/python -m bench.load                  # 5 bursts of 30 against 1 slot + 2 queued
    .venv/bin/python -m bench.load --bursts 10 --slots 2 --queue 4

Run it with nothing else on the machine. Results: bench/results/load.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.live_server import LiveServer

ROOT = Path(__file__).resolve().parents[1]


def memory_mb(pid: int, field_name: str) -> float:
    """``VmRSS`` or ``VmHWM`` (the peak) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field_name} for process {pid}")


@dataclass
class LoadResult:
    slots: int
    queue: int
    burst: int
    bursts: int
    statuses: dict[int, int] = field(default_factory=dict)
    server_errors: int = 0  # 5xx: must be 0
    retry_after_missing: int = 0  # 429s without Retry-After: must be 0
    logged_replies: int = 0  # assistant messages written during the bursts
    refused_logged: int = 0  # conversations logged for refused calls: must be 0
    peak_before_mb: float = 0.0
    peak_after_mb: float = 0.0
    rss_after_each_mb: list[float] = field(default_factory=list)

    @property
    def successes(self) -> int:
        return self.statuses.get(200, 0)


def overload(
    root: Path, *, bursts: int, slots: int = 1, queue: int = 2, factor: int = 10, threads: int = 2
) -> LoadResult:
    size = factor * (slots + queue)
    result = LoadResult(slots, queue, size, bursts)
    server = LiveServer(
        root / "load-site",
        {"CHAT_SLOTS": str(slots), "CHAT_QUEUE_MAX": str(queue), "CHAT_THREADS": str(threads)},
        command=["manage.py", "serve"],
    ).start()
    try:
        body = {"model": "gpt-3.5-turbo", "max_tokens": 6, "logit_bias": {"2": -100}}

        def call(i: int) -> tuple[int, dict[str, str]]:
            request = {
                **body,
                "messages": [{"role": "user", "content": f"Count to {i}."}],
                "user": f"burst-{i}",
            }
            status, headers, _ = server.request("POST", "/v1/chat/completions", request, timeout=300)
            return status, headers

        def replies() -> int:
            sql = "SELECT COUNT(*) AS n FROM conversations_message WHERE role = 'assistant'"
            return server.query(sql)[0]["n"]

        before = replies()
        result.peak_before_mb = memory_mb(server.process.pid, "VmHWM")
        counts: Counter[int] = Counter()
        for _ in range(bursts):
            with ThreadPoolExecutor(max_workers=size) as pool:
                answers = list(pool.map(call, range(size)))
            counts.update(status for status, _ in answers)
            result.retry_after_missing += sum(1 for s, h in answers if s == 429 and not h.get("Retry-After"))
            result.rss_after_each_mb.append(round(memory_mb(server.process.pid, "VmRSS"), 1))
        result.peak_after_mb = memory_mb(server.process.pid, "VmHWM")
        result.statuses = dict(sorted(counts.items()))
        result.server_errors = sum(n for status, n in counts.items() if status >= 500)
        result.logged_replies = replies() - before
        sql = "SELECT COUNT(*) AS n FROM conversations_conversation WHERE request_user LIKE 'burst-%'"
        result.refused_logged = server.query(sql)[0]["n"] - result.successes
    finally:
        server.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--queue", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        r = overload(Path(tmp), bursts=args.bursts, slots=args.slots, queue=args.queue)
    print(f"{r.bursts} bursts of {r.burst} requests against {r.slots} slot(s) + {r.queue} queued")
    print(f"status codes: {r.statuses}   5xx: {r.server_errors}")
    print(f"429 without Retry-After: {r.retry_after_missing}   refused calls logged: {r.refused_logged}")
    print(f"successes: {r.successes}   replies logged: {r.logged_replies}")
    print(f"peak RSS (VmHWM): {r.peak_before_mb:.1f} MB before, {r.peak_after_mb:.1f} MB after")
    print(f"RSS after each burst (MB): {r.rss_after_each_mb}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**asdict(r), "successes": r.successes}, indent=2) + "\n")
    print(f"written to {args.out}")
    ok = r.server_errors == 0 and r.logged_replies == r.successes and r.refused_logged == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
