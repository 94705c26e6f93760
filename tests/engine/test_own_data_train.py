"""Training on your own formats through the real CLI: colour masks, data.label_map and 16-bit grey images."""

import numpy as np
from PIL import Image

from deeplab.cli import main
from deeplab.modelfile import read_checkpoint


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
                                         "train.iterations=2", "data.label_map={2: 255}")]) == 0
    checkpoint = read_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint.classes == ["sky", "ground", "thing"] and checkpoint.step == 2
    assert checkpoint.config.data.label_map == {2: 255}
