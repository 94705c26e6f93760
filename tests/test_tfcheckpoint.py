"""deeplab.tfcheckpoint: TF V2 checkpoints written by tests/tfbundle.py (checked against TensorFlow when it was
written) read back exactly, from a prefix, a folder or a tarball; broken files give errors naming the file."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest

from deeplab.tfcheckpoint import TFCheckpointError, crc32c, mask_crc, read_tf_checkpoint, resolve_prefix
from tests.tfbundle import write_bundle, write_zoo_tarball


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tensors = {f"xception_65/entry_flow/block{i}/unit_1/xception_module/separable_conv{j}_depthwise/depthwise_weights":
               rng.standard_normal((3, 3, 4, 1)).astype(np.float32) for i in range(4) for j in range(1, 4)}
    tensors.update({
        "global_step": np.array(30000, dtype=np.int64),
        "logits/semantic/biases": rng.standard_normal(21).astype(np.float32),
        "doubles": rng.standard_normal((2, 3)),
        "ints": np.arange(-5, 5, dtype=np.int32).reshape(2, 5),
        "halves": rng.standard_normal(4).astype(np.float16),
        "flags": np.array([True, False, True]),
        "bytes": np.arange(7, dtype=np.uint8),
        "empty": np.zeros((0, 3), dtype=np.float32),
    })
    return tensors


def _assert_same(read: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(read) == sorted(expected)
    for name, array in expected.items():
        assert read[name].dtype == array.dtype, name
        assert read[name].shape == array.shape, name
        assert read[name].tobytes() == array.tobytes(), name


def test_crc32c_known_values():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    data = bytes(range(256)) * 300  # long enough for the numpy lanes path
    register = 0xFFFFFFFF
    for byte in data:  # bit by bit, the definition
        register ^= byte
        for _ in range(8):
            register = (register >> 1) ^ (0x82F63B78 if register & 1 else 0)
    assert crc32c(data) == register ^ 0xFFFFFFFF
    assert mask_crc(0) == 0xA282EAD8


@pytest.mark.parametrize("num_shards, block_size, restart_interval", [(1, 4096, 16), (3, 200, 2)])
def test_round_trip(tmp_path, num_shards, block_size, restart_interval):
    tensors = _tensors()
    prefix = write_bundle(tmp_path / "model.ckpt-30000", tensors, num_shards=num_shards, block_size=block_size,
                          restart_interval=restart_interval)
    read = read_tf_checkpoint(prefix)
    _assert_same(read, tensors)
    assert read["global_step"].shape == () and int(read["global_step"]) == 30000
    if num_shards == 3:
        assert len(list(tmp_path.glob("model.ckpt-30000.data-*-of-00003"))) == 3


def test_bfloat16_is_widened_to_float32(tmp_path):
    values = np.array([1.0, -2.5, 0.09375, 3.140625], dtype=np.float32)  # exact in bfloat16
    prefix = write_bundle(tmp_path / "model.ckpt", {"w": values}, bfloat16=("w",))
    read = read_tf_checkpoint(prefix)["w"]
    assert read.dtype == np.float32 and read.tolist() == values.tolist()


def test_sources_prefix_index_folder_state_file(tmp_path):
    tensors = {"a": np.arange(3, dtype=np.float32)}
    prefix = write_bundle(tmp_path / "run" / "model.ckpt-5", tensors)
    for source in (prefix, f"{prefix}.index", f"{prefix}.data-00000-of-00001", tmp_path / "run"):
        _assert_same(read_tf_checkpoint(source), tensors)
    # A state file naming the writer's absolute path elsewhere: the checkpoint beside it is used.
    write_bundle(tmp_path / "run" / "model.ckpt-9", {"a": np.zeros(3, dtype=np.float32)})
    (tmp_path / "run" / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/train/model.ckpt-5"\n'
                                                 'all_model_checkpoint_paths: "/elsewhere/train/model.ckpt-9"\n')
    assert resolve_prefix(tmp_path / "run") == prefix
    _assert_same(read_tf_checkpoint(tmp_path / "run"), tensors)


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TFCheckpointError, match=r"no TF checkpoint in .*empty: expected a PREFIX.index"):
        read_tf_checkpoint(tmp_path / "empty")
    write_bundle(tmp_path / "two" / "a.ckpt", {"a": np.zeros(1, np.float32)})
    write_bundle(tmp_path / "two" / "b.ckpt", {"a": np.zeros(1, np.float32)})
    with pytest.raises(TFCheckpointError, match=r"holds 2 TF checkpoints \(a.ckpt.index, b.ckpt.index\)"):
        read_tf_checkpoint(tmp_path / "two")
    (tmp_path / "two" / "checkpoint").write_text('model_checkpoint_path: "gone.ckpt"\n')
    with pytest.raises(TFCheckpointError, match=r"names the checkpoint 'gone.ckpt', but .*gone.ckpt.index"):
        read_tf_checkpoint(tmp_path / "two")
    with pytest.raises(TFCheckpointError, match=r"at .*nothing: neither it nor .*nothing.index exists"):
        read_tf_checkpoint(tmp_path / "nothing")


def test_zoo_tarball(tmp_path):
    tensors = _tensors()
    tarball = write_zoo_tarball(tmp_path / "deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz",
                                "deeplabv3_mnv2_pascal_train_aug", "model.ckpt-30000", tensors)
    _assert_same(read_tf_checkpoint(tarball), tensors)


def _tarball_with(path, name: str, *, link: bool = False):
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(name)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            archive.addfile(info)
        else:
            info.size = 3
            archive.addfile(info, io.BytesIO(b"abc"))
    return path


@pytest.mark.parametrize("name, link, message", [
    ("../evil.index", False, r"holds the unsafe path '../evil.index'; refusing to extract"),
    ("/tmp/evil.index", False, r"holds the unsafe path '/tmp/evil.index'; refusing to extract"),
    ("dir/model.ckpt.index", True, r"holds the link 'dir/model.ckpt.index'; refusing to extract"),
])
def test_unsafe_tarball_is_refused(tmp_path, name, link, message):
    tarball = _tarball_with(tmp_path / "bad.tar.gz", name, link=link)
    with pytest.raises(TFCheckpointError, match=message):
        read_tf_checkpoint(tarball)
    assert not (tmp_path / "evil.index").exists()


def test_tarball_without_checkpoint_and_corrupt_tarball(tmp_path):
    tarball = _tarball_with(tmp_path / "graph_only.tar.gz", "model/frozen_inference_graph.pb")
    with pytest.raises(TFCheckpointError, match=r"graph_only.tar.gz: no TF checkpoint in the archive"):
        read_tf_checkpoint(tarball)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(tarball.read_bytes()[:40])
    with pytest.raises(TFCheckpointError, match=r"cannot read the archive .*broken.tar.gz"):
        read_tf_checkpoint(broken)


def test_corrupt_data_is_caught_by_crc(tmp_path):
    prefix = write_bundle(tmp_path / "model.ckpt", {"a": np.arange(100, dtype=np.float32)})
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[17] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(TFCheckpointError, match=r"data-00000-of-00001: tensor 'a' fails its CRC32C check"):
        read_tf_checkpoint(prefix)
    assert read_tf_checkpoint(prefix, verify=False)["a"].shape == (100,)


def test_missing_and_truncated_data_files(tmp_path):
    prefix = write_bundle(tmp_path / "model.ckpt", {"a": np.arange(100, dtype=np.float32)}, num_shards=1)
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:200])
    with pytest.raises(TFCheckpointError, match=r"data-00000-of-00001 is truncated: tensor 'a' needs bytes up to "
                                                r"400, the file has 200"):
        read_tf_checkpoint(prefix)
    os.remove(data)
    with pytest.raises(TFCheckpointError, match=r"model.ckpt lacks its data file .*model.ckpt.data-00000-of-00001"):
        read_tf_checkpoint(prefix)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-8] + b"\0" * 8, "the table magic number is missing"),
    (lambda raw: raw[:20], "shorter than the 48-byte table footer"),
    (lambda raw: bytes([raw[0] ^ 1]) + raw[1:], "fails its CRC32C check"),
])
def test_corrupt_index(tmp_path, damage, message):
    prefix = write_bundle(tmp_path / "model.ckpt", {"a": np.zeros(2, np.float32)})
    index = tmp_path / "model.ckpt.index"
    index.write_bytes(damage(index.read_bytes()))
    with pytest.raises(TFCheckpointError, match=rf"model.ckpt.index is not a valid TF checkpoint index: .*{message}"):
        read_tf_checkpoint(prefix)


def test_snappy_blocks_are_refused_with_the_reason(tmp_path):
    prefix = write_bundle(tmp_path / "model.ckpt", {"a": np.zeros(2, np.float32)}, compression=1)
    with pytest.raises(TFCheckpointError, match=r"Snappy-compressed; TensorFlow writes checkpoint indexes "
                                                r"uncompressed"):
        read_tf_checkpoint(prefix)


@pytest.mark.parametrize("override, message", [
    ({"sliced": True}, r"tensor 'a' is saved in slices \(a partitioned variable\)"),
    ({"dtype": 7}, r"tensor 'a' has dtype string; only numeric tensors are read"),
    ({"size": 12}, r"tensor 'a' has 12 bytes for shape \[2\] \(8 expected\)"),
    ({"shard_id": 3}, r"tensor 'a' names data shard 3 of 1"),
])
def test_unsupported_entries(tmp_path, override, message):
    prefix = write_bundle(tmp_path / "model.ckpt", {"a": np.zeros(2, np.float32)}, overrides={"a": override})
    with pytest.raises(TFCheckpointError, match=rf"model.ckpt.index: {message}"):
        read_tf_checkpoint(prefix)


def test_include_reads_only_the_tensors_it_accepts(tmp_path):
    tensors = {"w": np.ones(2, np.float32), "w/Momentum": np.zeros(2, np.float32), "global_step": np.array(3)}
    # An unreadable tensor that is left out does not stop the others.
    prefix = write_bundle(tmp_path / "model.ckpt", tensors, overrides={"w/Momentum": {"sliced": True}})
    read = read_tf_checkpoint(prefix, include=lambda name: not name.endswith("/Momentum"))
    assert sorted(read) == ["global_step", "w"]
