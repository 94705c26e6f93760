"""DenseCRF through the real commands: eval with eval.crf=true, predict --crf, crf-tune."""

import json
from dataclasses import fields

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab.cli import main
from deeplab.config import load_config
from deeplab.data import eval_transforms
from deeplab.data.base import SegmentationDataset
from deeplab.data.demo import DEMO_CLASSES, DEMO_PALETTE
from deeplab.engine.checkpoint import build_model, load_checkpoint, read_checkpoint, save_checkpoint
from deeplab.engine.crf_tune import held_out_indices
from deeplab.engine.data import build_dataset
from deeplab.engine.evaluate import crf_params, evaluate
from deeplab.inference import Predictor
from deeplab.metrics import confusion_matrix, segmentation_metrics
from deeplab.postprocess import CRFParams, dense_crf
from tests.engine.conftest import TINY


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained model's checkpoint, its classifier bias removed so that no class wins everywhere: its
    unsure, noisy maps give the CRF plenty to change (a 4-step training run predicts background throughout)."""
    path = tmp_path_factory.mktemp("crf") / "untrained.pt"
    config = load_config(None, TINY)
    torch.manual_seed(0)
    model = build_model(config, num_classes=len(DEMO_CLASSES))
    with torch.no_grad():
        model.head.classifier.bias.zero_()
        model.head.classifier.weight.mul_(20)
    save_checkpoint(path, model=model, optimizer=None, step=0, best_miou=0.0, config=config,
                    classes=list(DEMO_CLASSES), palette=DEMO_PALETTE)
    return path


def reference_cm(path, params):
    """The CRF evaluation written out by hand: softmax -> dense_crf on the raw image -> argmax."""
    model, ck = load_checkpoint(path)
    dataset = build_dataset(ck.config.data, "val", eval_transforms(mean=ck.spec.mean, std=ck.spec.std))
    predictor = Predictor(model, num_classes=len(ck.classes))
    cm = torch.zeros(len(ck.classes), len(ck.classes), dtype=torch.long)
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        probs = predictor.predict_logits(image.as_subclass(torch.Tensor)).softmax(dim=0)
        labels = probs.argmax(dim=0) if params is None else dense_crf(image, probs, params).argmax(dim=0)
        cm += confusion_matrix(labels, mask.long(), len(ck.classes))
    return cm


def test_eval_with_crf_refines_every_image_on_its_raw_colours(checkpoint, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint), "--json", str(tmp_path / "plain.json")]) == 0
    assert main(["eval", "--checkpoint", str(checkpoint), "--json", str(tmp_path / "crf.json"),
                 "--set", "eval.crf=true", "eval.crf_sigma_alpha=30", "eval.crf_workers=2"]) == 0
    assert "mIoU" in capsys.readouterr().out
    plain, refined = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("plain", "crf"))
    expected_plain = segmentation_metrics(reference_cm(checkpoint, None))
    expected_crf = segmentation_metrics(reference_cm(checkpoint, CRFParams(sigma_alpha=30)))
    assert plain["miou"] == pytest.approx(expected_plain["miou"], abs=1e-9)
    assert refined["miou"] == pytest.approx(expected_crf["miou"], abs=1e-9)
    assert refined["miou"] != pytest.approx(plain["miou"], abs=1e-6)  # the CRF did change the predictions


def test_evaluate_gives_the_same_in_and_out_of_worker_processes(checkpoint):
    model, ck = load_checkpoint(checkpoint)
    dataset = build_dataset(ck.config.data, "val", eval_transforms(mean=ck.spec.mean, std=ck.spec.std))
    params = CRFParams(iterations=3)
    results = [evaluate(model, dataset, num_classes=len(ck.classes), crf=params, crf_workers=workers,
                        batch_size=2, progress=False)["confusion_matrix"] for workers in (0, 2)]
    assert results[0] == results[1]


def test_eval_crf_keys_become_crf_settings(checkpoint):
    config = read_checkpoint(checkpoint).config
    assert crf_params(config.eval) is None
    config.eval.crf, config.eval.crf_w1, config.eval.crf_iterations = True, 6.0, 4
    assert crf_params(config.eval) == CRFParams(iterations=4, w1=6)
    # the one constructor reads the same keys the same way (what evaluate.crf_params is to call)
    keys = {f.name: getattr(config.eval, f"crf_{f.name}") for f in fields(CRFParams)}
    assert CRFParams.build(config.eval.crf, **keys) == crf_params(config.eval)
    config.eval.crf = False
    assert CRFParams.build(config.eval.crf, **keys) is None


def test_predict_with_crf_writes_the_refined_masks(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, 30:] = (200, 40, 40)
    pixels = np.clip(pixels + rng.integers(0, 40, pixels.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(images / "edge.png")
    argv = ["predict", "--checkpoint", str(checkpoint), str(images), "--out"]
    assert main([*argv, str(tmp_path / "plain")]) == 0
    assert main([*argv, str(tmp_path / "crf"), "--crf-params", "w1=8,sigma_alpha=20,iterations=5"]) == 0
    assert main([*argv, str(tmp_path / "default"), "--crf"]) == 0
    model, ck = load_checkpoint(checkpoint)
    image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    probs = Predictor(model, num_classes=len(ck.classes)).predict_logits(image).softmax(dim=0)
    for folder, params in [("crf", CRFParams(iterations=5, w1=8, sigma_alpha=20)), ("default", CRFParams())]:
        written = np.array(Image.open(tmp_path / folder / "edge.png"))
        assert np.array_equal(written, dense_crf(image, probs, params).argmax(dim=0).numpy()), folder
    assert np.array_equal(np.array(Image.open(tmp_path / "plain" / "edge.png")), probs.argmax(dim=0).numpy())

    capsys.readouterr()
    assert main([*argv, str(tmp_path / "bad"), "--crf-params", "w1=5,sigma=3"]) == 2
    assert "unknown CRF parameter(s) sigma" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "bad"), "--crf-params", "w1=five"]) == 2
    assert "'w1=five' must look like KEY=NUMBER" in capsys.readouterr().err


class Subset(SegmentationDataset):
    def __init__(self, dataset, indices):
        super().__init__(dataset.transforms)
        self.dataset, self.indices, self.classes = dataset, indices, dataset.classes

    def __len__(self):
        return len(self.indices)

    def load(self, index):
        return self.dataset.load(self.indices[index])


def test_held_out_subset_is_seeded_sorted_and_never_larger_than_the_split():
    assert held_out_indices(100, 10) == held_out_indices(100, 10) == sorted(held_out_indices(100, 10))
    assert len(set(held_out_indices(100, 10))) == 10 and held_out_indices(100, 10) != list(range(10))
    assert held_out_indices(4, 100) == [0, 1, 2, 3]


def test_crf_tune_prints_the_grid_and_the_best_setting(checkpoint, tmp_path, capsys):
    out = tmp_path / "tune.json"
    assert main(["crf-tune", "--checkpoint", str(checkpoint), "--images", "3", "--w1", "3", "6", "--sigma-alpha",
                 "20", "60", "--sigma-beta", "4", "--iterations", "5", "--workers", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CRF cross-validation on 3 held-out images of demo/val (5 mean-field iterations, w2=3" in text
    assert "| w1 | sigma_alpha | sigma_beta | mIoU % | vs no CRF |" in text and "(no CRF)" in text
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert len(rows) == 4 and {(r["w1"], r["sigma_alpha"]) for r in rows} == {(3, 20), (3, 60), (6, 20), (6, 60)}
    assert [r["miou"] for r in rows] == sorted((r["miou"] for r in rows), reverse=True)
    best = rows[0]
    settings = f"iterations=5 w1={best['w1']:g} sigma_alpha={best['sigma_alpha']:g} sigma_beta=4"
    assert f"best: {settings}: mIoU {100 * best['miou']:.2f}%" in text
    assert "--set eval.crf=true " + " ".join(f"eval.crf_{item}" for item in settings.split()) in text
    assert "--crf-params " + settings.replace(" ", ",") in text

    # Each row is what evaluation with that setting gives on the same held-out images.
    model, ck = load_checkpoint(checkpoint)
    dataset = build_dataset(ck.config.data, "val", eval_transforms(mean=ck.spec.mean, std=ck.spec.std))
    subset = Subset(dataset, held_out_indices(len(dataset), 3))
    plain = evaluate(model, subset, num_classes=len(ck.classes), progress=False)
    assert result["baseline_miou"] == pytest.approx(plain["miou"], abs=1e-9)
    for row in rows[:2]:
        params = CRFParams(**{k: v for k, v in row.items() if k != "miou"})
        expected = evaluate(model, subset, num_classes=len(ck.classes), crf=params, crf_workers=0, progress=False)
        assert row["miou"] == pytest.approx(expected["miou"], abs=2e-3)  # tune keeps probabilities as float16


def test_crf_tune_rejects_an_empty_subset(checkpoint, capsys):
    assert main(["crf-tune", "--checkpoint", str(checkpoint), "--images", "0"]) == 2
    assert "--images must be at least 1" in capsys.readouterr().err


def test_the_table_flags_a_best_setting_on_the_grids_edge():
    from deeplab.engine.crf_tune import CRFTuneResult, crf_grid, format_crf_table

    grid = crf_grid([3, 6], [30, 50, 70], [4])
    scores = {(6.0, 50.0): 0.7, (3.0, 50.0): 0.6}
    rows = sorted(((p, scores.get((p.w1, p.sigma_alpha), 0.5)) for p in grid), key=lambda row: -row[1])
    text = format_crf_table(CRFTuneResult("demo/val", 10, 0.55, rows), top=2)
    assert "| 6 | 50 | 4 | 70.00 | +15.00 |" in text and "(4 more settings not shown; --top 0 shows all)" in text
    assert "note: w1=6 is the largest value tried" in text
    assert "sigma_alpha=50 is the" not in text and "sigma_beta=4 is the" not in text  # middle / single value
