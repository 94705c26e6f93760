"""Reading TensorFlow V2 checkpoints (TensorBundle) with Python and numpy alone.

A checkpoint ``PREFIX`` is ``PREFIX.index``, a LevelDB-format table (SSTable) that maps each tensor
name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size, CRC32C), and the shards
``PREFIX.data-0000k-of-0000n`` holding the raw little-endian bytes. The empty key holds the
``BundleHeaderProto`` (number of shards, endianness). TensorFlow writes the index uncompressed.

Why our own reader: TensorFlow is a very large dependency for reading a few arrays, and the one
pure-Python reader on PyPI is not maintained. The protobuf messages are decoded by hand (a few
varint fields), so neither TensorFlow nor protobuf is needed.
"""

from __future__ import annotations

import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB's table magic, the last 8 bytes of every .index file
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the magic
BLOCK_TRAILER_SIZE = 5  # compression type byte + masked CRC32C
NO_COMPRESSION, SNAPPY_COMPRESSION = 0, 1

# TensorFlow's DataType enum (types.proto) -> numpy; bfloat16 (14) is widened to float32 on reading.
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"), 5: np.dtype("<i2"),
    6: np.dtype("i1"), 8: np.dtype("<c8"), 9: np.dtype("<i8"), 10: np.dtype("?"), 14: np.dtype("<u2"),
    17: np.dtype("<u2"), 18: np.dtype("<c16"), 19: np.dtype("<f2"), 22: np.dtype("<u4"), 23: np.dtype("<u8"),
}
DT_BFLOAT16 = 14
_DTYPE_NAMES = {7: "string", 20: "resource", 21: "variant"}


class TFCheckpointError(ValueError):
    """A TensorFlow checkpoint that is missing, corrupt or of a kind this reader does not handle."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are (``BundleEntryProto``)."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None
    sliced: bool


# ---------------------------------------------------------------- protobuf wire format


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The base-128 varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """``(field number, value)`` of a serialised protobuf message: ints for varint/fixed, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf field")
        yield number, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for number, value in _fields(buf):
        if number == 2:  # TensorShapeProto.dim
            size = next((_signed64(v) for n, v in _fields(value) if n == 1), 0)
            dims.append(size)
        elif number == 3 and value:
            raise ValueError("a tensor of unknown rank")
    if any(size < 0 for size in dims):
        raise ValueError(f"a tensor with unknown dimensions {dims}")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> TensorEntry:
    dtype = shard_id = offset = size = 0
    shape: tuple[int, ...] = ()
    crc = None
    sliced = False
    for number, value in _fields(buf):
        if number == 1:
            dtype = value
        elif number == 2:
            shape = _parse_shape(value)
        elif number == 3:
            shard_id = value
        elif number == 4:
            offset = value
        elif number == 5:
            size = value
        elif number == 6:
            crc = value
        elif number == 7:
            sliced = True
    return TensorEntry(name, dtype, shape, shard_id, offset, size, crc, sliced)


def _parse_header(buf: bytes) -> tuple[int, int, int]:
    """``(num_shards, endianness, min_consumer)`` of a ``BundleHeaderProto``."""
    num_shards, endianness, min_consumer = 1, 0, 0
    for number, value in _fields(buf):
        if number == 1:
            num_shards = value
        elif number == 2:
            endianness = value
        elif number == 3:
            min_consumer = next((v for n, v in _fields(value) if n == 2), 0)
    return num_shards, endianness, min_consumer


# ---------------------------------------------------------------- CRC32C (Castagnoli)


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """The CRC32C (Castagnoli) checksum of ``data``, as TensorFlow and LevelDB compute it."""
    return google_crc32c.value(data if isinstance(data, bytes) else bytes(data))


