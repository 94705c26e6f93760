"""Checkpoints rebuild the model they were trained with: spec inside, legacy files, fine-tuned torchvision models."""

import os
import stat

import pytest
import torch
import torchvision
from PIL import Image

from deeplab import create_model
from deeplab.cli import main
from deeplab.config import Config, load_config
from deeplab.engine.checkpoint import save_checkpoint
from deeplab.modelfile import load_checkpoint, read_checkpoint

CLASSES, PALETTE = ["a", "b", "c"], [(0, 0, 0), (1, 1, 1), (2, 2, 2)]


def _save(path, model, **extra):
    save_checkpoint(path, model=model, optimizer=None, step=5, best_miou=0.25, config=Config(), classes=CLASSES,
                    palette=PALETTE, **extra)


def test_checkpoint_holds_the_spec_and_rebuilds_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = create_model("deeplabv3_resnet50", num_classes=3, multi_grid=[1, 2, 1], head_conv=True, dropout=0.3).eval()
    _save(tmp_path / "ck.pt", model)
    loaded, checkpoint = load_checkpoint(tmp_path / "ck.pt")
    assert checkpoint.spec == model.spec == loaded.spec and checkpoint.raw["format"] == "deeplab-checkpoint-2"
    assert checkpoint.raw["model_spec"]["options"]["multi_grid"] == [1, 2, 1]  # stored explicitly, not as "default"
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    dense, _ = load_checkpoint(tmp_path / "ck.pt", output_stride=8)
    assert dense.spec.output_stride == 8 and dense.spec.options["atrous_rates"] == (12, 24, 36)


def test_checkpoint_gets_the_permissions_of_a_normal_file(tmp_path):
    _save(tmp_path / "ck.pt", create_model("deeplabv3_mobilenetv2", num_classes=3))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "ck.pt").stat().st_mode) == 0o666 & ~umask


def test_a_model_without_spec_cannot_be_saved(tmp_path):
    with pytest.raises(ValueError, match="has no .spec"):
        _save(tmp_path / "ck.pt", torch.nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, cut):
    _save(tmp_path / "ck.pt", create_model("deeplabv3_mobilenetv2", num_classes=3))
    data = (tmp_path / "ck.pt").read_bytes()
    (tmp_path / "ck.pt").write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ValueError, match="ck.pt is not a readable checkpoint"):
        load_checkpoint(tmp_path / "ck.pt")


def _format1(path, model, name, **model_section):
    """A checkpoint as deeplab 0.1.0 wrote it: no spec, the config's model section names the builder."""
    config = Config().to_dict()
    config["model"] = {"name": name, "output_stride": model.spec.output_stride, "atrous_rates": None,
                       "pretrained_backbone": False, "aux_loss": False, "weights": None, **model_section}
    torch.save({"model": model.state_dict(), "optimizer": None, "step": 3, "best_miou": 0.1,
                "rng": {"torch": torch.get_rng_state()}, "config": config, "classes": CLASSES,
                "palette": [list(c) for c in PALETTE], "format": "deeplab-checkpoint-1"}, path)


@pytest.mark.parametrize("name", ["deeplabv3plus_mobilenetv2", "deeplabv3_resnet50", "deeplabv1_vgg16"])
def test_format1_checkpoints_keep_loading(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    _format1(tmp_path / "old.pt", model, name)
    loaded, checkpoint = load_checkpoint(tmp_path / "old.pt")
    assert checkpoint.step == 3 and checkpoint.classes == CLASSES
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_format1_checkpoint_of_a_model_fine_tuned_from_torchvision_loads(tmp_path):
    torch.manual_seed(0)
    theirs = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3)
    model = create_model("deeplabv3_resnet50", num_classes=3, weights=theirs.state_dict()).eval()
    _format1(tmp_path / "old.pt", model, "deeplabv3_resnet50")
    loaded, _ = load_checkpoint(tmp_path / "old.pt")
    assert loaded.spec.options["head_conv"] is True and loaded.spec.options["multi_grid"] is None
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_fine_tuned_from_torchvision_weights_evaluates_and_predicts(tiny, tmp_path, capsys):
    """The defect the spec fixes: such a checkpoint used to fail to load (missing head.1.* keys)."""
    torch.manual_seed(0)
    theirs = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=7)
    torch.save(theirs.state_dict(), tmp_path / "torchvision.pth")
    run = tmp_path / "run"
    weights = tmp_path / "torchvision.pth"
    assert main(["train", "--set", *tiny("model.name=deeplabv3_resnet50", f"model.weights={weights}",
                                         "train.iterations=2", "data.num_images=2")]) == 0
    checkpoint = read_checkpoint(run / "last.pt")
    assert checkpoint.spec.options["head_conv"] is True and checkpoint.spec.output_stride == 8
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--set", "eval.output_stride=16"]) == 0
    assert "mIoU" in capsys.readouterr().out
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (50, 40)).save(images / "x.png")
    assert main(["predict", "--checkpoint", str(run / "last.pt"), str(images), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "x.png").is_file()


def test_normalisation_comes_from_the_spec_in_training_evaluation_and_prediction(tiny, tmp_path):
    from deeplab.data import DemoDataset, eval_transforms
    from deeplab.data.transforms import normalize_image
    from deeplab.engine.evaluate import evaluate, evaluate_on_config
    from deeplab.inference import Predictor
    from deeplab.options import InferenceOptions

    mean, std = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]
    assert main(["train", "--set", *tiny(f"model.mean={mean}", f"model.std={std}", "train.iterations=2")]) == 0
    path = tmp_path / "run" / "last.pt"
    model, checkpoint = load_checkpoint(path)
    assert checkpoint.spec.mean == tuple(mean) and checkpoint.spec.std == tuple(std)
    image, _ = DemoDataset(split="val", image_size=65, num_images=4).load(0)
    with torch.no_grad():
        expected = model(normalize_image(image, mean, std)[None])[0].argmax(0)
    assert torch.equal(Predictor(model, num_classes=7).predict(image), expected)
    config = load_config(None, [*tiny(), "eval.output_stride=null"])
    predictor = Predictor.from_file(path, options=InferenceOptions.from_eval_config(config.eval))
    metrics, _ = evaluate_on_config(predictor, config, str(path), progress=False)
    dataset = DemoDataset(split="val", image_size=65, num_images=4, transforms=eval_transforms(mean=mean, std=std))
    assert metrics["confusion_matrix"] == evaluate(model, dataset, num_classes=7, progress=False)["confusion_matrix"]


@pytest.mark.parametrize(("content", "reason"), [
    (b"hello, these are my notes\n", "it is a text file, not a file written by torch.save"),
    (b"", "it is empty"),
    (bytes(range(200, 256)) * 4, "it is neither a zip archive nor a pickle, the two formats torch.save writes"),
])
def test_a_file_that_is_no_checkpoint_says_so_plainly(tmp_path, capsys, content, reason):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    expected = f"{path} is not a checkpoint: {reason} (expected a .pt file written by deeplab train)"
    with pytest.raises(ValueError) as info:
        read_checkpoint(path)
    assert str(info.value) == expected
    assert main(["eval", "--checkpoint", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"
    with pytest.raises(ValueError, match="notes.pt is not a weights file: " + reason):
        create_model("deeplabv3_mobilenetv2", num_classes=3, weights=path)
