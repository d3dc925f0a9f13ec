"""A GGUF file's header: its key/value metadata and the sizes of its tensors, read
without numpy, llama.cpp or the `gguf` package (issue 20: the memory budget sizes a
model before loading it; `inferd ls` names it).

Only the header is read (a few MB at most for a large vocabulary); tensor data is
never touched. Bounded: a corrupt or hostile file cannot make the reader allocate
more than MAX_HEADER_BYTES or loop past the file's end.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
#: Largest header (metadata + tensor table) the reader accepts.
MAX_HEADER_BYTES = 256 << 20
#: Most entries in the metadata or the tensor table.
MAX_ENTRIES = 1 << 20

# GGUF value types
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# ggml type -> (block size in elements, bytes per block), for the types a GGUF holds.
_GGML_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}


class GGUFError(ValueError):
    """Not a GGUF file, or one whose header cannot be read."""


@dataclass
class GGUFInfo:
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Bytes of tensor data, from the tensor table (None if a type was unknown).
    tensor_bytes: int | None = None
    #: Lengths of the arrays not kept (the vocabulary: `tokenizer.ggml.tokens`).
    array_lengths: dict[str, int] = field(default_factory=dict)
    file_bytes: int = 0

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_int(self, key: str) -> int | None:
        value = self.metadata.get(f"{self.arch}.{key}")
        if isinstance(value, list):  # per-layer values (some architectures): the largest
            value = max(value) if value else None
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def n_vocab(self) -> int | None:
        return self.array_lengths.get("tokenizer.ggml.tokens")

    @property
    def name(self) -> str | None:
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) and value.strip() else None


class _Reader:
    def __init__(self, f: BinaryIO, limit: int) -> None:
        self.f = f
        self.left = limit
        self.last_count = 0

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.left:
            raise GGUFError("header larger than the reader accepts, or truncated")
        data = self.f.read(n)
        if len(data) != n:
            raise GGUFError("file ends inside its header")
        self.left -= n
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", "replace")

    def value(self, vtype: int, keep: bool = True) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.unpack("<I"), self.unpack("<Q")
            self.last_count = count
            if itype in _SCALARS and not keep:  # skip big arrays (token scores...) in one read
                self.take(count * struct.calcsize(_SCALARS[itype]))
                return None
            items = [self.value(itype, keep) for _ in _bounded(count)]
            return items if keep else None
        raise GGUFError(f"unknown metadata value type {vtype}")


def _bounded(count: int) -> range:
    if count > MAX_ENTRIES * 8:
        raise GGUFError("an array in the header is implausibly long")
    return range(count)


#: Arrays worth keeping (small, per-layer numbers); others (the vocabulary) are skipped.
_KEEP_ARRAY_SUFFIXES = ("head_count", "head_count_kv", "feed_forward_length")


def read_gguf(path: str | Path) -> GGUFInfo:
    """The metadata and tensor sizes of the GGUF at `path`. Raises GGUFError, OSError."""
    path = Path(path)
    with open(path, "rb") as f:
        r = _Reader(f, MAX_HEADER_BYTES)
        if r.take(4) != MAGIC:
            raise GGUFError(f"{path.name} is not a GGUF file")
        version = r.unpack("<I")
        if version < 2:
            raise GGUFError(f"{path.name}: GGUF version {version} is too old")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        if n_tensors > MAX_ENTRIES or n_kv > MAX_ENTRIES:
            raise GGUFError(f"{path.name}: implausible header counts")
        info = GGUFInfo(file_bytes=path.stat().st_size)
        for _ in range(n_kv):
            key, vtype = r.string(), r.unpack("<I")
            keep = vtype != _ARRAY or key.endswith(_KEEP_ARRAY_SUFFIXES)
            value = r.value(vtype, keep)
            if keep:
                info.metadata[key] = value
            else:
                info.array_lengths[key] = r.last_count
        total: int | None = 0
        for _ in range(n_tensors):
            r.string()
            dims = [r.unpack("<Q") for _ in _bounded(r.unpack("<I"))]
            gtype = r.unpack("<I")
            r.unpack("<Q")  # offset
            elements = 1
            for d in dims:
                elements *= d
            block = _GGML_BLOCKS.get(gtype)
            if block is None or total is None:
                total = None
                continue
            total += -(-elements // block[0]) * block[1]
        info.tensor_bytes = total
        return info
