"""Training on your own formats through the real CLI: colour masks, data.label_map and 16-bit grey images."""

import numpy as np
import torch
from PIL import Image

from deeplab.cli import main
from deeplab.data.folder import FolderDataset
from deeplab.inference import Predictor
from deeplab.modelfile import read_checkpoint
from deeplab.predict_files import read_input


def test_train_on_colour_masks_16_bit_grey_images_and_a_label_map(tiny, tmp_path, capsys):
    root = tmp_path / "mydata"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("sky #0000FF\nground 0 255 0\nthing 255 0 0\n")
    colours = np.array([(0, 0, 255), (0, 255, 0), (255, 0, 0)], dtype=np.uint8)
    for i in range(4):
        ids = np.zeros((40, 40), np.int64)
        ids[20:] = 1
        ids[5:15, 5 + i:15 + i] = 2
        Image.fromarray((ids * 20000 + 1000 * i).astype(np.uint16)).save(root / "images" / f"s{i}.png")
        Image.fromarray(colours[ids]).save(root / "masks" / f"s{i}.png")
    assert main(["data", "check", "--dataset", "folder", "--root", str(root)]) == 0
    assert "masks: RGB colour masks" in capsys.readouterr().out
    # "thing" (id 2) ignored through the label map: training sees sky and ground only
    assert main(["train", "--set", *tiny("data.name=folder", f"data.root={root}", "data.crop_size=33",
                                         "train.iterations=2", "data.label_map={2: 255}",
                                         "data.max_value=50000")]) == 0
    checkpoint = read_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint.classes == ["sky", "ground", "thing"] and checkpoint.step == 2
    assert checkpoint.config.data.label_map == {2: 255}
    # predict reads the images as training did: divided by the run's data.max_value, not by 16 bits' 65535
    predictor = Predictor.from_file(tmp_path / "run" / "last.pt", runtime="torch", precision="fp32")
    assert predictor.max_value == 50000
    dataset = FolderDataset(root, "train", in_channels=3, max_value=50000)
    image = read_input(dataset.image_paths[0], predictor.in_channels, predictor.max_value)
    assert image.dtype == torch.float32 and float(image.max()) > 43000 / 65535  # not the 16-bit range's scale
    assert torch.equal(image, torch.as_tensor(dataset[0][0]))


def _folder(root, masks_for):
    """Four 40 px images with a square that moves; ``masks_for(i, square)`` writes image i's masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        square = np.zeros((40, 40), bool)
        square[8:24, 4 + 3 * i:20 + 3 * i] = True
        pixels = np.full((40, 40, 3), 30, np.uint8)
        pixels[square] = (220, 200, 40)
        Image.fromarray(pixels).save(root / "images" / f"s{i}.png")
        masks_for(i, square)


def test_0_255_masks_train_a_binary_model_that_predicts_0_255_masks(tiny, tmp_path, capsys):
    root = tmp_path / "binary"
    _folder(root, lambda i, square: Image.fromarray(square.astype(np.uint8) * 255).save(root / "masks" / f"s{i}.png"))
    assert main(["data", "check", "--dataset", "folder", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "masks hold only 0 and 255" in out and "model.task=binary" in out
    assert main(["train", "--set", *tiny("data.name=folder", f"data.root={root}", "data.crop_size=33",
                                         "train.iterations=2", "model.task=binary")]) == 0
    checkpoint = read_checkpoint(tmp_path / "run" / "last.pt")
    assert (checkpoint.spec.task, checkpoint.spec.num_classes) == ("binary", 1)
    predictions = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "last.pt"), str(root / "images"),
                 "--out", str(predictions), "--runtime", "torch", "--precision", "fp32", "--save-probs"]) == 0
    mask = np.asarray(Image.open(predictions / "s0.png"))
    assert mask.shape == (40, 40) and set(np.unique(mask)) <= {0, 255}
    probs = np.load(predictions / "s0_probs.npy")
    assert probs.shape == (1, 40, 40) and np.array_equal(probs[0] > 0.5, mask == 255)


def test_multilabel_masks_train_a_model_that_writes_one_mask_per_class(tiny, tmp_path):
    root = tmp_path / "multilabel"
    (tmp_path / "multilabel").mkdir()
    (root / "classes.txt").write_text("square\nleft half\n")

    def masks(i, square):
        (root / "masks" / f"s{i}").mkdir()
        left = np.zeros((40, 40), bool)
        left[:, :20] = True  # overlaps the square: a pixel may hold both labels
        Image.fromarray(square.astype(np.uint8) * 255).save(root / "masks" / f"s{i}" / "square.png")
        Image.fromarray(left.astype(np.uint8) * 255).save(root / "masks" / f"s{i}" / "left half.png")

    _folder(root, masks)
    assert main(["data", "check", "--dataset", "folder", "--root", str(root), "--task", "multilabel"]) == 0
    assert main(["train", "--set", *tiny("data.name=folder", f"data.root={root}", "data.crop_size=33",
                                         "train.iterations=2", "model.task=multilabel")]) == 0
    predictions = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "last.pt"), str(root / "images"),
                 "--out", str(predictions), "--runtime", "torch", "--precision", "fp32"]) == 0
    written = sorted(path.name for path in (predictions / "s0").iterdir())
    assert written == ["left half.png", "square.png"]
    for name in written:
        mask = np.asarray(Image.open(predictions / "s0" / name))
        assert mask.shape == (40, 40) and set(np.unique(mask)) <= {0, 255}
