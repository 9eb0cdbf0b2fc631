"""Read GGUF metadata and prepare a copy that ctransformers 0.2.27 can load.

ctransformers bundles a llama.cpp from September 2023. Today's GGUF files fail to load in it for
four reasons (see the project notes); ``prepare_model`` writes a copy with each fixed:

1. the header says GGUF v3; the bundled loader knows v1/v2 (same little-endian layout);
2. ``tokenizer.ggml.scores`` is required (zeros are fine for BPE vocabularies);
3. the llama graph needs ``output.weight``; tied-embedding models get a copy of ``token_embd``;
4. byte-level BPE (``gpt2``) tokens and merges are stored in GPT-2's byte-to-unicode form, while
   the bundled tokenizer expects raw bytes.

The copy is cached in a data folder, keyed by the source file's identity and ``CONVERSION_VERSION``,
and written to a temporary name first, so a crash never leaves a half file that is later trusted.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from inference.gguf_format import GGUFFormatError, TensorInfo, read_header

CONVERSION_VERSION = 1
GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)
SUPPORTED_VOCABS = ("llama", "gpt2")
# ggml tensor types known to the September 2023 ggml (F32 … Q8_K); newer ones (IQ*, BF16) are not.
MAX_SUPPORTED_GGML_TYPE = 15

TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_UNUSED = 5
TOKEN_TYPE_BYTE = 6


class ModelFileError(Exception):
    """A model file that cannot be used, with a message naming the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class GGUFInfo:
    """What the rest of ``inference`` needs to know about a model file."""

    path: str
    version: int
    architecture: str
    name: str
    context_length: int
    n_layers: int
    n_embd: int
    tokenizer_model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    tokenizer_pre: str
    tokens: list[str] = field(repr=False)
    token_types: list[int] = field(repr=False)
    scores: list[float] | None = field(repr=False)
    merges: list[str] = field(repr=False)
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    add_bos: bool
    add_space_prefix: bool
    chat_template: str | None = field(repr=False)
    tensor_names: tuple[str, ...] = field(repr=False)
    file_type: int | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)


