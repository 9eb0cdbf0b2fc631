"""Constrained decoding: a grammar masks, at every step, the tokens that would break it.

The engine is llguidance (an Earley parser over a regex-derivative lexer, walking the token trie):
chatsite hands it its own tokenizer's vocabulary, so the mask is exact for the ids the model
produces. A grammar travels as llguidance's own JSON text (``SamplingParams.grammar``), which is
what the inference worker receives over Redis; each generation compiles it into an ``LLMatcher``
(compiled matchers are cached by grammar and copied, so n choices compile once).

- JSON schemas are compiled with fixed separators (``", "`` and ``": "``, no other whitespace):
  a model can then not loop on whitespace between tokens of the JSON, and the output looks like
  what models are trained on.
- The end-of-sequence tokens (every control token: any of them ends a reply) are allowed only
  where the grammar is complete, so a reply ends either inside the grammar (``finish_reason:
  "length"``, cut by max_tokens) or with a complete match.
- Special tokens are marked with llguidance's leading 0xFF byte: they never match text, so a
  ``<|im_end|>`` can not sneak into a JSON string.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from inference.tokenizer import Tokenizer

JSON_SEPARATORS: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_SPECIAL_MARK = b"\xff"  # llguidance's convention for special tokens
_MATCHER_CACHE_SIZE = 32


class ConstraintError(ValueError):
    """A grammar or schema cannot be used; the message says why (for a 400 answer)."""


class _Vocabulary:
    """What ``llguidance.TokenizerWrapper`` reads: token bytes, EOS/BOS ids and an encoder."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else 0
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = sorted(tokenizer.special_ids)
        self.tokens = [
            _SPECIAL_MARK + tokenizer.token_bytes(i) if tokenizer.is_special(i) else tokenizer.token_bytes(i)
            for i in range(tokenizer.vocab_size)
        ]

    def __call__(self, data: bytes) -> list[int]:
        return self._tokenizer.encode(data.decode("utf-8", errors="replace"), parse_special=False)


_lltokenizers: weakref.WeakKeyDictionary[Tokenizer, LLTokenizer] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def lltokenizer(tokenizer: Tokenizer) -> LLTokenizer:
    """llguidance's view of ``tokenizer``, built once per tokenizer (about 0.1 s for 49,152 tokens)."""
    with _lock:
        found = _lltokenizers.get(tokenizer)
        if found is None:
            ends = sorted(tokenizer.special_ids) or [tokenizer.eos_id or 0]
            found = LLTokenizer(TokenizerWrapper(_Vocabulary(tokenizer)), eos_token=ends)
            _lltokenizers[tokenizer] = found
        return found


def json_schema_grammar(schema: Mapping[str, Any] | bool) -> str:
    """The grammar of the JSON documents ``schema`` accepts (not yet checked: see ``check``)."""
    try:
        return LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_SEPARATORS)
    except (TypeError, ValueError) as exc:
        raise ConstraintError(f"the schema is not a JSON object: {exc}") from None


def json_object_grammar() -> str:
    """Any JSON object."""
    return json_schema_grammar({"type": "object"})


def lark_grammar(text: str) -> str:
    return LLMatcher.grammar_from_lark(text)


def check(grammar: str, tokenizer: Tokenizer) -> None:
    """Raise ``ConstraintError`` with llguidance's message when ``grammar`` does not compile
    (an unsupported JSON-schema keyword, a look-around in a pattern, an unsatisfiable bound...)."""
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, lltokenizer(tokenizer))
    if is_error:
        raise ConstraintError(messages[0] if messages else "the grammar does not compile")


_matchers: OrderedDict[tuple[int, str], LLMatcher] = OrderedDict()


def _matcher(grammar: str, tokenizer: Tokenizer) -> LLMatcher:
    key = (id(tokenizer), grammar)
    with _lock:
        cached = _matchers.get(key)
        if cached is not None:
            _matchers.move_to_end(key)
            return cached.deep_copy()
    matcher = LLMatcher(lltokenizer(tokenizer), grammar, log_level=0)
    if matcher.is_error():
        raise ConstraintError(matcher.get_error())
    with _lock:
        _matchers[key] = matcher.deep_copy()
        while len(_matchers) > _MATCHER_CACHE_SIZE:
            _matchers.popitem(last=False)
    return matcher


class TokenMask:
    """The grammar's state during one generation: which tokens may come next.

    ``banned()`` is computed once per step (after the previous ``consume``) and reused by the
    sampler and the logprobs of that step.
    """

    def __init__(self, grammar: str, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.grammar = grammar
        self.vocab_size = vocab_size
        self._matcher = _matcher(grammar, tokenizer)
        self._bitmask = allocate_token_bitmask(1, max(vocab_size, tokenizer.vocab_size))
        self._banned = np.empty(vocab_size, dtype=bool)
        self._fresh = False

    def banned(self) -> np.ndarray:
        """A boolean array over the vocabulary: True where the next token may NOT be."""
        if not self._fresh:
            fill_next_token_bitmask(self._matcher, self._bitmask)
            bits = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little", count=self.vocab_size)
            np.equal(bits, 0, out=self._banned)
            self._fresh = True
        return self._banned

    def consume(self, token_id: int) -> None:
        self._fresh = False
        if not self._matcher.consume_token(token_id):
            raise ConstraintError(f"token {token_id} breaks the grammar: {self._matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """Whether the text so far is a complete match (the reply may end here)."""
        return self._matcher.is_accepting()
