"""Read a TensorFlow checkpoint (``PREFIX.index`` + ``PREFIX.data-00000-of-00001``) into NumPy
arrays, without TensorFlow.

Why a reader of our own: converting Google's bird MixIT checkpoints is the only thing birdsep
needs TensorFlow for, and TensorFlow is a ~600 MB install (with its own NumPy and protobuf pins)
to read 35 MB of float32. The format is small, stable and documented in TensorFlow's sources
(``tensorflow/core/util/tensor_bundle/tensor_bundle.{h,cc}``, ``tensor_bundle.proto``,
``tensorflow/core/lib/io/{table,block,format}.cc``), unchanged since TF 1.0 wrote V2
checkpoints in 2016:

* ``.index`` is an immutable sorted table (LevelDB's SSTable layout): data blocks of
  prefix-compressed key/value entries, each block followed by a 1-byte compression type and a
  masked CRC-32C; an index block pointing at the data blocks; and a 48-byte footer (two block
  handles, padding, the magic number ``0xdb4775248b80fb57``). Key ``""`` holds a
  ``BundleHeaderProto`` (shard count, endianness); every other key is a tensor name and holds a
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, CRC-32C of the bytes).
* ``.data-SSSSS-of-NNNNN`` holds each tensor's raw bytes, little-endian, at its offset.

What is checked: the magic number, every block's CRC-32C and compression byte (uncompressed, as
TF writes bundles), one shard, little-endian, each entry's offset and size against the data file
and its dtype's width; tensor bytes are not checksummed (birdsep's downloads are checked whole
by sha256). Only plain (unsliced) tensors of numeric dtypes are read. Anything else is a
:class:`CheckpointError`, one line.

Tested against checkpoints TensorFlow 2.21 writes (``tests/fixtures/bird_mixit``).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdsep.errors import UsageError

MAGIC = 0xDB4775248B80FB57
FOOTER = 48
#: TF's DataType enum → NumPy dtype (the numeric ones).
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 14: np.uint16, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
_BFLOAT16, _FLOAT = 14, 1


class CheckpointError(UsageError):
    """A file that is not a readable TensorFlow checkpoint; ``str(err)`` is one line naming it."""


@dataclass(frozen=True)
class Entry:
    """Where one tensor lies in the data file."""

    name: str
    dtype: int  # TF DataType enum
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int


# ----------------------------------------------------------------------------- CRC-32C, varints, protobuf


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as LevelDB and TF use (pure Python: for the small index only)."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _unmask(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, value) of a protobuf message: ints for varint/fixed fields, bytes for the rest."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
            if len(value) != n:
                raise ValueError("truncated field")
        else:
            raise ValueError(f"unknown wire type {wire}")
        yield number, value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _entry(name: str, value: bytes) -> Entry:
    """A BundleEntryProto: dtype=1, shape=2 (TensorShapeProto: dim=2 {size=1}), shard_id=3,
    offset=4, size=5, crc32c=6, slices=7."""
    dtype, shape, shard, offset, size = 0, (), 0, 0, 0
    for number, v in _fields(value):
        if number == 1:
            dtype = v
        elif number == 2:
            shape = tuple(_signed(dict(_fields(dim)).get(1, 0)) for n, dim in _fields(v) if n == 2)
        elif number == 3:
            shard = v
        elif number == 4:
            offset = v
        elif number == 5:
            size = v
        elif number == 7:
            raise ValueError(f"{name} is stored in slices (partitioned variables are not supported)")
    return Entry(name, dtype, shape, shard, offset, size)


# ----------------------------------------------------------------------------- the table


def _block(data: bytes, handle: tuple[int, int]) -> bytes:
    """The contents of the block at (offset, size), its trailer checked."""
    offset, size = handle
    if offset + size + 5 > len(data):
        raise ValueError("a block runs past the end of the file")
    contents, kind = data[offset:offset + size], data[offset + size]
    (masked,) = struct.unpack_from("<I", data, offset + size + 1)
    if _unmask(masked) != crc32c(data[offset:offset + size + 1]):
        raise ValueError("block checksum mismatch")
    if kind != 0:
        raise ValueError(f"compressed block (type {kind})")
    return contents


def _entries(block: bytes):
    """(key, value) of a block: shared, non-shared, value length varints, then the key delta and value."""
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def _handle(buf: bytes, pos: int = 0) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (offset, size), pos


def read_index(index: Path) -> dict[str, Entry]:
    """The tensors an ``.index`` file lists: name → :class:`Entry`."""
    try:
        data = Path(index).read_bytes()
    except OSError as exc:
        raise CheckpointError.of(index, f"cannot be read ({exc.strerror or exc})") from None
    try:
        if len(data) < FOOTER or struct.unpack_from("<Q", data, len(data) - 8)[0] != MAGIC:
            raise ValueError("no table footer (not a TensorFlow checkpoint index)")
        footer = data[-FOOTER:]
        _, pos = _handle(footer)  # the metaindex block: unused by bundles
        index_handle, _ = _handle(footer, pos)
        entries: dict[str, Entry] = {}
        header = None
        for _, value in _entries(_block(data, index_handle)):
            block_handle, _ = _handle(value)
            for key, v in _entries(_block(data, block_handle)):
                if key == b"":
                    header = dict(_fields(v))
                    continue
                name = key.decode("utf-8")
                entries[name] = _entry(name, v)
        if header is None:
            raise ValueError("no bundle header")
        if header.get(1, 1) != 1:
            raise ValueError(f"{header.get(1)} shards (birdsep reads single-shard checkpoints)")
        if header.get(2, 0) != 0:
            raise ValueError("big-endian checkpoint")
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise CheckpointError.of(index, f"not a readable TensorFlow checkpoint index: {exc}") from None
    return entries


def data_path(index: Path) -> Path:
    """The data file beside an ``.index`` (single shard)."""
    index = Path(index)
    return index.with_name(index.name[: -len(".index")] + ".data-00000-of-00001")


def read(index: Path, names: set[str] | None = None) -> dict[str, np.ndarray]:
    """Tensors of the checkpoint whose ``.index`` is ``index`` (all, or those in ``names``): name → array."""
    entries = read_index(index)
    data = data_path(index)
    try:
        size = data.stat().st_size
        handle = open(data, "rb")
    except OSError as exc:
        raise CheckpointError.of(data, f"cannot be read ({exc.strerror or exc})") from None
    out = {}
    with handle:
        for name, e in entries.items():
            if names is not None and name not in names:
                continue
            if e.dtype not in DTYPES or e.dtype == _BFLOAT16:
                raise CheckpointError.of(index, f"{name}: dtype {e.dtype} is not one birdsep reads")
            dtype = np.dtype(DTYPES[e.dtype]).newbyteorder("<")
            count = int(np.prod(e.shape, dtype=np.int64)) if e.shape else 1
            if any(d < 0 for d in e.shape) or e.size != count * dtype.itemsize or e.offset + e.size > size:
                raise CheckpointError.of(data, f"{name}: {e.size} bytes at {e.offset} do not hold a {dtype.name} "
                                               f"tensor of shape {e.shape} (file of {size} bytes)")
            handle.seek(e.offset)
            raw = handle.read(e.size)
            out[name] = np.frombuffer(raw, dtype=dtype).reshape(e.shape).astype(dtype.newbyteorder("="))
    return out


__all__ = ["CheckpointError", "Entry", "crc32c", "read_index", "read", "data_path"]
