"""Your own masks: index, 0/1, 0/255, colour, multilabel and data.label_map, through the dataset and `data check`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab.cli_data import run_check, run_check_config
from deeplab.config import Config, ConfigError, apply_overrides, load_config
from deeplab.data.folder import DatasetError, FolderDataset
from deeplab.data.stats import class_pixel_counts, median_frequency_weights
from deeplab.data.transforms import EvalTransform, TrainTransform
from deeplab.engine.data import build_dataset

H, W = 12, 16
STEMS = ("a", "b", "c")


def _image(root: Path, stem: str) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(stem)).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "images" / f"{stem}.png")


def _blob(value: int, background: int = 0) -> np.ndarray:
    """A mask with a block of ``value`` at rows 2..7, columns 4..11 (48 pixels) on ``background``."""
    mask = np.full((H, W), background, dtype=np.uint8)
    mask[2:8, 4:12] = value
    return mask


def _folder(root: Path, masks: dict[str, np.ndarray], classes: str | None = None) -> Path:
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for stem, mask in masks.items():
        _image(root, stem)
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root


def _check_output(root: Path, capsys, **options) -> tuple[int, str]:
    status = run_check("folder", root, progress=False, **options)
    return status, capsys.readouterr().out


def test_0_255_masks_are_recognised_and_read_as_binary(tmp_path, capsys):
    root = _folder(tmp_path, {s: _blob(255) for s in STEMS})
    with pytest.warns(UserWarning, match=r"set model.task=binary, or data.label_map=\{255: 1\}"):
        status, out = _check_output(root, capsys)
    assert status == 0
    assert "masks: masks hold only 0 and 255\nconfig: set model.task=binary, or data.label_map={255: 1}" in out
    data = FolderDataset(root, val_ratio=0.0, task="binary")
    assert data.classes == ("foreground",) and data.num_classes == 1
    _, target = data.load(0)
    assert target.shape == (H, W) and torch.equal(target, torch.from_numpy(_blob(1)))
    assert class_pixel_counts(data).tolist() == [3 * (H * W - 48), 3 * 48]
    status, out = _check_output(root, capsys, task="binary")
    assert "masks hold only 0 and 255: read as background 0 and foreground 255" in out and "config:" not in out


def test_label_map_from_the_config_maps_on_load_and_in_the_check(tmp_path, capsys):
    root = _folder(tmp_path / "data", {s: _blob(255) for s in STEMS})
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{name: folder, root: {root}, val_ratio: 0.34, label_map: {{255: 1}}}}\n")
    assert load_config(config).data.label_map == {255: 1}
    assert run_check_config(config, progress=False) == 0
    out = capsys.readouterr().out
    assert "read as background 0 and foreground 255" in out and "config:" not in out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.split()[:1] in (["0"], ["1"])}
    assert rows["class_0"][2] == str(3 * (H * W - 48)) and rows["class_1"][2] == str(3 * 48)  # both splits
    data = FolderDataset(root, val_ratio=0.0, label_map={255: 1})
    assert data.num_classes == 2 and torch.equal(data.load(1)[1], torch.from_numpy(_blob(1)))


def test_label_map_can_send_a_class_to_ignore(tmp_path):
    root = _folder(tmp_path, {"a": _blob(2, background=1)})
    data = FolderDataset(root, val_ratio=0.0, label_map={1: 255, 2: 0}, num_classes=2)
    assert torch.equal(data.load(0)[1], torch.from_numpy(_blob(0, background=255)))
    with pytest.raises(ValueError, match="data.label_map key 300 must be an integer in 0..255"):
        FolderDataset(root, val_ratio=0.0, label_map={300: 1})


def test_0_1_masks_with_ignore_under_binary(tmp_path, capsys):
    masks = {s: _blob(1) for s in STEMS}
    masks["c"][0, :] = 255
    root = _folder(tmp_path, masks)
    _, out = _check_output(root, capsys)
    assert "masks: masks hold only 0, 1, 255: binary masks (0 background, 1 foreground, 255 ignored)" in out
    assert "config: set model.task=binary" in out
    data = FolderDataset(root, val_ratio=0.0, task="binary")
    assert data.load(2)[1][0].tolist() == [255] * W  # 1 is present, so 255 stays "ignore"
    assert class_pixel_counts(data).tolist() == [3 * (H * W - 48) - W, 3 * 48]


def test_index_masks_under_binary_are_bad_and_the_check_says_so(tmp_path, capsys):
    root = _folder(tmp_path, {"a": _blob(1), "b": _blob(2), "c": _blob(3)})
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("a\nb\nc\n")
    (root / "splits" / "val.txt").write_text("a\n")
    status, out = _check_output(root, capsys, task="binary")
    assert status == 1
    assert "index masks (pixel value = class id): values 0, 1, 2, 3" in out
    assert "config: these are class ids, not binary masks: set model.task=multiclass" in out
    assert "masks/b.png: label values 2 are neither class ids (0..1)" in out


def test_colour_masks_map_through_classes_txt(tmp_path, capsys):
    colours = {0: (0, 0, 0), 1: (250, 10, 10), 2: (10, 200, 30)}
    ids = _blob(1)
    ids[9:, :] = 2
    rgb = np.array([colours[i] for i in range(3)], dtype=np.uint8)[ids]
    classes = "bg 0 0 0\nroad 250 10 10\ntree #0AC81E\n"
    root = _folder(tmp_path, {"a": rgb, "b": rgb, "c": rgb, "d": rgb}, classes=classes)
    status, out = _check_output(root, capsys)
    assert status == 0 and "masks: RGB colour masks, mapped to class ids through the colours in classes.txt" in out
    data = FolderDataset(root, val_ratio=0.0)
    assert data.classes == ("bg", "road", "tree")
    assert torch.equal(data.load(0)[1], torch.from_numpy(ids))
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(root / "masks" / "b.png")
    (root / "splits").mkdir()  # every split keeps a good sample
    (root / "splits" / "train.txt").write_text("a\nb\n")
    (root / "splits" / "val.txt").write_text("c\n")
    status, out = _check_output(root, capsys)
    assert status == 1 and "masks/b.png: colour(s) (1, 2, 3) are not in classes.txt" in out


def _multilabel(root: Path) -> Path:
    """Two samples, classes cat/dog/sky; a: cat 0/255 + dog 0/255 (overlapping), b: sky only."""
    _folder(root, {}, classes="cat\ndog\nsky\n")
    samples = {"a": {"cat": _blob(255), "dog": np.roll(_blob(255), 3, axis=1)}, "b": {"sky": _blob(255)}}
    for stem, planes in samples.items():
        _image(root, stem)
        (root / "masks" / stem).mkdir(parents=True)
        for name, plane in planes.items():
            Image.fromarray(plane).save(root / "masks" / stem / f"{name}.png")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("a\nb\n")
    (root / "splits" / "val.txt").write_text("a\n")
    return root


def test_multilabel_masks_give_one_plane_per_class(tmp_path, capsys):
    root = _multilabel(tmp_path)
    data = FolderDataset(root, task="multilabel")
    _, target = data.load(0)
    assert target.shape == (3, H, W) and target.dtype == torch.uint8
    assert torch.equal(target[0], torch.from_numpy(_blob(1)))
    assert torch.equal(target[1], torch.from_numpy(np.roll(_blob(1), 3, axis=1)))
    assert int(target[2].sum()) == 0 and int((target[0] & target[1]).sum()) == 6 * 5  # overlap: both labels
    assert class_pixel_counts(data).tolist() == [48, 48, 48]
    with pytest.raises(DatasetError, match="found masks/a/, a multilabel mask folder: set model.task=multilabel"):
        FolderDataset(root)
    status, out = _check_output(root, capsys, task="multilabel")
    assert status == 0 and "masks: multilabel masks: one PNG per class in masks/<stem>/<class name>.png" in out
    Image.fromarray(_blob(255)).save(root / "masks" / "b" / "cow.png")
    status, out = _check_output(root, capsys, task="multilabel")
    assert status == 1 and "masks/b/cow.png: not '<class name>.png' for a class of classes.txt" in out
    with pytest.raises(DatasetError, match="model.task=multilabel needs classes.txt"):
        (root / "classes.txt").unlink()
        FolderDataset(root, task="multilabel")


def test_transforms_carry_multilabel_targets_and_n_channel_float_images():
    torch.manual_seed(0)
    image = torch.rand(5, H, W)
    target = torch.from_numpy(np.stack([_blob(1), _blob(0)]))
    mean, std = [0.5] * 5, [0.25] * 5
    out_image, out_target = TrainTransform(20, scale_range=(1.0, 1.0), mean=mean, std=std)(image, target)
    assert out_image.shape == (5, 20, 20) and out_target.shape == (2, 20, 20) and out_target.dtype == torch.int64
    assert set(out_target.unique().tolist()) <= {0, 1, 255}
    assert int((out_target == 255).sum()) == 2 * (20 * 20 - H * W)  # padding is ignore on every plane
    assert torch.allclose(out_image[:, 19, 19], torch.zeros(5))  # float images pad with the mean: 0 once normalised
    evaluated, kept = EvalTransform(mean=mean, std=std)(image, target)
    assert torch.allclose(evaluated, (image - 0.5) / 0.25) and torch.equal(kept, target.long())
    with pytest.raises(ValueError, match="the image has 5 channel"):
        EvalTransform()(image, target)


def test_median_frequency_weights():
    freq = np.array([100, 300, 600, 1000]) / 2000
    np.testing.assert_allclose(median_frequency_weights([100, 300, 0, 600, 1000]),
                               [freq[1] / freq[0], 1.0, 1.0, freq[1] / freq[2], freq[1] / freq[3]])  # lower median
    np.testing.assert_allclose(median_frequency_weights([100, 300, 600]), [3.0, 1.0, 0.5])
    assert median_frequency_weights([0, 0]).tolist() == [1.0, 1.0]


def test_config_keys_reach_the_folder_dataset(tmp_path):
    root = _folder(tmp_path, {s: _blob(255) for s in STEMS})
    config = apply_overrides(Config(), ["data.name=folder", f"data.root={root}", "data.label_map={255: 1}",
                                        "data.max_value=510", "data.val_ratio=0"])
    assert config.data.label_map == {255: 1} and config.data.max_value == 510.0
    data = build_dataset(config.data, "train", None, task="binary", in_channels=1)
    image, target = data.load(0)
    assert image.shape == (1, H, W) and image.dtype == torch.float32 and float(image.max()) <= 0.5
    assert data.task == "binary" and torch.equal(target, torch.from_numpy(_blob(1)))
    with pytest.raises(ConfigError, match=r"data.label_map: expected dict\[int, int\] \| None, got \[1, 2\]"):
        apply_overrides(Config(), ["data.label_map=[1, 2]"])
