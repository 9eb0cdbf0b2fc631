from __future__ import annotations

import dataclasses
import time

import pytest

from inference.gguf import ModelFileError
from inference.tokenizer import IncrementalDecoder, Tokenizer
from tests.fixtures_model import default_chat_template, default_model_info, default_tokenizer
from tests.helpers import case_id, load_reference

REFERENCE = load_reference("smollm2-tokenization.json")["cases"]
STREAM_TEXTS = [
    "Unicode: café, naïve, 日本語のテキスト, emoji 😀👍🏽",
    "🎉🎉 中文字符 한국어 العربية 🇫🇷 ok",
    "Ünïcödé ∑∫√ ∞ — “quotes” …",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return default_tokenizer()


@pytest.mark.parametrize("case", REFERENCE, ids=[case_id(c["text"]) for c in REFERENCE])
def test_it_matches_the_reference_ids(tok: Tokenizer, case: dict) -> None:
    assert tok.encode(case["text"]) == case["ids"]


@pytest.mark.parametrize("case", REFERENCE, ids=[case_id(c["text"]) for c in REFERENCE])
def test_it_decodes_reference_ids_back_to_the_text(tok: Tokenizer, case: dict) -> None:
    assert tok.decode(case["ids"]) == case["text"]


def test_it_has_the_reference_cases() -> None:
    assert len(REFERENCE) >= 16


def test_it_describes_the_vocabulary(tok: Tokenizer) -> None:
    assert tok.vocab_size == 49152
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)
    assert tok.special_ids == frozenset(range(17))
    assert tok.is_special(2)
    assert not tok.is_special(17)


def test_it_gives_the_raw_bytes_of_tokens(tok: Tokenizer) -> None:
    the = tok.encode(" the")
    assert len(the) == 1
    assert tok.token_bytes(the[0]) == b" the"
    assert tok.token_bytes(1) == b"<|im_start|>"
    # The emoji is spread over tokens that each hold only part of its UTF-8 bytes.
    emoji = tok.encode("😀")
    assert len(emoji) > 1
    assert b"".join(tok.token_bytes(i) for i in emoji) == "😀".encode()


@pytest.mark.parametrize("bad_id", [-1, 49152, 10**9])
def test_it_refuses_ids_outside_the_vocabulary(tok: Tokenizer, bad_id: int) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.token_bytes(bad_id)


def test_it_recognises_special_tokens_in_text(tok: Tokenizer) -> None:
    ids = tok.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.encode("a<|endoftext|>b") == [*tok.encode("a"), 0, *tok.encode("b")]


def test_it_treats_special_tokens_as_text_when_asked(tok: Tokenizer) -> None:
    text = "<|im_start|>user\nHi<|im_end|>"
    ids = tok.encode(text, parse_special=False)
    assert not set(ids) & tok.special_ids
    assert tok.decode(ids) == text


def test_it_can_skip_special_tokens_when_decoding(tok: Tokenizer) -> None:
    ids = tok.encode("<|im_start|>assistant\nHello<|im_end|>")
    assert tok.decode(ids, skip_special=True) == "assistant\nHello"


@pytest.mark.parametrize(
    "text",
    ["", " ", "\n\n", "a" * 1000, "x = [1, 2, 3]  # ok\n\tdone", "mixed ÄÖÜ and 😀 and 中文", *STREAM_TEXTS],
    ids=case_id,
)
def test_it_round_trips_text(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", STREAM_TEXTS, ids=case_id)
def test_it_streams_whole_characters_only(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push(i) for i in ids]
    tail = decoder.flush()
    for piece in pieces:
        assert "\ufffd" not in piece
        assert piece.encode("utf-8").decode("utf-8") == piece
    assert "".join(pieces) + tail == text
    assert tail == ""
    # Some tokens are only part of a character, so some pushes must have held their bytes back.
    assert "" in pieces
    assert len(ids) > len([p for p in pieces if p])


def test_it_flushes_an_incomplete_character_as_a_replacement(tok: Tokenizer) -> None:
    ids = tok.encode("ok 😀")
    decoder = IncrementalDecoder(tok)
    out = "".join(decoder.push(i) for i in ids[:-1])
    assert out == "ok "
    assert decoder.flush() == "\ufffd"


def test_it_drops_control_tokens_when_streaming_unless_asked(tok: Tokenizer) -> None:
    ids = tok.encode("Hi<|im_end|>")
    assert "".join(IncrementalDecoder(tok).push(i) for i in ids) == "Hi"
    with_special = IncrementalDecoder(tok, include_special=True)
    assert "".join(with_special.push(i) for i in ids) == "Hi<|im_end|>"


def test_it_builds_quickly() -> None:
    info = default_model_info()
    # CPU time, not wall time: other work on the machine (a CI beside a build, two busy processes)
    # does not count. About 0.12 s here; the bound only catches a pure-Python rewrite of the merges
    # (seconds of CPU).
    start = time.process_time()
    Tokenizer.from_gguf(info)
    elapsed = time.process_time() - start
    assert elapsed < 1.5


def test_it_refuses_an_unknown_pre_tokenizer() -> None:
    info = dataclasses.replace(default_model_info(), tokenizer_pre="no-such-pre")
    with pytest.raises(ModelFileError, match="pre-tokenizer 'no-such-pre'"):
        Tokenizer.from_gguf(info)


class CountingBackend:
    """The tokenizers backend, counting the runs of text it is asked to tokenize (a spy: it
    tokenizes them itself)."""

    def __init__(self, backend) -> None:
        self.backend, self.runs = backend, []

    def encode(self, text: str, **kwargs):
        self.runs.append(text)
        return self.backend.encode(text, **kwargs)


def test_a_conversations_next_turn_tokenizes_only_its_new_text() -> None:
    """A conversation's prompt is tokenized again at each turn, message by message; the runs of
    text it held at the last turn are not tokenized again, and the ids are the same as those of a
    tokenizer that sees them for the first time."""
    from inference.chat import build_prompt_ids

    template = default_chat_template()
    tok = Tokenizer.from_gguf(default_model_info())  # its own cache
    tok._backend = spy = CountingBackend(tok._backend)
    history = [{"role": "system", "content": "Be brief."}]
    for turn in range(12):
        history.append({"role": "user", "content": f"Question {turn}: why is the sky blue? Answer briefly."})
        history.append({"role": "assistant", "content": f"Answer {turn}: sunlight scatters off the air."})
    build_prompt_ids(history, template, tok)
    next_turn = [*history, {"role": "user", "content": "And at sunset, the red?"}]
    spy.runs.clear()
    ids = build_prompt_ids(next_turn, template, tok)
    assert spy.runs == ["And at sunset, the red?"]  # (a byte-level BPE vocabulary: no space prefix)
    assert ids == build_prompt_ids(next_turn, template, Tokenizer.from_gguf(default_model_info()))
