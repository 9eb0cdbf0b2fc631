"""A small, fast GGUF header parser (metadata and tensor infos; tensor data is not read).

The ``gguf`` package's reader builds numpy arrays for every string of a 49k-token vocabulary and takes
seconds; this walks the header once with ``struct``. Damaged files raise ``GGUFFormatError``.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# GGUF value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALAR = {
    _U8: "<B", _I8: "<b", _U16: "<H", _I16: "<h", _U32: "<I", _I32: "<i",
    _F32: "<f", _BOOL: "<?", _U64: "<Q", _I64: "<q", _F64: "<d",
}  # fmt: skip
MAX_ARRAY = 50_000_000
MAX_STRING = 100_000_000


class GGUFFormatError(ValueError):
    pass


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    ggml_type: int
    offset: int  # relative to the start of the data section


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    fields: dict[str, Any]  # strings stay bytes inside arrays of strings (see ``string_array``)
    tensors: list[TensorInfo]
    data_offset: int
    file_size: int


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise GGUFFormatError(f"the header ends early (wanted {n} bytes at offset {self.pos})")

    def scalar(self, vtype: int) -> Any:
        fmt = _SCALAR.get(vtype)
        if fmt is None:
            raise GGUFFormatError(f"unknown GGUF value type {vtype} at offset {self.pos}")
        size = struct.calcsize(fmt)
        self.need(size)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def raw_string(self) -> bytes:
        n = self.scalar(_U64)
        if n > MAX_STRING:
            raise GGUFFormatError(f"a string of {n} bytes at offset {self.pos}")
        self.need(n)
        s = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return s

    def value(self, vtype: int) -> Any:
        if vtype == _STR:
            return self.raw_string().decode("utf-8", errors="replace")
        if vtype == _ARR:
            sub = self.scalar(_U32)
            count = self.scalar(_U64)
            if count > MAX_ARRAY:
                raise GGUFFormatError(f"an array of {count} items at offset {self.pos}")
            if sub == _STR:
                return [self.raw_string() for _ in range(count)]
            fmt = _SCALAR.get(sub)
            if fmt is None:
                raise GGUFFormatError(f"unsupported array item type {sub}")
            size = struct.calcsize(fmt)
            self.need(size * count)
            vals = list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.pos))
            self.pos += size * count
            return vals
        return self.scalar(vtype)


def read_header(path: str | Path) -> GGUFHeader:
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        if size < 24:
            raise GGUFFormatError(f"only {size} bytes")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                return _parse(view, size)
            finally:
                view.release()


def _parse(view: memoryview, size: int) -> GGUFHeader:
    c = _Cursor(view)
    c.need(4)
    if bytes(view[:4]) != b"GGUF":
        raise GGUFFormatError("its first bytes are not 'GGUF'")
    c.pos = 4
    version = c.scalar(_U32)
    n_tensors = c.scalar(_U64)
    n_kv = c.scalar(_U64)
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise GGUFFormatError(f"implausible counts ({n_tensors} tensors, {n_kv} keys)")
    fields: dict[str, Any] = {}
    for _ in range(n_kv):
        key = c.raw_string().decode("utf-8", errors="replace")
        vtype = c.scalar(_U32)
        fields[key] = c.value(vtype)
    tensors = []
    for _ in range(n_tensors):
        name = c.raw_string().decode("utf-8", errors="replace")
        n_dims = c.scalar(_U32)
        if n_dims > 8:
            raise GGUFFormatError(f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(c.scalar(_U64) for _ in range(n_dims))
        ggml_type = c.scalar(_U32)
        offset = c.scalar(_U64)
        tensors.append(TensorInfo(name, shape, ggml_type, offset))
    alignment = int(fields.get("general.alignment", 32)) or 32
    data_offset = (c.pos + alignment - 1) // alignment * alignment
    return GGUFHeader(version, fields, tensors, data_offset, size)