def mask_crc(crc: int) -> int:
    """LevelDB's masked CRC (rotated and offset), the form stored in checkpoints."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------- the SSTable (.index)


def _block_handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def _read_block(index: bytes, offset: int, size: int) -> bytes:
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(index):
        raise ValueError(f"a block at {offset}+{size} runs past the end of the file ({len(index)} bytes)")
    block = index[offset:end]
    kind = index[end]
    if kind == SNAPPY_COMPRESSION:
        raise ValueError("the index is Snappy-compressed; TensorFlow writes checkpoint indexes uncompressed, "
                         "so this file was not written by a TensorFlow checkpoint saver")
    if kind != NO_COMPRESSION:
        raise ValueError(f"unknown block compression type {kind}")
    stored = int.from_bytes(index[end + 1:end + 5], "little")
    if stored != mask_crc(crc32c(index[offset:end + 1])):
        raise ValueError(f"the block at offset {offset} fails its CRC32C check")
    return block


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Key/value pairs of a table block: keys share a prefix with the previous key (restarts aside)."""
    if len(block) < 4:
        raise ValueError("a block too short for its restart count")
    restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 * (restarts + 1)
    if limit < 0:
        raise ValueError(f"a block claims {restarts} restart points, more than fit in it")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_size, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + value_size > limit:
            raise ValueError("a malformed block entry")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + value_size]
        pos += value_size


def read_table(path: str | Path) -> dict[bytes, bytes]:
    """Every key/value pair of a LevelDB-format table file (a TensorFlow ``.index``), in key order."""
    path = Path(path)
    try:
        index = path.read_bytes()
    except OSError as err:
        raise TFCheckpointError(f"cannot read the TF checkpoint index {path}: {err.strerror or err}") from err
    try:
        if len(index) < FOOTER_SIZE:
            raise ValueError(f"{len(index)} bytes, shorter than the {FOOTER_SIZE}-byte table footer")
        footer = index[-FOOTER_SIZE:]
        if int.from_bytes(footer[-8:], "little") != TABLE_MAGIC:
            raise ValueError("the table magic number is missing from its end")
        _, _, pos = _block_handle(footer, 0)  # the metaindex: TensorFlow leaves it empty
        offset, size, _ = _block_handle(footer, pos)
        table: dict[bytes, bytes] = {}
        for _, handle in _block_entries(_read_block(index, offset, size)):
            data_offset, data_size, _ = _block_handle(handle, 0)
            table.update(_block_entries(_read_block(index, data_offset, data_size)))
        return table
    except ValueError as err:
        raise TFCheckpointError(f"{path} is not a valid TF checkpoint index: {err}") from err


# ---------------------------------------------------------------- the bundle


def read_entries(prefix: str | Path) -> tuple[int, dict[str, TensorEntry]]:
    """The number of data shards and every tensor's entry of the checkpoint ``prefix`` (no data read)."""
    index_path = Path(f"{prefix}.index")
    table = read_table(index_path)
    if b"" not in table:
        raise TFCheckpointError(f"{index_path} has no bundle header (empty key): not a TF V2 checkpoint index")
    try:
        num_shards, endianness, min_consumer = _parse_header(table.pop(b""))
        entries = {key.decode("utf-8"): _parse_entry(key.decode("utf-8"), value) for key, value in table.items()}
    except (ValueError, UnicodeDecodeError) as err:
        raise TFCheckpointError(f"{index_path} holds a malformed entry: {err}") from err
    if endianness != 0:
        raise TFCheckpointError(f"{index_path} was written on a big-endian machine; only little-endian is read")
    if min_consumer > 1:
        raise TFCheckpointError(f"{index_path} needs a reader of TensorBundle version {min_consumer} (this reads 1)")
    if num_shards < 1:
        raise TFCheckpointError(f"{index_path} claims {num_shards} data shards")
    return num_shards, entries


def data_path(prefix: str | Path, shard: int, num_shards: int) -> Path:
    """The file name TensorFlow gives data shard ``shard``."""
    return Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")


