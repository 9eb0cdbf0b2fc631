"""A terminal chat with the configured model, for operators and smoke tests."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from conversations.runtime import ModelNotReady, get_runtime
from inference.jobs import Delta, Finished, Overloaded, Queued, SchedulerError
from inference.sampling import SamplingError, SamplingParams


class Command(BaseCommand):
    help = "Chat with the model in the terminal. With a question: answer it and exit; without: interactive."

    def add_arguments(self, parser):
        parser.add_argument("question", nargs="?", help="ask this and exit (default: an interactive prompt)")
        parser.add_argument("--temperature", type=float, default=0.7)
        parser.add_argument("--top-p", type=float, default=1.0)
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--max-tokens", type=int, default=None)
        parser.add_argument("--system", default=None, help="a system prompt")
        parser.add_argument(
            "--stats", action="store_true", help="print token counts and timings after each answer"
        )

    def handle(self, *args, question=None, system=None, stats=False, **opts):
        params = SamplingParams(
            temperature=opts["temperature"],
            top_p=opts["top_p"],
            seed=opts["seed"],
            max_tokens=opts["max_tokens"],
        )
        runtime = get_runtime()
        if question is None:
            self.stderr.write(f"loading {runtime.model_id} ...")
        try:
            model = runtime.load()
            params.validate(model.engine.vocab_size)
        except ModelNotReady as exc:
            raise CommandError(f"the model could not be loaded: {exc}") from None
        except SamplingError as exc:
            raise CommandError(f"--{exc.param.replace('_', '-')}: {exc}") from None
        messages: list[dict] = [{"role": "system", "content": system}] if system else []
        try:
            if question is not None:
                self._turn(model, messages, question, params, stats)
                return
            self.stderr.write("type a message, or an empty line / Ctrl-D to quit")
            while True:
                try:
                    line = input("> ")
                except EOFError:
                    break
                if not line.strip():
                    break
                self._turn(model, messages, line, params, stats)
        finally:
            runtime.close()

    def _turn(self, model, messages, text, params, stats) -> None:
        messages.append({"role": "user", "content": text})
        try:
            job = model.scheduler.submit(model.prompt_ids(messages), params, user_key="terminal")
        except Overloaded as exc:
            raise CommandError(f"the model is busy: {exc}") from None
        except SchedulerError as exc:
            messages.pop()
            raise CommandError(str(exc)) from None
        try:
            for event in job.events():
                if isinstance(event, Queued):
                    self.stderr.write(f"(waiting, {event.n_ahead} ahead)")
                elif isinstance(event, Delta):
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, Finished):
                    sys.stdout.write("\n")
                    sys.stdout.flush()
                    self._finish(messages, event, stats)
        except KeyboardInterrupt:
            job.cancel()
            result = job.wait()
            sys.stdout.write("\n")
            if result is not None:
                self._finish(messages, result, stats)

    def _finish(self, messages, event: Finished, stats: bool) -> None:
        if event.reason == "error":
            self.stderr.write(f"error: {event.error}")
        messages.append({"role": "assistant", "content": event.text, "token_ids": event.token_ids})
        if stats:
            t = event.timings
            rate = f"{t.decode_tokens_per_second:.1f} tok/s" if t.decode_tokens_per_second else "-"
            ttft = f"{t.ttft:.2f}" if t.ttft is not None else "-"
            self.stderr.write(
                f"[{event.reason}; prompt {event.usage.prompt_tokens} tokens ({t.cached_tokens} cached), "
                f"completion {event.usage.completion_tokens}; ttft {ttft} s; {rate}]"
            )