def _check_header(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelFileError(path, "the file does not exist") from None
    except OSError as exc:
        raise ModelFileError(path, f"the file cannot be read ({exc.strerror})") from None
    if path.is_dir():
        raise ModelFileError(path, "this is a folder, not a GGUF model file")
    if size < 24:
        raise ModelFileError(path, f"not a GGUF file (only {size} bytes)")
    with path.open("rb") as fh:
        head = fh.read(8)
    if head[:4] != GGUF_MAGIC:
        raise ModelFileError(path, "not a GGUF file (its first bytes are not 'GGUF')")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in (2, 3):
        raise ModelFileError(path, f"GGUF version {version} is not supported (only 2 and 3)")


@lru_cache(maxsize=8)
def _read_cached(path: str, size: int, mtime_ns: int) -> GGUFInfo:
    return _read(Path(path))


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read and validate a GGUF file's metadata. Raises ``ModelFileError`` with the reason."""
    p = Path(path).resolve()
    _check_header(p)
    st = p.stat()
    return _read_cached(str(p), st.st_size, st.st_mtime_ns)


def tensor_nbytes(t: TensorInfo) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
    except (ValueError, KeyError):
        raise ValueError(f"tensor {t.name!r} has an unknown ggml type {t.ggml_type}") from None
    n = 1
    for d in t.shape:
        n *= d
    return n // block * type_size


def _type_name(ggml_type: int) -> str:
    from gguf.constants import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


def _read(p: Path) -> GGUFInfo:
    try:
        header = read_header(p)
    except GGUFFormatError as exc:
        raise ModelFileError(p, f"damaged or truncated GGUF file ({exc})") from None
    fields = header.fields

    for t in header.tensors:
        if t.ggml_type > MAX_SUPPORTED_GGML_TYPE:
            raise ModelFileError(
                p,
                f"tensor {t.name!r} uses quantization {_type_name(t.ggml_type)}, which ctransformers 0.2.27 "
                "cannot run (use F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 or a K-quant)",
            )
        try:
            end = header.data_offset + t.offset + tensor_nbytes(t)
        except ValueError as exc:
            raise ModelFileError(p, str(exc)) from None
        if end > header.file_size:
            raise ModelFileError(
                p, f"truncated: tensor {t.name!r} ends at byte {end} but the file has {header.file_size}"
            )

    arch = fields.get("general.architecture")
    if arch is None:
        raise ModelFileError(p, "no general.architecture in the GGUF metadata")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelFileError(
            p,
            f"architecture {arch!r} is not supported: ctransformers 0.2.27 runs only "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} GGUF files here",
        )
    vocab = fields.get("tokenizer.ggml.model")
    if vocab not in SUPPORTED_VOCABS:
        raise ModelFileError(p, f"tokenizer model {vocab!r} is not supported (only 'llama' and 'gpt2')")
    raw_tokens = fields.get("tokenizer.ggml.tokens") or []
    if not raw_tokens:
        raise ModelFileError(p, "no tokenizer.ggml.tokens in the GGUF metadata")
    tokens = [b.decode("utf-8", errors="replace") for b in raw_tokens]
    types = fields.get("tokenizer.ggml.token_type")
    token_types = [int(x) for x in types] if types is not None else [TOKEN_TYPE_NORMAL] * len(tokens)
    if len(token_types) != len(tokens):
        raise ModelFileError(p, f"{len(tokens)} tokens but {len(token_types)} token types")
    scores = fields.get("tokenizer.ggml.scores")
    merges = [b.decode("utf-8", errors="replace") for b in fields.get("tokenizer.ggml.merges") or []]
    if vocab == "gpt2" and not merges:
        raise ModelFileError(p, "a gpt2 (byte-level BPE) vocabulary without tokenizer.ggml.merges")
    names = tuple(t.name for t in header.tensors)
    if "token_embd.weight" not in names:
        raise ModelFileError(p, "no token_embd.weight tensor")

    def _int(key: str) -> int | None:
        v = fields.get(key)
        return int(v) if v is not None else None

    context_length = _int(f"{arch}.context_length")
    n_layers = _int(f"{arch}.block_count")
    n_embd = _int(f"{arch}.embedding_length")
    if not context_length or not n_layers or not n_embd:
        raise ModelFileError(p, f"missing {arch}.context_length, block_count or embedding_length")
    template = fields.get("tokenizer.chat_template")
    return GGUFInfo(
        path=str(p),
        version=header.version,
        architecture=arch,
        name=str(fields.get("general.name", p.stem)),
        context_length=context_length,
        n_layers=n_layers,
        n_embd=n_embd,
        tokenizer_model=vocab,
        tokenizer_pre=str(fields.get("tokenizer.ggml.pre", "default")),
        tokens=tokens,
        token_types=token_types,
        scores=[float(s) for s in scores] if scores is not None else None,
        merges=merges,
        bos_id=_int("tokenizer.ggml.bos_token_id"),
        eos_id=_int("tokenizer.ggml.eos_token_id"),
        unk_id=_int("tokenizer.ggml.unknown_token_id"),
        add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", vocab == "llama")),
        add_space_prefix=bool(fields.get("tokenizer.ggml.add_space_prefix", vocab == "llama")),
        chat_template=template if isinstance(template, str) else None,
        tensor_names=names,
        file_type=_int("general.file_type"),
    )


def _string_array_bytes(reader, key: str) -> list[bytes]:
    f = reader.fields.get(key)
    if f is None:
        return []
    return [bytes(f.parts[i]) for i in f.data]


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's unicode-character → byte table (the inverse of ``bytes_to_unicode``)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def unicode_to_bytes(text: str) -> bytes:
    """Map a byte-level BPE token (``Ġthe``) back to its raw bytes (``b' the'``)."""
    table = byte_decoder()
    try:
        return bytes(table[ch] for ch in text)
    except KeyError:
        return text.encode("utf-8")


