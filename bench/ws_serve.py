"""bench/ws.py's server: ``manage.py serve`` with two bench-only hooks, installed before it starts.

- every web chat reply bans the model's control tokens, so it runs to its max tokens (the forced
  long answer: the page has no logit_bias of its own);
- each delta the runner publishes first appends a line to ``$BENCH_WS_TRACE``: the message id, the
  tokens (Delta events) taken so far, and the event-loop thread's CPU time and wall time then. The
  runner publishes on the event loop, so ``time.thread_time()`` there is the loop's CPU: the runner,
  the group send, each viewer's consumer and its websocket writes (renders run in their own thread).

Run by bench/ws.py as ``python -m bench.ws_serve --port N`` (the arguments of ``manage.py serve``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import django


def install(trace_path: str) -> None:
    from conversations.live import replies, runner

    sampling = replies._sampling

    def long_answer(*args, **kwargs):
        params = sampling(*args, **kwargs)
        banned = {i: -100.0 for i in replies.get_runtime().get().tokenizer.special_ids}
        return dataclasses.replace(params, logit_bias=banned)

    replies._sampling = long_answer

    trace = os.open(trace_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    publish = runner.Run._publish
    tokens: dict[int, int] = {}

    async def traced(self, message_id, choice_index, texts, *rest):
        tokens[message_id] = tokens.get(message_id, 0) + len(texts)
        line = f"{message_id} {tokens[message_id]} {time.thread_time():.6f} {time.perf_counter():.6f}\n"
        os.write(trace, line.encode())
        await publish(self, message_id, choice_index, texts, *rest)

    runner.Run._publish = traced


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    django.setup()
    install(os.environ["BENCH_WS_TRACE"])
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", "serve", *sys.argv[1:]])


if __name__ == "__main__":
    main()
