"""Write tiny llama-architecture GGUF files with random weights and a small but real vocabulary.

The vocabularies are learnt with a few hundred BPE merges from ``CORPUS``, so that tokenizers built
from them behave like real ones: ``gpt2`` is byte-level BPE in GPT-2's byte-to-unicode form with
ChatML control tokens; ``spm`` is SentencePiece-style with ``<unk>``, ``<s>``, ``</s>``, the 256
``<0xNN>`` byte-fallback tokens and ``▁``-prefixed pieces whose scores rank the merges.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType

from inference.gguf import (
    TOKEN_TYPE_BYTE,
    TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_UNKNOWN,
    byte_decoder,
)

CORPUS = """\
The quick brown fox jumps over the lazy dog. A chat site lets people talk to a small language model.
You are a helpful assistant. The user asks a question and the assistant answers it in a few words.
What is the capital of France? Paris is the capital of France, and Berlin is the capital of Germany.
Hello there! How are you today? I am fine, thank you. Tell me a story about the sea and the sky.
The sky is blue because the air scatters blue light more than red light. The sea is blue as well.
Numbers like 12, 345 and 2026 are written with digits; prices are written as 3.50 or 10.00 euros.
Write a Python function that reverses a string: def reverse(text): return text[::-1]
The model reads the prompt, then it writes the answer one token at a time until it is done.
People write messages, the server streams the reply, and the reply is saved with the conversation.
"""

GPT2_CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+")


def write_tiny_llama(
    path: str | Path,
    *,
    vocab: str = "gpt2",
    n_layers: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    context_length: int = 256,
    seed: int = 0,
    chat_template: str | None = None,
    tied_embeddings: bool = True,
    dtype: str = "f32",
    n_merges: int = 300,
    architecture: str = "llama",
) -> Path:
    """Write the model file and return its path.

    ``vocab`` is ``"gpt2"`` or ``"spm"``; ``dtype`` (``"f32"`` or ``"f16"``) is the type of the
    matrices (norms stay F32). ``architecture`` other than ``"llama"`` makes a file that the
    project must refuse.
    """
    if vocab == "gpt2":
        tokens, types, scores, merges = gpt2_vocabulary(n_merges)  # cached: do not modify
    elif vocab == "spm":
        tokens, types, scores, merges = spm_vocabulary(n_merges)
    else:
        raise ValueError(f"vocab must be 'gpt2' or 'spm', not {vocab!r}")
    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16', not {dtype!r}")
    path = Path(path)
    writer = GGUFWriter(str(path), arch=architecture)
    writer.add_name(f"tiny-{vocab}-{architecture}")
    writer.add_file_type(LlamaFileType.ALL_F32 if dtype == "f32" else LlamaFileType.MOSTLY_F16)
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    if vocab == "gpt2":
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_merges([f"{a} {b}" for a, b in merges])
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
        writer.add_add_bos_token(False)
    else:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(scores)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
        writer.add_add_space_prefix(True)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    rng = np.random.default_rng(seed)
    matrix_type = np.float32 if dtype == "f32" else np.float16

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(matrix_type)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32)

    n_kv = n_embd // n_head * n_head_kv
    writer.add_tensor("token_embd.weight", matrix(len(tokens), n_embd))
    writer.add_tensor("output_norm.weight", norm())
    if not tied_embeddings:
        writer.add_tensor("output.weight", matrix(len(tokens), n_embd))
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.attn_q.weight", matrix(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", matrix(n_kv, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", matrix(n_kv, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", matrix(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", matrix(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", matrix(n_embd, n_ff))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", matrix(n_ff, n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@lru_cache(maxsize=4)
def gpt2_vocabulary(n_merges: int = 300) -> tuple[list[str], list[int], list[float], list[tuple[str, str]]]:
    """Control tokens, the 256 byte tokens (in byte order), then one token per learnt merge."""
    to_unicode = {b: ch for ch, b in byte_decoder().items()}
    words = Counter(tuple(to_unicode[b] for b in w.encode("utf-8")) for w in _WORDS.findall(CORPUS))
    merges = learn_merges(words, n_merges)
    tokens = [*GPT2_CONTROL_TOKENS, *(to_unicode[b] for b in range(256))]
    types = [TOKEN_TYPE_CONTROL] * len(GPT2_CONTROL_TOKENS) + [TOKEN_TYPE_NORMAL] * 256
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
            types.append(TOKEN_TYPE_NORMAL)
    return tokens, types, [0.0] * len(tokens), merges


@lru_cache(maxsize=4)
def spm_vocabulary(n_merges: int = 300) -> tuple[list[str], list[int], list[float], list[tuple[str, str]]]:
    """``<unk> <s> </s>``, ``<0x00>``..``<0xFF>``, learnt pieces (best first), then single characters."""
    text = " " + " ".join(CORPUS.split())  # SentencePiece sees spaces as the start of a word
    words = Counter(tuple("\u2581" + w) for w in text.split(" ") if w)
    merges = learn_merges(words, n_merges)
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL] + [TOKEN_TYPE_BYTE] * 256
    scores = [0.0] * len(tokens)
    pieces = list(dict.fromkeys(a + b for a, b in merges))
    chars = sorted({ch for w in words for ch in w} - set(pieces))
    for rank, piece in enumerate(pieces + chars):
        tokens.append(piece)
        types.append(TOKEN_TYPE_NORMAL)
        scores.append(-float(rank))
    return tokens, types, scores, merges


def learn_merges(words: Counter[tuple[str, ...]], n_merges: int) -> list[tuple[str, str]]:
    """Plain BPE training: repeatedly merge the most frequent adjacent pair, until ``n_merges``."""
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))  # ties: the smallest pair
        merges.append((a, b))
        merged: Counter[tuple[str, ...]] = Counter()
        for word, n in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges
