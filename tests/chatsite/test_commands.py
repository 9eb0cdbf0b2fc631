"""The operator commands: checkmodel and the terminal chat (real default model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.fixtures_model import default_model_path
from tests.tiny_gguf import write_tiny_llama

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        input=input,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CHAT_THREADS": "1", **env},  # one thread: see LiveServer
    )


@pytest.mark.model
def test_it_validates_and_loads_the_default_model(capsys) -> None:
    call_command("checkmodel", str(default_model_path()))
    out = capsys.readouterr().out
    assert "llama, 30 layers" in out and "gpt2 vocabulary of 49152 tokens" in out
    assert "loaded and evaluated one token" in out and "OK" in out


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: d / "missing.gguf", "does not exist"),
        (lambda d: (d / "notes.gguf", (d / "notes.gguf").write_text("hello"))[0], "not a GGUF file"),
        (
            lambda d: (
                d / "cut.gguf",
                (d / "cut.gguf").write_bytes(default_model_path().read_bytes()[:5_000_000]),
            )[0],
            "truncated",
        ),
        (lambda d: write_tiny_llama(d / "falcon.gguf", architecture="falcon"), "architecture 'falcon'"),
    ],
    ids=["missing", "not-gguf", "truncated", "falcon"],
)
def test_it_names_the_file_and_the_reason_for_a_bad_model(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(CommandError) as info:
        call_command("checkmodel", str(path))
    assert str(path) in str(info.value) and reason in str(info.value)
    assert "Failed to create LLM" not in str(info.value)


@pytest.mark.slow  # a manage.py process
def test_it_reports_a_bad_model_path_as_a_system_check_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 8)
    result = manage("check", CHAT_MODEL_PATH=str(bad))
    assert result.returncode != 0
    assert "chatsite.E003" in result.stderr and str(bad) in result.stderr


@pytest.mark.model
def test_it_answers_a_question_in_the_terminal() -> None:
    result = manage("chat", "What is the capital of France?", "--temperature", "0", "--max-tokens", "12")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) > 0


@pytest.mark.model
def test_it_keeps_the_conversation_in_interactive_mode() -> None:
    result = manage(
        "chat",
        "--temperature",
        "0.7",
        # No --seed: a seeded request evaluates its whole prompt afresh (reproducible seeds,
        # inference/generate.py), and this test is about the slot's prefix reuse.
        "--max-tokens",
        "10",
        "--stats",
        "--system",
        "Be brief.",
        input="Hello, who are you?\nAnd what can you do?\n\n",
    )
    assert result.returncode == 0, result.stderr
    stats = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(stats) == 2
    # The second turn's prompt starts with the whole first exchange, which the slot still holds.
    first_prompt = int(stats[0].split("prompt ")[1].split()[0])
    cached = int(stats[1].split("(")[1].split()[0])
    assert cached >= first_prompt


@pytest.mark.slow  # a manage.py process
def test_it_rejects_out_of_range_sampling_options() -> None:
    result = manage("chat", "hi", "--temperature", "3")
    assert result.returncode != 0
    assert "--temperature" in result.stderr
