"""A small writer of TensorFlow V2 checkpoints (TensorBundle) for tests that must not need TensorFlow.

It writes what TensorFlow's ``BundleWriter`` writes: ``PREFIX.index`` (a LevelDB-format table of
``BundleEntryProto`` under each tensor name, the ``BundleHeaderProto`` under the empty key, blocks
uncompressed) and ``PREFIX.data-0000k-of-0000n`` shards of raw little-endian bytes. Knobs make
small blocks (several data blocks, restart points) and broken files for the error tests.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deeplab.tfcheckpoint import TABLE_MAGIC, crc32c, data_path, mask_crc

DTYPE_ENUM = {"float32": 1, "float64": 2, "int32": 3, "uint8": 4, "int16": 5, "int8": 6, "int64": 9, "bool": 10,
              "uint16": 17, "float16": 19}
DT_BFLOAT16 = 14


def varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 fields are written as ten-byte two's complement
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def field_fixed32(number: int, value: int) -> bytes:
    return varint(number << 3 | 5) + value.to_bytes(4, "little")


def entry_proto(*, dtype: int, shape: tuple[int, ...], shard_id: int, offset: int, size: int, crc: int,
                sliced: bool = False) -> bytes:
    """A serialised ``BundleEntryProto``."""
    shape_proto = b"".join(field_bytes(2, field_varint(1, dim)) for dim in shape)
    message = field_varint(1, dtype) + field_bytes(2, shape_proto)
    if shard_id:
        message += field_varint(3, shard_id)
    if offset:
        message += field_varint(4, offset)
    message += field_varint(5, size) + field_fixed32(6, crc)
    if sliced:  # one TensorSliceProto with an empty extent list
        message += field_bytes(7, b"")
    return message


def header_proto(num_shards: int, *, big_endian: bool = False) -> bytes:
    version = field_varint(1, 1)  # VersionDef.producer
    return field_varint(1, num_shards) + field_varint(2, int(big_endian)) + field_bytes(3, version)


def table_block(items: list[tuple[bytes, bytes]], restart_interval: int = 16) -> bytes:
    """Block contents: prefix-compressed keys, a restart point (full key) every ``restart_interval`` entries."""
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(items):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        previous = key
    restarts = restarts or [0]
    for offset in restarts:
        out += offset.to_bytes(4, "little")
    return bytes(out + len(restarts).to_bytes(4, "little"))


def write_table(path: Path, items: list[tuple[bytes, bytes]], *, block_size: int = 4096, restart_interval: int = 16,
                compression: int = 0) -> None:
    """A LevelDB-format table of sorted ``items``; each block followed by its type byte and masked CRC32C."""
    out = bytearray()

    def add_block(contents: bytes) -> bytes:
        offset = len(out)
        trailer = bytes([compression])
        out.extend(contents + trailer + mask_crc(crc32c(contents + trailer)).to_bytes(4, "little"))
        return varint(offset) + varint(len(contents))

    index_items, pending = [], []
    for key, value in items:
        pending.append((key, value))
        if sum(len(k) + len(v) for k, v in pending) >= block_size:
            index_items.append((pending[-1][0], add_block(table_block(pending, restart_interval))))
            pending = []
    if pending:
        index_items.append((pending[-1][0], add_block(table_block(pending, restart_interval))))
    metaindex = add_block(table_block([]))
    index = add_block(table_block(index_items, 1))
    footer = (metaindex + index).ljust(40, b"\0") + TABLE_MAGIC.to_bytes(8, "little")
    path.write_bytes(bytes(out + footer))


def write_bundle(prefix: str | Path, tensors: Mapping[str, np.ndarray], *, num_shards: int = 1,
                 block_size: int = 4096, restart_interval: int = 16, compression: int = 0,
                 bfloat16: tuple[str, ...] = (), overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Writes ``tensors`` as a TF V2 checkpoint at ``prefix``; returns the prefix.

    Tensors go to shards in turn; names in ``bfloat16`` (float32 arrays) are stored as bfloat16 (the
    top half of each float32). ``overrides`` replace fields of a tensor's entry (``dtype``, ``size``,
    ``crc``, ``sliced``...) to fabricate broken or unsupported files.
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    shards = [bytearray() for _ in range(num_shards)]
    entries = []
    for i, name in enumerate(sorted(tensors)):
        array = np.array(tensors[name], order="C")  # keeps 0-d arrays 0-d
        if name in bfloat16:
            raw, dtype = (array.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes(), DT_BFLOAT16
        else:
            raw, dtype = array.astype(array.dtype.newbyteorder("<")).tobytes(), DTYPE_ENUM[array.dtype.name]
        shard = i % num_shards
        fields = {"dtype": dtype, "shape": array.shape, "shard_id": shard, "offset": len(shards[shard]),
                  "size": len(raw), "crc": mask_crc(crc32c(raw))}
        fields.update((overrides or {}).get(name, {}))
        entries.append((name.encode("utf-8"), entry_proto(**fields)))
        shards[shard] += raw
    for shard, contents in enumerate(shards):
        data_path(prefix, shard, num_shards).write_bytes(bytes(contents))
    items = [(b"", header_proto(num_shards)), *sorted(entries)]
    write_table(Path(f"{prefix}.index"), items, block_size=block_size, restart_interval=restart_interval,
                compression=compression)
    return prefix


def write_zoo_tarball(path: str | Path, folder: str, checkpoint: str, tensors: Mapping[str, np.ndarray]) -> Path:
    """A model-zoo style ``.tar.gz``: ``folder/`` with ``checkpoint.index``, its data shard and a frozen graph."""
    path = Path(path)
    staging = path.parent / f"{path.name}.staging"
    write_bundle(staging / folder / checkpoint, tensors)
    with tarfile.open(path, "w:gz") as archive:
        archive.add(staging / folder, arcname=folder)
        graph = tarfile.TarInfo(f"{folder}/frozen_inference_graph.pb")
        graph.size = 4
        archive.addfile(graph, io.BytesIO(b"\x0a\x00\x0a\x00"))  # skipped by the reader; any bytes do
    for file in sorted((staging / folder).iterdir()):
        file.unlink()
    (staging / folder).rmdir()
    staging.rmdir()
    return path
