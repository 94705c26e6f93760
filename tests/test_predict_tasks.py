"""Binary, multilabel and N-channel models through the Predictor and `predict`: thresholds, 0/255 masks, the
per-class mask folders, --save-probs."""

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab import create_model
from deeplab.imageio import read_mask
from deeplab.inference import Predictor
from deeplab.predict_files import predict_paths
from tests.fixtures import with_random_statistics


def _model(**options):
    torch.manual_seed(0)
    return with_random_statistics(create_model("deeplabv3_mobilenetv2", dropout=0.0, **options)).eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (33, 41, 3), dtype=np.uint8)).save(folder / f"im{index}.png")
    np.save(folder / "bands.npy", rng.integers(0, 65536, (4, 33, 41), dtype=np.uint16))
    return folder


def _logits(predictor: Predictor, image: torch.Tensor) -> torch.Tensor:
    return predictor.logits_for_batch(predictor.preprocess(image))[0]


def test_binary_predict_writes_0_255_masks_at_the_threshold_and_probabilities(images, tmp_path):
    model = _model(task="binary")
    image = torch.from_numpy(np.array(Image.open(images / "im0.png"))).permute(2, 0, 1)
    probs = _logits(Predictor(model, num_classes=1, fast=False), image).sigmoid()
    threshold = float(probs.median())  # a random model: a threshold that splits its pixels
    predictor = Predictor(model, num_classes=1, classes=["road"], palette=[(9, 9, 9)], fast=False, threshold=threshold)
    assert predictor.classes == ["background", "road"] and predictor.task == "binary"
    assert predictor.palette == [(0, 0, 0), (9, 9, 9)]  # a binary dataset's one class is the foreground
    report = predict_paths(predictor, [images / "im0.png"], tmp_path, workers=0, progress=False, save_probs=True,
                           area_table=True)
    assert report.written == [tmp_path / "im0.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["areas.csv", "im0.png", "im0_overlay.png", "im0_probs.npy"]
    mask = read_mask(tmp_path / "im0.png")
    assert set(np.unique(mask)) == {0, 255}
    assert np.array_equal(mask == 255, (probs[0] > threshold).numpy())
    saved = np.load(tmp_path / "im0_probs.npy")
    assert saved.dtype == np.float16 and saved.shape == (1, 33, 41)
    assert np.allclose(saved, probs.numpy(), atol=1e-3)
    row = (tmp_path / "areas.csv").read_text().splitlines()
    assert row[0] == "image,mask,background,road" and row[1].endswith(f"{(mask == 255).mean():.6f}")


def test_binary_multi_scale_averages_sigmoids(images):
    predictor = Predictor(_model(task="binary"), num_classes=1, fast=False, scales=(0.75, 1.0), flip=True)
    image = torch.from_numpy(np.array(Image.open(images / "im1.png"))).permute(2, 0, 1)
    batch = predictor.preprocess(image)
    passes = [predictor._pass(batch, s, f).sigmoid() for s in (0.75, 1.0) for f in (False, True)]
    expected = torch.stack(passes).mean(0)[0]
    assert torch.allclose(_logits(predictor, image).sigmoid(), expected, atol=1e-5)
    assert torch.equal(predictor.predict(image), (expected[0] > 0.5).long())


def test_multilabel_predict_writes_one_mask_per_class_in_the_dataset_layout(images, tmp_path):
    classes = ["sky", "tree", "car"]
    predictor = Predictor(_model(task="multilabel", num_classes=3), num_classes=3, classes=classes, fast=False)
    report = predict_paths(predictor, [images / "im0.png", images / "im1.png"], tmp_path, workers=0, progress=False,
                           save_probs=True)
    assert report.written == [tmp_path / "im0", tmp_path / "im1"]
    image = torch.from_numpy(np.array(Image.open(images / "im1.png"))).permute(2, 0, 1)
    probs = _logits(predictor, image).sigmoid()
    for index, name in enumerate(classes):
        mask = read_mask(tmp_path / "im1" / f"{name}.png")
        assert np.array_equal(mask == 255, (probs[index] > 0.5).numpy()) and set(np.unique(mask)) <= {0, 255}
    assert np.load(tmp_path / "im1_probs.npy").shape == (3, 33, 41)
    assert (tmp_path / "im1_overlay.png").is_file()
    again = predict_paths(predictor, [images / "im0.png", images / "im1.png"], tmp_path, workers=0, progress=False,
                          save_probs=True, resume=True)
    assert again.written == [] and again.resumed == [tmp_path / "im0", tmp_path / "im1"]


def test_four_band_binary_model_predicts_from_npy(images, tmp_path):
    model = _model(task="binary", in_channels=4)
    predictor = Predictor(model, num_classes=1, fast=False)
    report = predict_paths(predictor, [images / "bands.npy"], tmp_path, workers=0, progress=False, save_probs=True)
    assert report.failed == [] and report.written == [tmp_path / "bands.png"]
    bands = torch.from_numpy(np.load(images / "bands.npy").astype(np.float32) / 65535)  # 16 bits: 0..1
    probs = np.load(tmp_path / "bands_probs.npy")
    assert np.allclose(probs, _logits(predictor, bands).sigmoid().numpy(), atol=1e-3)
    with pytest.raises(TypeError, match=r"expected a uint8 \(or float32 0..1\) 4 x H x W image"):
        predictor.preprocess(bands[:3])


def test_predict_command_takes_threshold_and_save_probs(images, tmp_path, capsys):
    from deeplab.cli import main
    from deeplab.config import Config
    from deeplab.engine.checkpoint import save_checkpoint

    model = _model(task="binary")
    save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=None, step=1, best_miou=0.0, config=Config(),
                    classes=["background", "leaf"], palette=[(0, 0, 0), (0, 255, 0)])
    image = torch.from_numpy(np.array(Image.open(images / "im1.png"))).permute(2, 0, 1)
    probs = _logits(Predictor(model, num_classes=1, fast=False), image).sigmoid()[0]
    threshold = float(probs.quantile(0.25))
    assert main(["predict", "--checkpoint", str(tmp_path / "ck.pt"), str(images / "im1.png"), "--out",
                 str(tmp_path / "out"), "--threshold", f"{threshold}", "--save-probs", "--runtime", "torch"]) == 0
    mask = read_mask(tmp_path / "out" / "im1.png")
    assert (mask == 255).mean() == pytest.approx((probs > threshold).float().mean().item(), abs=0.01)
    assert np.load(tmp_path / "out" / "im1_probs.npy").shape == (1, 33, 41)
    assert not (tmp_path / "out" / "im1_color.png").exists() and (tmp_path / "out" / "im1_overlay.png").is_file()


