"""A model file damaged in the middle of its weights loads (its header and tensor table are fine) but
computes NaN: the same check as `checkmodel` (first logits finite) runs before the model is ready.
The state is then "error" with the reason, /ready answers 503, /v1 answers 503 in OpenAI's shape,
and the status page shows the reason to staff."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from django.test import Client

from conversations import actions
from conversations import runtime as runtime_module
from conversations.runtime import Runtime
from inference.gguf import ModelFileError, read_gguf
from inference.model import ChatModel
from tests.tiny_gguf import write_tiny_llama

pytestmark = pytest.mark.django_db(transaction=True)


def damaged_copy(folder: Path) -> Path:
    """A tiny model whose tensor data is overwritten with NaN floats in the middle of the file."""
    path = write_tiny_llama(folder / "damaged.gguf")
    data = bytearray(path.read_bytes())
    start, end = len(data) // 3 // 4 * 4, 2 * len(data) // 3  # float-aligned (the data is)
    nan = np.full((end - start) // 4, np.nan, dtype=np.float32).tobytes()
    data[start : start + len(nan)] = nan
    path.write_bytes(bytes(data))
    read_gguf(path)  # the header and tensor table still read: the start-up check passes
    return path


@pytest.fixture
def damaged_runtime(tmp_path: Path, settings):
    settings.CHAT_MODEL_PATH = str(damaged_copy(tmp_path))
    settings.CHAT_SLOTS = 1
    settings.CHAT_THREADS = 1
    with runtime_module.installed(Runtime()) as runtime:
        try:
            yield runtime
        finally:
            runtime.close()


def test_it_refuses_to_load_a_model_whose_first_logits_are_not_finite(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not finite"):
        ChatModel.load(damaged_copy(tmp_path), cache_dir=tmp_path / "cache", threads=1)


def test_it_loads_a_sound_tiny_model(tmp_path: Path) -> None:
    model = ChatModel.load(write_tiny_llama(tmp_path / "ok.gguf"), cache_dir=tmp_path / "cache", threads=1)
    model.close()


def test_it_reports_a_damaged_model_as_failed(damaged_runtime: Runtime, alice, alpha) -> None:
    damaged_runtime.start_loading()
    damaged_runtime._ready.wait(120)
    assert damaged_runtime.state == "error"
    assert "not finite" in damaged_runtime.error

    response = Client().get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["model"] == "error"

    _, raw = actions.create_api_key(alice, alpha)
    response = Client().post(
        "/v1/chat/completions",
        json.dumps({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "model_unavailable"
    assert "could not be loaded" in error["message"]
    assert damaged_runtime.model_path not in error["message"]

    staff = Client()
    staff.force_login(type(alice).objects.create_user("olivia", is_staff=True))
    page = staff.get("/status").content.decode()
    assert "not finite" in page and "error" in page