def _tensor(entry: TensorEntry, raw: bytearray) -> np.ndarray:
    dtype = _DTYPES[entry.dtype]
    array = np.frombuffer(raw, dtype=dtype).reshape(entry.shape)
    if entry.dtype == DT_BFLOAT16:  # numpy has no bfloat16: the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _check_entry(entry: TensorEntry, num_shards: int, index_path: Path) -> None:
    where = f"{index_path}: tensor {entry.name!r}"
    if entry.sliced:
        raise TFCheckpointError(f"{where} is saved in slices (a partitioned variable), which this reader "
                                "does not assemble")
    if entry.dtype not in _DTYPES:
        kind = _DTYPE_NAMES.get(entry.dtype, f"DataType {entry.dtype}")
        raise TFCheckpointError(f"{where} has dtype {kind}; only numeric tensors are read")
    expected = int(np.prod(entry.shape, dtype=np.int64)) * _DTYPES[entry.dtype].itemsize
    if entry.size != expected:
        raise TFCheckpointError(f"{where} has {entry.size} bytes for shape {list(entry.shape)} "
                                f"({expected} expected)")
    if not 0 <= entry.shard_id < num_shards:
        raise TFCheckpointError(f"{where} names data shard {entry.shard_id} of {num_shards}")


def read_bundle(prefix: str | Path, *, verify: bool = True,
                include: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    """The tensors of the checkpoint ``prefix`` (``PREFIX.index`` + data shards), checked against their CRC32C.

    ``include``: read only the tensors whose name it accepts (default: all).
    """
    num_shards, entries = read_entries(prefix)
    if include is not None:
        entries = {name: entry for name, entry in entries.items() if include(name)}
    index_path = Path(f"{prefix}.index")
    for entry in entries.values():
        _check_entry(entry, num_shards, index_path)
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted({entry.shard_id for entry in entries.values()}):
        path = data_path(prefix, shard, num_shards)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                for entry in (e for e in entries.values() if e.shard_id == shard):
                    if entry.offset + entry.size > size:
                        raise TFCheckpointError(f"{path} is truncated: tensor {entry.name!r} needs bytes up to "
                                                f"{entry.offset + entry.size}, the file has {size}")
                    handle.seek(entry.offset)
                    raw = bytearray(entry.size)
                    handle.readinto(raw)
                    if verify and entry.crc32c is not None and mask_crc(crc32c(raw)) != entry.crc32c:
                        raise TFCheckpointError(f"{path}: tensor {entry.name!r} fails its CRC32C check "
                                                "(the file is corrupt)")
                    tensors[entry.name] = _tensor(entry, raw)
        except FileNotFoundError as err:
            raise TFCheckpointError(f"the TF checkpoint {prefix} lacks its data file {path}") from err
        except OSError as err:
            raise TFCheckpointError(f"cannot read {path}: {err.strerror or err}") from err
    return dict(sorted(tensors.items()))


# ---------------------------------------------------------------- sources: prefix, folder, tarball

_STATE_LINE = re.compile(r'^\s*model_checkpoint_path\s*:\s*"(.*)"\s*$', re.MULTILINE)
_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")


def _from_state_file(folder: Path) -> Path | None:
    """The prefix the ``checkpoint`` state file in ``folder`` names, when there is one that exists."""
    state = folder / "checkpoint"
    if not state.is_file():
        return None
    match = _STATE_LINE.search(state.read_text(encoding="utf-8", errors="replace"))
    if not match:
        return None
    named = Path(match.group(1))
    # The writer's absolute path rarely exists on another machine; the file beside the state file does.
    for candidate in (folder / named, folder / named.name):
        if Path(f"{candidate}.index").is_file():
            return candidate
    raise TFCheckpointError(f"{state} names the checkpoint {match.group(1)!r}, but "
                            f"{folder / named.name}.index does not exist")


def _from_folder(folder: Path) -> Path:
    prefix = _from_state_file(folder)
    if prefix is not None:
        return prefix
    indexes = sorted(folder.rglob("*.index"))
    if not indexes:
        raise TFCheckpointError(f"no TF checkpoint in {folder}: expected a PREFIX.index file (with its "
                                "PREFIX.data-* files) or a 'checkpoint' state file")
    if len(indexes) > 1:
        names = ", ".join(str(p.relative_to(folder)) for p in indexes[:5])
        raise TFCheckpointError(f"{folder} holds {len(indexes)} TF checkpoints ({names}); pass the prefix of one "
                                "(e.g. DIR/model.ckpt)")
    return indexes[0].parent / indexes[0].stem


def resolve_prefix(source: str | Path) -> Path:
    """The checkpoint prefix for a prefix, a ``.index``/``.data-*`` file of one, or a folder holding one."""
    path = Path(source)
    if path.is_dir():
        return _from_folder(path)
    if path.suffix == ".index":
        path = path.with_suffix("")
    elif _DATA_SUFFIX.search(path.name):
        path = path.with_name(_DATA_SUFFIX.sub("", path.name))
    if Path(f"{path}.index").is_file():
        return path
    if path.exists():
        raise TFCheckpointError(f"{path} is not a TF checkpoint: expected a prefix with {path}.index beside it, "
                                "a folder, or a .tar.gz")
    raise TFCheckpointError(f"no TF checkpoint at {path}: {path}.index does not exist")


def is_tarball(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith((".tar.gz", ".tgz", ".tar"))


def extract_checkpoint_files(tarball: str | Path, dest: str | Path) -> None:
    """Extracts the checkpoint files (``*.index``, ``*.data-*``, ``checkpoint``) of a tarball into ``dest``.

    Members with absolute paths or ``..`` components are refused, as are links; other files (frozen
    graphs) are skipped.
    """
    tarball, dest = Path(tarball), Path(dest)
    try:
        with tarfile.open(tarball) as archive:
            members = archive.getmembers()
            for member in members:
                parts = Path(member.name).parts
                if member.name.startswith(("/", "\\")) or Path(member.name).is_absolute() or ".." in parts:
                    raise TFCheckpointError(f"{tarball} holds the unsafe path {member.name!r}; refusing to extract")
                if member.issym() or member.islnk():
                    raise TFCheckpointError(f"{tarball} holds the link {member.name!r}; refusing to extract")
            wanted = [m for m in members if m.isfile() and _is_checkpoint_file(Path(m.name).name)]
            for member in wanted:
                target = dest / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None  # a regular file always has contents
                with source, open(target, "wb") as out:
                    while chunk := source.read(1 << 22):
                        out.write(chunk)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise TFCheckpointError(f"cannot read the archive {tarball}: {err}") from err


def _is_checkpoint_file(name: str) -> bool:
    return name == "checkpoint" or name.endswith(".index") or bool(_DATA_SUFFIX.search(name))


# Training state a checkpoint may carry beside the network: optimizer slots, moving averages, step counters.
_TRAINING_SUFFIXES = ("/Momentum", "/Adam", "/Adam_1", "/RMSProp", "/RMSProp_1", "/ExponentialMovingAverage")
_TRAINING_NAMES = frozenset({"global_step", "beta1_power", "beta2_power"})


def is_training_state(name: str) -> bool:
    """True for a variable that is training state rather than part of the network (``global_step``, slots)."""
    return name in _TRAINING_NAMES or name.endswith(_TRAINING_SUFFIXES)


def read_tf_checkpoint(source: str | Path, *, verify: bool = True,
                       include: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    """Every tensor of a TensorFlow V2 checkpoint, by variable name, as numpy arrays.

    Args:
        source: a checkpoint prefix (``.../model.ckpt``, the ``.index`` beside it), a folder holding
            one checkpoint (or a ``checkpoint`` state file naming one), or a model-zoo ``.tar.gz``.
        verify: check every tensor's bytes against the CRC32C in the index.
        include: read only the tensors whose name it accepts (e.g. leave out optimizer slots).

    Raises:
        TFCheckpointError: naming the file and what was expected, for anything missing or corrupt.
    """
    path = Path(source)
    if path.is_file() and is_tarball(path):
        with tempfile.TemporaryDirectory(prefix="deeplab-tf-") as folder:
            extract_checkpoint_files(path, folder)
            try:
                prefix = _from_folder(Path(folder))
            except TFCheckpointError as err:
                raise TFCheckpointError(f"{path}: {str(err).replace(folder, 'the archive')}") from None
            return read_bundle(prefix, verify=verify, include=include)
    if not path.exists() and not Path(f"{path}.index").exists():
        raise TFCheckpointError(f"no TF checkpoint at {path}: neither it nor {path}.index exists")
    return read_bundle(resolve_prefix(path), verify=verify, include=include)