def test_predict_defaults_to_the_runs_eval_threshold(images, tmp_path, capsys):
    from deeplab.cli import main
    from deeplab.config import Config, apply_overrides
    from deeplab.engine.checkpoint import save_checkpoint

    model = _model(task="binary")
    image = torch.from_numpy(np.array(Image.open(images / "im1.png"))).permute(2, 0, 1)
    probs = _logits(Predictor(model, num_classes=1, fast=False), image).sigmoid()[0]
    tuned = round(float(probs.quantile(0.75)), 4)  # what the run was evaluated at, far from the 0.5 default
    config = apply_overrides(Config(), [f"eval.threshold={tuned}"])
    save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=None, step=1, best_miou=0.0, config=config,
                    classes=["background", "leaf"], palette=[(0, 0, 0), (0, 255, 0)])
    for asked, expected in ((None, tuned), (0.5, 0.5)):
        out = tmp_path / f"out{asked}"
        args = [] if asked is None else ["--threshold", str(asked)]
        assert main(["predict", "--checkpoint", str(tmp_path / "ck.pt"), str(images / "im1.png"), "--out", str(out),
                     "--runtime", "torch", "--precision", "fp32", *args]) == 0
        mask = read_mask(out / "im1.png")
        assert (mask == 255).mean() == pytest.approx((probs > expected).float().mean().item(), abs=0.01)
        assert (f"threshold {tuned:g} (the run's eval.threshold)" in capsys.readouterr().err) == (asked is None)
    assert Predictor.from_file(tmp_path / "ck.pt", runtime="torch").threshold == tuned
    assert Predictor.from_file(tmp_path / "ck.pt", runtime="torch", threshold=0.5).threshold == 0.5


def test_float_images_on_the_unit_scale_are_normalised_like_uint8():
    predictor = Predictor(_model(in_channels=2, num_classes=3), num_classes=3, fast=False)
    image = torch.randint(0, 256, (2, 9, 11), dtype=torch.uint8)
    assert torch.allclose(predictor.preprocess(image), predictor.preprocess(image.float() / 255), atol=1e-6)
    with pytest.raises(TypeError, match=r"expected a uint8 \(or float32 0..1\) 2 x H x W image"):
        predictor.preprocess(image.float())
