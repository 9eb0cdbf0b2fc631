from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from ctransformers import LLM, AutoModelForCausalLM

from inference.engine import _library_path
from inference.gguf import ModelFileError, prepare_model, read_gguf
from inference.tokenizer import Tokenizer
from tests.tiny_gguf import write_tiny_llama

TEXTS = [
    "Hello there! The sky is blue.",
    "What is the capital of France?  Paris,\nof course.",
    "Numbers 12 345 and 2026; prices 3.50 €.",
    "Unknown letters: żółw, 日本, 😀 fall back to bytes",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny")
    return {
        "gpt2": write_tiny_llama(folder / "tiny-gpt2.gguf", vocab="gpt2"),
        "spm": write_tiny_llama(folder / "tiny-spm.gguf", vocab="spm", dtype="f16", tied_embeddings=False),
    }


def _load(path: Path) -> LLM:
    # Given the library: ctransformers' own lookup runs py-cpuinfo on every load.
    return AutoModelForCausalLM.from_pretrained(
        str(path), model_type="llama", context_length=256, threads=1, lib=_library_path()
    )


def _gguf_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.gguf")) if folder.exists() else []


@pytest.mark.parametrize("kind", ["gpt2", "spm"])
def test_it_converts_and_loads_both_vocabularies(tiny: dict[str, Path], tmp_path: Path, kind: str) -> None:
    info = read_gguf(tiny[kind])
    tok = Tokenizer.from_gguf(info)
    prepared = prepare_model(tiny[kind], tmp_path / "cache")
    llm = _load(prepared)
    assert llm.vocab_size == info.vocab_size == tok.vocab_size
    ids = ([tok.bos_id] if tok.add_bos else []) + tok.encode(TEXTS[0])
    llm.eval(ids, threads=1)
    logits = np.ctypeslib.as_array(llm.ctransformers_llm_logits_data(), shape=(llm.vocab_size,))
    assert np.isfinite(logits).all()
    assert logits.std() > 0


def test_it_round_trips_text_with_the_tiny_spm_tokenizer(tiny: dict[str, Path]) -> None:
    tok = Tokenizer.from_gguf(read_gguf(tiny["spm"]))
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_space_prefix) == (1, 2, True, True)
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    # Characters outside the vocabulary become <0xNN> byte tokens.
    assert [tok.token_bytes(i) for i in tok.encode("😀")][-4:] == [bytes([b]) for b in "😀".encode()]
    assert tok.encode("</s>x")[0] == 2
    assert tok.decode(tok.encode("a</s>b")) == "a</s>b"


def test_it_tokenizes_spm_like_llama_cpp(tiny: dict[str, Path], tmp_path: Path) -> None:
    # The SentencePiece algorithm in ctransformers' bundled llama.cpp is the one the tokenizer
    # reproduces with score-ranked merges; it prefixes a space and adds BOS.
    tok = Tokenizer.from_gguf(read_gguf(tiny["spm"]))
    llm = _load(prepare_model(tiny["spm"], tmp_path / "cache"))
    for text in TEXTS:
        assert llm.tokenize(text) == [tok.bos_id, *tok.encode(text)]


def test_it_round_trips_text_with_the_tiny_gpt2_tokenizer(tiny: dict[str, Path]) -> None:
    tok = Tokenizer.from_gguf(read_gguf(tiny["gpt2"]))
    assert tok.special_ids == frozenset({0, 1, 2})
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|im_start|>user")[0] == 1


def test_it_reuses_the_converted_copy(tiny: dict[str, Path], tmp_path: Path) -> None:
    first = prepare_model(tiny["gpt2"], tmp_path)
    written = first.stat().st_mtime_ns
    second = prepare_model(tiny["gpt2"], tmp_path)
    assert second == first
    assert second.stat().st_mtime_ns == written
    assert _gguf_files(tmp_path) == [first]


def test_it_converts_again_when_the_source_changes(tmp_path: Path) -> None:
    source = write_tiny_llama(tmp_path / "model.gguf", vocab="gpt2", seed=1)
    cache = tmp_path / "cache"
    first = prepare_model(source, cache)
    write_tiny_llama(source, vocab="gpt2", seed=2, n_layers=1)
    second = prepare_model(source, cache)
    assert second != first
    assert second.exists()
    assert read_gguf(second).n_layers == 1
    assert _gguf_files(cache) == [second]  # the stale conversion is removed


def test_it_leaves_no_trusted_file_after_a_crash(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = gguf.GGUFWriter.write_tensor_data
    calls = []

    def crash_after_one_tensor(self: gguf.GGUFWriter, *args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) > 1:
            raise OSError("disk full")
        real_write(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", crash_after_one_tensor)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="disk full"):
        prepare_model(tiny["gpt2"], cache)
    assert len(calls) == 2
    assert _gguf_files(cache) == []
    assert list(cache.iterdir()) == []  # no half-written temporary file either

    monkeypatch.undo()
    prepared = prepare_model(tiny["gpt2"], cache)
    assert _gguf_files(cache) == [prepared]
    _load(prepared)


def _not_gguf(folder: Path, tiny: dict[str, Path]) -> Path:
    path = folder / "notes.gguf"
    path.write_text("this is a text file, not a model\n" * 10)
    return path


def _truncated(folder: Path, tiny: dict[str, Path]) -> Path:
    data = tiny["gpt2"].read_bytes()
    path = folder / "truncated.gguf"
    path.write_bytes(data[: len(data) // 2])
    return path


def _falcon(folder: Path, tiny: dict[str, Path]) -> Path:
    return write_tiny_llama(folder / "falcon.gguf", architecture="falcon", n_layers=1)


def _gpt2_arch(folder: Path, tiny: dict[str, Path]) -> Path:
    return write_tiny_llama(folder / "gpt2-arch.gguf", architecture="gpt2", n_layers=1)


def _missing(folder: Path, tiny: dict[str, Path]) -> Path:
    return folder / "missing.gguf"


def _folder(folder: Path, tiny: dict[str, Path]) -> Path:
    path = folder / "a-folder.gguf"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_not_gguf, "not a GGUF file"),
        (_truncated, "truncated"),
        (_falcon, "architecture 'falcon' is not supported"),
        (_gpt2_arch, "architecture 'gpt2' is not supported"),
        (_missing, "does not exist"),
        (_folder, "folder"),
    ],
    ids=["not-gguf", "truncated", "falcon", "gpt2-architecture", "missing", "folder"],
)
def test_it_names_the_file_and_the_reason_for_a_bad_file(
    tiny: dict[str, Path], tmp_path: Path, make, reason: str
) -> None:
    path = make(tmp_path, tiny)
    cache = tmp_path / "cache"
    with pytest.raises(ModelFileError) as caught:
        prepare_model(path, cache)
    message = str(caught.value)
    assert os.fspath(path.resolve()) in message
    assert reason in message
    assert _gguf_files(cache) == []


def test_the_engine_picks_the_library_ctransformers_would() -> None:
    """inference.engine reads the CPU's flags itself (ctransformers' lookup starts a process to)."""
    from ctransformers.lib import find_library

    assert _library_path() == find_library()
