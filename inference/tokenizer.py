"""Exact tokenization from a GGUF file's own vocabulary, and UTF-8-safe incremental decoding.

The tokenizer bundled in ctransformers 0.2.27 does not match the model's reference tokenization
(see the project notes), so prompts are tokenized here and the model is given ids.

Both vocabulary kinds are built with the ``tokenizers`` package:

* ``gpt2`` (byte-level BPE): the file's vocabulary and merges (in their ``Ġthe`` form) go into a
  ``BPE`` model. The pre-tokenizer is the regex list that llama.cpp uses for the file's
  ``tokenizer.ggml.pre`` (``PRE_TOKENIZERS`` below), applied like llama.cpp does: each regex splits
  the pieces of the previous one, keeping matches and the text between them, then bytes are mapped
  to GPT-2's byte-to-unicode alphabet. For ``smollm`` that is "each digit alone", then the GPT-2
  regex, which is what SmolLM2's HF tokenizer does with ``Digits(individual_digits=True)`` +
  ``ByteLevel``; it reproduces every case in ``shared/reference/smollm2-tokenization.json``.
* ``llama`` (SentencePiece): a ``BPE`` model whose merges are derived from the scores, like HF's
  ``LlamaConverter``: every pair of pieces whose concatenation is a piece is a merge, ranked by that
  piece's score. This is what llama.cpp's SPM tokenizer computes (repeatedly merge the adjacent pair
  whose result scores highest), with ``<0xNN>`` byte fallback for characters not in the vocabulary.
  Spaces become ``▁``, and a space is prefixed to each run of text at the start or after a special
  token when the file asks for it (``add_space_prefix``), as llama.cpp does. A Unigram model would
  not match llama.cpp, which runs this merge algorithm on every ``llama`` vocabulary.

Special tokens are found in the text the way llama.cpp does it (longest token text first), before
the text between them is tokenized: control and unknown tokens only when ``parse_special`` is true,
user-defined tokens always.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate

from tokenizers import Regex, models, pre_tokenizers
from tokenizers import Tokenizer as _Backend

from .gguf import (
    TOKEN_TYPE_BYTE,
    TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_UNKNOWN,
    TOKEN_TYPE_USER_DEFINED,
    GGUFInfo,
    ModelFileError,
    byte_decoder,
    unicode_to_bytes,
)

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass(frozen=True)
class PreTokenizer:
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # take a whole word from the vocabulary before merging (llama3)


_SMOLLM = PreTokenizer((r"\p{N}", _GPT2))
# Regex lists from llama.cpp's llm_tokenizer_bpe, by the names its loader maps to each list.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
    **dict.fromkeys(
        (
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "jina-es",
            "jina-de",
            "jina-v2-es",
            "jina-v2-de",
            "gigachat",
        ),
        PreTokenizer((_GPT2,)),
    ),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), _SMOLLM
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3"), PreTokenizer((_LLAMA3,), ignore_merges=True)
    ),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizer((_LLAMA3,))),
    **dict.fromkeys(("qwen2", "stablelm2", "deepseek-r1-qwen"), PreTokenizer((_QWEN2,))),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
}

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPM_SPACE = "\u2581"  # ▁
# The runs of text whose ids ``encode`` keeps (the last ones used, up to this many of up to this many
# characters each): a conversation's prompt is tokenized again at each turn, message by message (the
# runs between special tokens are tokenized on their own), and all but the newest were seen before.
# 1,300 tokens of history took 3.8 ms of the websocket's way to the first token on PostgreSQL.
_CACHED_RUNS = 1024
_CACHED_RUN_CHARS = 8192


class Tokenizer:
    """Text ↔ token ids for one model. Build it with ``Tokenizer.from_gguf``; it is thread-safe."""

    def __init__(
        self,
        *,
        backend: _Backend,
        token_bytes: list[bytes],
        token_types: list[int],
        spm: bool,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        add_space_prefix: bool,
    ) -> None:
        self._backend = backend
        self._bytes = token_bytes
        self._spm = spm
        self.vocab_size = len(token_bytes)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos  # the model wants BOS first; encode() never adds it
        self.add_space_prefix = add_space_prefix and spm
        unusual = [(i, t) for i, t in enumerate(token_types) if t != TOKEN_TYPE_NORMAL]
        self.special_ids = frozenset(i for i, t in unusual if t == TOKEN_TYPE_CONTROL)
        # Tokens matched in text before tokenizing, longest text first (llama.cpp's order).
        parsed = [
            (token_bytes[i].decode("utf-8", errors="replace"), i, t != TOKEN_TYPE_USER_DEFINED)
            for i, t in unusual
            if t in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_USER_DEFINED) and token_bytes[i]
        ]
        parsed.sort(key=lambda p: (-len(p[0]), p[1]))
        self._parsed = parsed
        self._fragment_ids = frozenset(i for _, i, _ in parsed)
        # The texts of the special (control) tokens, longest first: what is removed from text that
        # a template writes as its own (inference/chat.py), so that it cannot become a control token.
        self.special_texts = [text for text, i, _ in parsed if i in self.special_ids]
        self._cached_run = functools.lru_cache(maxsize=_CACHED_RUNS)(self._encode_run)

    @classmethod
    def from_gguf(cls, info: GGUFInfo) -> Tokenizer:
        if len(info.token_types) != len(info.tokens):
            raise ModelFileError(
                info.path, f"{len(info.tokens)} tokens but {len(info.token_types)} token types"
            )
        if info.tokenizer_model == "gpt2":
            backend, token_bytes = _byte_level_bpe(info)
        elif info.tokenizer_model == "llama":
            backend, token_bytes = _spm_bpe(info)
        else:
            raise ModelFileError(info.path, f"tokenizer model {info.tokenizer_model!r} is not supported")
        return cls(
            backend=backend,
            token_bytes=token_bytes,
            token_types=info.token_types,
            spm=info.tokenizer_model == "llama",
            bos_id=info.bos_id,
            eos_id=info.eos_id,
            add_bos=info.add_bos,
            add_space_prefix=info.add_space_prefix,
        )

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special_ids

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token; a special token gives its text."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._bytes[token_id]

    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``; no BOS is added (see ``add_bos``)."""
        ids: list[int] = []
        prev_special = True
        for piece in self._split_special(text, parse_special):
            if isinstance(piece, int):
                ids.append(piece)
                prev_special = True
                continue
            if self._spm:
                if self.add_space_prefix and prev_special:
                    piece = " " + piece
                piece = piece.replace(" ", _SPM_SPACE)
            cached = len(piece) <= _CACHED_RUN_CHARS
            ids.extend(self._cached_run(piece) if cached else self._encode_run(piece))
            prev_special = False
        return ids

    def _encode_run(self, text: str) -> tuple[int, ...]:
        """The ids of a run of text without special tokens (as ``encode`` prepared it)."""
        return tuple(self._backend.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of ``ids`` (invalid UTF-8 becomes U+FFFD).

        For SentencePiece vocabularies with ``add_space_prefix`` the space that ``encode`` put before
        a run of text (at the start or after a special token) is removed again, so that
        ``decode(encode(text)) == text``.
        """
        out = bytearray()
        prev_fragment = True
        for i in ids:
            b = self.token_bytes(i)
            if i in self._fragment_ids:
                prev_fragment = True
                if skip_special and i in self.special_ids:
                    continue
            else:
                if prev_fragment and self.add_space_prefix and b.startswith(b" "):
                    b = b[1:]
                prev_fragment = False
            out += b
        return out.decode("utf-8", errors="replace")

    def _split_special(self, text: str, parse_special: bool) -> list[str | int]:
        pieces: list[str | int] = [text] if text else []
        for token_text, token_id, needs_parse_special in self._parsed:
            if (needs_parse_special and not parse_special) or token_text not in text:
                continue
            split: list[str | int] = []
            for piece in pieces:
                if isinstance(piece, int) or token_text not in piece:
                    split.append(piece)
                    continue
                for n, part in enumerate(piece.split(token_text)):
                    if n:
                        split.append(token_id)
                    if part:
                        split.append(part)
            pieces = split
        return pieces


class IncrementalDecoder:
    """Turns a stream of token ids into text pieces that never split a UTF-8 character.

    Bytes of an incomplete character are held back until the character is complete; ``flush()`` at
    the end returns what is still held (decoded with U+FFFD replacements). Control tokens give ''
    unless ``include_special`` is true. No leading space is stripped: SentencePiece replies may
    begin with one.
    """

    def __init__(self, tokenizer: Tokenizer, *, include_special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._include_special = include_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        data = self._tokenizer.token_bytes(token_id)
        if not self._include_special and self._tokenizer.is_special(token_id):
            return ""
        return self._utf8.decode(data, final=False)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def _vocab(tokens: list[str]) -> dict[str, int]:
    # Built from the end so that the first id wins when a file lists a token text twice.
    return dict(zip(reversed(tokens), range(len(tokens) - 1, -1, -1), strict=True))


def _byte_level_bpe(info: GGUFInfo) -> tuple[_Backend, list[bytes]]:
    pre = PRE_TOKENIZERS.get(info.tokenizer_pre or "default")
    if pre is None:
        raise ModelFileError(
            info.path,
            f"pre-tokenizer {info.tokenizer_pre!r} (tokenizer.ggml.pre) is not supported; "
            f"known: {', '.join(sorted(PRE_TOKENIZERS))}",
        )
    vocab = _vocab(info.tokens)
    merges = []
    for m in info.merges:
        left, sep, right = m.partition(" ")
        if not sep:
            raise ModelFileError(info.path, f"malformed merge {m!r} in tokenizer.ggml.merges")
        merges.append((left, right))
    try:
        model = models.BPE(vocab, merges, ignore_merges=pre.ignore_merges)
    except Exception as exc:
        raise ModelFileError(info.path, f"the vocabulary and merges do not fit together ({exc})") from None
    backend = _Backend(model)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rx), "isolated") for rx in pre.regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    return backend, _byte_level_token_bytes(info.tokens, info.token_types)


def _byte_level_token_bytes(tokens: list[str], types: list[int]) -> list[bytes]:
    raw = [t in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED) for t in types]
    # Fast path: map the byte-to-unicode alphabet back to latin-1 code points for all tokens at
    # once (one character per byte), then cut the result at the token boundaries.
    table = str.maketrans({ch: chr(b) for ch, b in byte_decoder().items()})
    mapped = ["" if r else tok for tok, r in zip(tokens, raw, strict=True)]
    try:
        data = "".join(mapped).translate(table).encode("latin-1")
    except UnicodeEncodeError:  # a token outside the alphabet: go one by one
        return [
            tok.encode("utf-8") if r else unicode_to_bytes(tok) for tok, r in zip(tokens, raw, strict=True)
        ]
    ends = list(accumulate(map(len, mapped)))
    starts = [0, *ends[:-1]]
    return [
        tok.encode("utf-8") if r else data[a:b]
        for tok, r, a, b in zip(tokens, raw, starts, ends, strict=True)
    ]


def _spm_bpe(info: GGUFInfo) -> tuple[_Backend, list[bytes]]:
    tokens, types = info.tokens, info.token_types
    scores = info.scores or [0.0] * len(tokens)
    if len(scores) != len(tokens):
        raise ModelFileError(info.path, f"{len(tokens)} tokens but {len(scores)} scores")
    vocab = _vocab(tokens)
    mergeable = {
        tok for tok, t in zip(tokens, types, strict=True) if t in (TOKEN_TYPE_NORMAL, TOKEN_TYPE_USER_DEFINED)
    }
    ranked = []
    for i, (tok, t) in enumerate(zip(tokens, types, strict=True)):
        if t not in (TOKEN_TYPE_NORMAL, TOKEN_TYPE_USER_DEFINED):
            continue
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-scores[i], vocab[left], vocab[right], left, right))
    ranked.sort()
    merges = [(left, right) for *_, left, right in ranked]
    unk = tokens[info.unk_id] if info.unk_id is not None and 0 <= info.unk_id < len(tokens) else None
    try:
        model = models.BPE(vocab, merges, unk_token=unk, byte_fallback=True, fuse_unk=True)
    except Exception as exc:
        raise ModelFileError(info.path, f"cannot build a tokenizer from the vocabulary ({exc})") from None
    token_bytes = []
    for tok, t in zip(tokens, types, strict=True):
        m = _BYTE_TOKEN.fullmatch(tok) if t == TOKEN_TYPE_BYTE else None
        if m:
            token_bytes.append(bytes([int(m.group(1), 16)]))
        elif t in (TOKEN_TYPE_NORMAL, TOKEN_TYPE_USER_DEFINED):
            token_bytes.append(tok.replace(_SPM_SPACE, " ").encode("utf-8"))
        else:
            token_bytes.append(tok.encode("utf-8"))
    return _Backend(model), token_bytes
