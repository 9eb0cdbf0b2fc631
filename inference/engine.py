"""The engine interface and its real implementation over ctransformers.

An ``Engine`` owns the weights (memory-mapped once by the OS page cache); each ``EngineContext``
is one KV cache (one scheduler slot). A context is used by one thread at a time.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from typing import Protocol

import numpy as np

from inference.gguf import GGUFInfo, ModelFileError, prepare_model, read_gguf


class EngineError(RuntimeError):
    """The engine failed while evaluating (the reply ends with finish_reason "error")."""


class EngineContext(Protocol):
    @property
    def tokens(self) -> list[int]:
        """The token ids whose keys/values are in this context's cache, in order."""

    def eval(self, ids: list[int], *, threads: int, batch_size: int) -> None:
        """Evaluate ``ids`` after ``tokens``; afterwards ``logits()`` is for the last of them."""

    def truncate(self, n: int) -> None:
        """Forget everything after the first ``n`` cached tokens."""

    def logits(self) -> np.ndarray:
        """The logits after the last evaluated token: a float32 view, valid until the next eval."""


class Engine(Protocol):
    info: GGUFInfo
    context_length: int
    vocab_size: int

    def new_context(self) -> EngineContext: ...


class CtransformersContext:
    def __init__(self, llm, vocab_size: int, context_length: int) -> None:
        self._llm = llm
        self._eval = llm.ctransformers_llm_batch_eval
        self.context_length = context_length
        self.tokens: list[int] = []
        ptr = llm.ctransformers_llm_logits_data()
        # A zero-copy view shared with C: `llm.logits` would copy through Python (~23 ms a token).
        self._logits = np.ctypeslib.as_array(ptr, shape=(vocab_size,))

    def eval(self, ids: list[int], *, threads: int, batch_size: int) -> None:
        n = len(ids)
        if n == 0:
            return
        n_past = len(self.tokens)
        # ctransformers does not fail past the context: it writes out of bounds. Refuse here.
        if n_past + n > self.context_length:
            raise EngineError(
                f"evaluating {n} tokens after {n_past} exceeds the context of {self.context_length}"
            )
        arr = (ctypes.c_int * n)(*ids)
        if not self._eval(arr, n, n_past, max(1, min(batch_size, n)), threads):
            raise EngineError("the model failed to evaluate the tokens")
        self.tokens.extend(ids)

    def truncate(self, n: int) -> None:
        del self.tokens[n:]

    def logits(self) -> np.ndarray:
        return self._logits


class CtransformersEngine:
    """Loads a GGUF through ctransformers after preparing a loadable copy of it."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        cache_dir: str | os.PathLike[str],
        context_length: int | None = None,
    ) -> None:
        self.info = read_gguf(model_path)
        self.model_path = str(model_path)
        ctx = context_length or self.info.context_length
        if ctx > self.info.context_length:
            raise ModelFileError(
                model_path, f"a context of {ctx} tokens exceeds the model's own {self.info.context_length}"
            )
        self.context_length = ctx
        self.vocab_size = self.info.vocab_size
        self.prepared_path = prepare_model(model_path, cache_dir)
        self._contexts: list[CtransformersContext] = []

    def _load(self):
        from ctransformers import LLM
        from ctransformers.llm import Config

        config = Config(context_length=self.context_length, gpu_layers=0, mmap=True, batch_size=64, threads=1)
        try:
            llm = LLM(str(self.prepared_path), model_type="llama", config=config, lib=_library_path())
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelFileError(
                self.model_path, f"ctransformers could not load the prepared copy ({exc})"
            ) from None
        n_vocab = llm.vocab_size
        if n_vocab != self.vocab_size:
            raise ModelFileError(
                self.model_path, f"the model has {n_vocab} logits but {self.vocab_size} tokens"
            )
        return llm

    def new_context(self) -> CtransformersContext:
        ctx = CtransformersContext(self._load(), self.vocab_size, self.context_length)
        self._contexts.append(ctx)
        return ctx


@lru_cache(maxsize=1)
def _library_path() -> str:
    """ctransformers' shared library for this CPU, found once per process. On x86-64 Linux the
    choice ctransformers makes (avx2, else avx with f16c, else basic) is made here from the flags
    in /proc/cpuinfo: its own lookup runs py-cpuinfo, which starts a Python process to read them
    (about 0.9 s of CPU, in every process that loads a model). Elsewhere, its own lookup."""
    import platform
    from pathlib import Path

    from ctransformers import lib
    from ctransformers.lib import find_library

    flags = _linux_cpu_flags() if platform.machine() == "x86_64" else None
    local = Path(lib.__file__).parent / "lib" / "local"  # a library built here: its lookup uses it
    if flags is None or local.is_dir():
        return find_library()
    if "avx2" in flags:
        return find_library("avx2")
    if "avx" in flags and "f16c" in flags:
        return find_library("avx")
    return find_library("basic")


def _linux_cpu_flags() -> set[str] | None:
    """The first processor's flags in /proc/cpuinfo, or None when there is no such line."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if name.strip() == "flags":
                    return set(value.split())
    except OSError:
        return None
    return None