def source_identity(path: str | os.PathLike[str]) -> str:
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|v{CONVERSION_VERSION}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def prepared_path(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> Path:
    return Path(cache_dir) / f"{Path(path).stem}.ct{CONVERSION_VERSION}-{source_identity(path)}.gguf"


def prepare_model(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> Path:
    """Return the path of a ctransformers-loadable copy of ``path``, writing it once if needed."""
    info = read_gguf(path)
    target = prepared_path(path, cache_dir)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        _write_converted(info, Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Older conversions of the same file are dead weight.
    for stale in target.parent.glob(f"{Path(path).stem}.ct*-*.gguf"):
        if stale != target and stale.name.startswith(f"{Path(path).stem}.ct"):
            try:
                if stale.stat().st_mtime < target.stat().st_mtime:
                    stale.unlink()
            except OSError:
                pass
    return target


def _write_converted(info: GGUFInfo, out: Path) -> None:
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(info.path)
    writer = GGUFWriter(str(out), arch=info.architecture, use_temp_file=False)
    # GGUFWriter adds general.architecture itself; copy every other key, rewriting the vocabulary.
    skip = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture"}
    gpt2 = info.tokenizer_model == "gpt2"
    for key, f in reader.fields.items():
        if key in skip:
            continue
        vtype = f.types[0]
        if key == "tokenizer.ggml.tokens" and gpt2:
            raw = _string_array_bytes(reader, key)
            converted = [
                raw[i]
                if info.token_types[i] in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
                else unicode_to_bytes(raw[i].decode("utf-8", errors="replace"))
                for i in range(len(raw))
            ]
            writer.add_key_value(key, converted, GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)
        elif key == "tokenizer.ggml.merges" and gpt2:
            converted = []
            for m in info.merges:
                left, _, right = m.partition(" ")
                converted.append(unicode_to_bytes(left) + b" " + unicode_to_bytes(right))
            writer.add_key_value(key, converted, GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)
        elif vtype == GGUFValueType.ARRAY:
            sub = f.types[-1]
            if sub == GGUFValueType.STRING:
                val = _string_array_bytes(reader, key)
            else:
                val = [x.item() if hasattr(x, "item") else x for x in f.contents()]
            writer.add_key_value(key, val, vtype, sub_type=sub)
        elif vtype == GGUFValueType.STRING:
            writer.add_key_value(key, bytes(f.parts[f.data[0]]), vtype)
        else:
            writer.add_key_value(key, f.parts[f.data[0]][0].item(), vtype)
    if "tokenizer.ggml.scores" not in reader.fields:
        writer.add_key_value(
            "tokenizer.ggml.scores",
            [0.0] * info.vocab_size,
            GGUFValueType.ARRAY,
            sub_type=GGUFValueType.FLOAT32,
        )
    tensors = list(reader.tensors)
    if "output.weight" not in info.tensor_names:
        embd = next(t for t in tensors if t.name == "token_embd.weight")
        tensors.append(embd._replace(name="output.weight"))
    for t in tensors:
        # raw_dtype carries the real type; the dtype argument only has to be "not uint8" so that the
        # writer takes the logical shape as given.
        writer.add_tensor_info(
            t.name, _logical_shape(t), np.dtype(np.float32), int(t.n_bytes), raw_dtype=t.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in tensors:
        writer.write_tensor_data(np.asarray(t.data).reshape(-1).view(np.uint8))
    writer.close()
    # The bundled loader knows GGUF v1/v2; for little-endian files v2 and v3 share the layout.
    with out.open("r+b") as fh:
        fh.seek(4)
        fh.write(struct.pack("<I", 2))


def _logical_shape(t) -> list[int]:
    # GGUFReader reports shapes fastest-dimension first; GGUFWriter wants numpy order.
    return [int(x) for x in reversed(t.shape.tolist())]
