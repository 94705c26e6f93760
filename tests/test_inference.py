import copy
import csv
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from deeplab import create_model
from deeplab.config import Config
from deeplab.deploy.precision import cpu_has_bf16
from deeplab.engine.checkpoint import save_checkpoint
from deeplab.inference import Predictor, _tile_starts
from deeplab.modelfile import load_checkpoint
from deeplab.models import list_models
from deeplab.predict_files import expand_inputs, predict_paths
from tests.fixtures import with_random_statistics


def _pixel_linear(num_classes: int = 4, seed: int = 0) -> nn.Conv2d:
    """A 1x1 conv: translation- and flip-equivariant, no spatial context."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, num_classes, kernel_size=1)


class ColumnRamp(nn.Module):
    """Every class's logit equals the column index inside the input: not flip- or shift-equivariant."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        n, _, h, w = x.shape
        ramp = torch.arange(w, dtype=x.dtype).expand(n, self.num_classes, h, w)
        return ramp * torch.arange(1, self.num_classes + 1, dtype=x.dtype).view(1, -1, 1, 1)


class ChannelMix(nn.Module):
    """Flip-sensitive: mixes each pixel with its right-hand neighbour."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, kernel_size=(1, 2), padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 0), mode="replicate"))


def _image(h: int = 9, w: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_constructor_runs_an_eval_copy_and_sets_defaults():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Dropout2d(0.5))
    model.train()
    predictor = Predictor(model, num_classes=3)
    assert model.training and not predictor.model.training  # the caller's model is left as it was
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(predictor.logits_for_batch(x), predictor.logits_for_batch(x))  # no dropout
    assert predictor.classes == ["class_0", "class_1", "class_2"]
    assert predictor.palette[:2] == [(0, 0, 0), (128, 0, 0)]
    assert predictor.spec is None and predictor.output_stride is None and predictor.precision == "fp32"


def test_plain_eager_runs_the_given_model_in_eval_mode():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Dropout2d(0.5))
    predictor = Predictor(model, num_classes=3, fast=False)
    assert predictor.model is model and not model.training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": ["a"]}, "class names"),
        ({"palette": [(0, 0, 0)]}, "palette"),
        ({"scales": ()}, "scales"),
        ({"scales": (1.0, 0.0)}, "scales"),
        ({"window": 0}, "window"),
        ({"overlap": 1.0}, "overlap"),
    ],
)
def test_constructor_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Predictor(nn.Conv2d(3, 2, 1), num_classes=2, **kwargs)


def test_preprocess_normalises_with_mean_and_std():
    predictor = Predictor(nn.Identity(), num_classes=3, mean=(0.5, 0.0, 1.0), std=(0.5, 1.0, 0.25))
    image = torch.tensor([[[0, 255]], [[0, 255]], [[0, 255]]], dtype=torch.uint8)
    x = predictor.preprocess(image)
    assert x.shape == (1, 3, 1, 2)
    assert x[0, :, 0, 0].tolist() == [-1.0, 0.0, -4.0]
    assert x[0, :, 0, 1].tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(TypeError, match="uint8"):
        predictor.preprocess(image.float())


def test_preprocess_takes_float_images_on_the_0_1_scale():
    predictor = Predictor(nn.Identity(), num_classes=3)
    image = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    assert torch.allclose(predictor.preprocess(image.float() / 255), predictor.preprocess(image))  # 16-bit data
    with pytest.raises(TypeError, match=r"uint8 \(or float32 0..1\)"):
        predictor.preprocess(image.float() / 255 - 0.5)


def test_single_scale_equals_model_output():
    model = _pixel_linear()
    predictor = Predictor(model, num_classes=4)
    image = _image()
    with torch.no_grad():
        expected = model(predictor.preprocess(image))[0]
    torch.testing.assert_close(predictor.predict_logits(image), expected)
    assert torch.equal(predictor.predict(image), expected.argmax(dim=0))
    assert predictor.predict(image).dtype == torch.int64


def test_predict_picks_the_strongest_channel():
    predictor = Predictor(nn.Identity(), num_classes=3, mean=(0, 0, 0), std=(1, 1, 1))
    image = torch.zeros(3, 1, 3, dtype=torch.uint8)
    image[0, 0, 0] = image[1, 0, 1] = image[2, 0, 2] = 200
    assert predictor.predict(image).tolist() == [[0, 1, 2]]


def test_logits_for_batch_keeps_the_batch():
    model = _pixel_linear()
    x = torch.randn(2, 3, 5, 6)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(Predictor(model, num_classes=4).logits_for_batch(x), expected)


def test_flip_with_flip_equivariant_model_changes_nothing():
    model = _pixel_linear()
    image = _image()
    plain = Predictor(model, num_classes=4).predict_logits(image)
    flipped = Predictor(model, num_classes=4, flip=True).predict_logits(image)
    torch.testing.assert_close(flipped.softmax(0), plain.softmax(0))
    torch.testing.assert_close(flipped, plain.log_softmax(0))


def test_flip_averages_with_the_unflipped_back_result():
    model = ChannelMix()
    predictor = Predictor(model, num_classes=3, flip=True)
    x = torch.randn(1, 3, 4, 5)
    with torch.no_grad():
        straight = model(x).softmax(1)
        mirrored = model(x.flip(-1)).flip(-1).softmax(1)
    expected = ((straight + mirrored) / 2).log()
    assert not torch.allclose(straight, mirrored)  # the model really is flip-sensitive
    torch.testing.assert_close(predictor.logits_for_batch(x), expected)


def test_multi_scale_averages_probabilities_over_scales():
    model = _pixel_linear(seed=1)
    predictor = Predictor(model, num_classes=4, scales=(0.5, 1.0, 1.5))
    x = torch.randn(1, 3, 8, 10)
    probs = []
    with torch.no_grad():
        for size in [(4, 5), (8, 10), (12, 15)]:
            scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            logits = F.interpolate(model(scaled), size=(8, 10), mode="bilinear", align_corners=False)
            probs.append(logits.softmax(1))
    expected = (sum(probs) / 3).log()
    torch.testing.assert_close(predictor.logits_for_batch(x), expected)


def test_multi_scale_with_flip_runs_every_pass():
    model = ColumnRamp()
    predictor = Predictor(model, num_classes=2, scales=(0.5, 1.0), flip=True)
    out = predictor.logits_for_batch(torch.zeros(1, 3, 6, 8))
    assert out.shape == (1, 2, 6, 8)
    assert sorted(shape[-1] for shape in predictor.model.calls) == [4, 4, 8, 8]
    torch.testing.assert_close(out.softmax(1).sum(1), torch.ones(1, 6, 8))


def test_tile_starts_cover_the_extent_with_the_requested_overlap():
    assert _tile_starts(5, 8, 1 / 3) == [0]
    assert _tile_starts(10, 6, 1 / 3) == [0, 4]
    starts = _tile_starts(100, 16, 0.25)
    assert starts[0] == 0 and starts[-1] == 100 - 16
    assert all(b - a <= 12 for a, b in zip(starts, starts[1:], strict=False))


def test_sliding_window_averages_logits_of_overlapping_tiles():
    # width 10, window 6, overlap 1/3 -> stride 4, tiles at columns 0 and 4: columns 4 and 5 are
    # covered by both, with in-tile positions (4, 0) and (5, 1).
    model = ColumnRamp()
    predictor = Predictor(model, num_classes=2, window=6, overlap=1 / 3)
    out = predictor.logits_for_batch(torch.zeros(1, 3, 4, 10))
    expected_row = torch.tensor([0, 1, 2, 3, 2, 3, 2, 3, 4, 5], dtype=torch.float32)
    torch.testing.assert_close(out[0, 0], expected_row.expand(4, 10))
    torch.testing.assert_close(out[0, 1], 2 * expected_row.expand(4, 10))
    assert predictor.model.calls == [(1, 3, 4, 6), (1, 3, 4, 6)]  # the short side is not padded


@pytest.mark.parametrize("window, overlap", [(8, 1 / 3), ((5, 12), 0.5), (7, 0.0)])
def test_sliding_window_equals_full_forward_for_pixelwise_model(window, overlap):
    model = _pixel_linear()
    x = torch.randn(2, 3, 21, 26)
    with torch.no_grad():
        expected = model(x)
    out = Predictor(model, num_classes=4, window=window, overlap=overlap).logits_for_batch(x)
    torch.testing.assert_close(out, expected)


def test_image_within_the_window_gets_the_plain_forward_pass():
    model = nn.Conv2d(3, 2, kernel_size=3, padding=1)  # border-sensitive: padding would show
    x = torch.randn(1, 3, 5, 7)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(Predictor(model, num_classes=2, window=16).logits_for_batch(x), expected)
    torch.testing.assert_close(Predictor(model, num_classes=2, window=(5, 7)).logits_for_batch(x), expected)


def test_sliding_window_with_scales_and_flip_matches_pixelwise_model():
    model = _pixel_linear()
    x = torch.randn(1, 3, 12, 12)
    whole = Predictor(model, num_classes=4, scales=(0.75, 1.25), flip=True).logits_for_batch(x)
    tiled = Predictor(model, num_classes=4, scales=(0.75, 1.25), flip=True, window=5).logits_for_batch(x)
    torch.testing.assert_close(tiled, whole)


def test_wrong_model_output_is_a_clear_error():
    predictor = Predictor(nn.Conv2d(3, 5, 1), num_classes=4)
    with pytest.raises(ValueError, match="num_classes=4"):
        predictor.predict(_image())
    strided = Predictor(nn.Conv2d(3, 4, 1, stride=2), num_classes=4)
    with pytest.raises(ValueError, match="input's size"):
        strided.predict(_image())


# --- predict_paths -------------------------------------------------------------------------------

PURE = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255)}


def _write_stripes(path, order, mode="RGB"):
    """A 4 x 6 image whose three column pairs are pure red / green / blue in ``order``."""
    array = np.zeros((4, 6, 3), dtype=np.uint8)
    for index, cls in enumerate(order):
        array[:, 2 * index : 2 * index + 2] = PURE[cls]
    Image.fromarray(array).convert(mode).save(path)
    return np.repeat(np.array(order), 2)[None].repeat(4, axis=0)


def _channel_predictor() -> Predictor:
    # identity model on a zero-mean, unit-std input: the class is the strongest colour channel
    return Predictor(nn.Identity(), num_classes=3, classes=["red", "green", "blue"],
                     palette=[(1, 1, 1), (2, 2, 2), (3, 3, 3)], mean=(0, 0, 0), std=(1, 1, 1))


def test_predict_paths_mixed_inputs_with_a_corrupt_file(tmp_path):
    folder, other, globbed = tmp_path / "folder", tmp_path / "other", tmp_path / "globbed"
    for directory in (folder, other, globbed):
        directory.mkdir()
    expected = {
        "a": _write_stripes(folder / "a.png", [0, 1, 2]),
        "b": _write_stripes(folder / "b.bmp", [2, 2, 1]),
        "a_1": _write_stripes(other / "a.png", [1, 0, 0]),  # same stem as folder/a.png
        "c": _write_stripes(globbed / "c.png", [2, 0, 1]),
    }
    (folder / "notes.txt").write_text("not an image, not picked from a folder")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out_dir = tmp_path / "out"
    inputs = [folder, other / "a.png", str(globbed / "*.png"), folder / "a.png", tmp_path / "missing.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # skipped inputs are reported, never warned about (the CLI prints them once)
        report = predict_paths(_channel_predictor(), inputs, out_dir, area_table=True, progress=False)

    assert [path.name for path in report.written] == ["a.png", "b.png", "a_1.png", "c.png"]
    failed = {path.name: reason for path, reason in report.failed}
    assert set(failed) == {"corrupt.png", "missing.jpg"}
    assert "no such file" in failed["missing.jpg"]
    for stem, mask in expected.items():
        with Image.open(out_dir / f"{stem}.png") as index_png:
            assert index_png.mode == "P"
            assert np.array_equal(np.asarray(index_png), mask)
        colour = np.asarray(Image.open(out_dir / f"{stem}_color.png"))
        assert np.array_equal(colour, (mask + 1)[..., None].repeat(3, axis=2))
        assert Image.open(out_dir / f"{stem}_overlay.png").size == (6, 4)
    assert report.areas_csv == out_dir / "areas.csv"
    with open(report.areas_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "mask", "red", "green", "blue"]
    assert rows[2][1:] == ["b.png", "0.000000", "0.333333", "0.666667"]
    assert len(rows) == 5


def test_predict_paths_reads_any_mode_and_reports_empty_inputs(tmp_path):
    _write_stripes(tmp_path / "gray.png", [0, 1, 2], mode="L")
    (tmp_path / "empty").mkdir()
    report = predict_paths(_channel_predictor(), [tmp_path / "gray.png", tmp_path / "empty"],
                           tmp_path / "out", progress=False)
    assert [path.name for path in report.written] == ["gray.png"]
    assert report.failed == [(tmp_path / "empty", "no image files found")]
    assert report.areas_csv is None and not (tmp_path / "out" / "areas.csv").exists()


def test_expand_inputs_keeps_order_and_drops_duplicates(tmp_path):
    for name in ("b.jpg", "a.PNG", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    found, missing = expand_inputs([tmp_path / "c.txt", tmp_path, str(tmp_path / "*.jpg")])
    assert [path.name for path in found] == ["c.txt", "a.PNG", "b.jpg"]
    assert missing == []


def test_output_stems_never_collide_with_suffixed_names(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _write_stripes(folder / "x.png", [0, 1, 2])
    _write_stripes(folder / "x_color.png", [0, 1, 2])
    report = predict_paths(_channel_predictor(), [folder / "x.png", folder / "x_color.png"],
                           tmp_path / "out", progress=False)
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert len(names) == 6
    assert [path.name for path in report.written] == ["x.png", "x_color_1.png"]


# --- the fast path, precisions and model files ---------------------------------------------------


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())


@pytest.mark.parametrize("name", list_models())
def test_fast_path_folds_every_batchnorm_and_equals_plain_eager(name):
    model = with_random_statistics(create_model(name, num_classes=5)).train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    fast = Predictor(model, num_classes=5)
    plain = Predictor(copy.deepcopy(model), num_classes=5, fast=False)
    assert _batchnorms(fast.model) == 0
    x = torch.randn(2, 3, 65, 81, generator=torch.Generator().manual_seed(1))
    difference = (fast.logits_for_batch(x) - plain.logits_for_batch(x)).abs().max().item()
    assert difference < 1e-3
    # the caller's model is untouched: still training, same weights and statistics, BatchNorms in place
    assert model.training and _batchnorms(model) == _batchnorms(plain.model)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_each_predictor_sees_the_current_weights_of_a_model_in_training():
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3).train()
    x = torch.randn(1, 3, 65, 65)
    first = Predictor(model, num_classes=3).logits_for_batch(x)
    with torch.no_grad():
        model.head.classifier.bias.add_(torch.tensor([5.0, 0.0, -5.0]))
    second = Predictor(model, num_classes=3).logits_for_batch(x)
    torch.testing.assert_close(second - first, torch.tensor([5.0, 0.0, -5.0]).view(1, 3, 1, 1).expand_as(first),
                               atol=1e-4, rtol=0)


class _ConvReadTwice(nn.Module):
    """The conv output feeds its BatchNorm and, through a plain addition, the output: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _ConvIntoTwoNorms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.first, self.second = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.first(y) - self.second(y)


@pytest.mark.parametrize("model_class, warned", [(_ConvReadTwice, True), (_ConvIntoTwoNorms, False)])
def test_fast_path_never_folds_a_batchnorm_whose_conv_output_is_read_elsewhere(model_class, warned):
    # Two BNs reading one conv are seen by the pairing itself; a plain function reading the conv output
    # is not, and is caught by comparing the folded model's output with the original's.
    model = with_random_statistics(model_class().eval())
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        expected = model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor(model, num_classes=4)
    assert any("unfolded" in str(w.message) for w in caught) == warned
    assert _batchnorms(predictor.model) == _batchnorms(model)
    torch.testing.assert_close(predictor.logits_for_batch(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision, message", [
    ("fp16", "fp16 needs a CUDA device"),
    ("int8", "deeplab export --precision int8"),
    ("fp64", "valid choices: fp32, bf16, fp16, int8"),
])
def test_unsupported_precisions_are_clear_errors(precision, message):
    with pytest.raises(ValueError, match=message):
        Predictor(_pixel_linear(), num_classes=4, precision=precision)


NO_BF16_REASON = ("this CPU lacks AVX512-BF16 and AMX-BF16 (no native bf16), so bf16 inference cannot run here; "
                  "test_bf16_is_refused_where_it_would_be_emulated checks the refusal branch instead")


@pytest.mark.skipif(not cpu_has_bf16(), reason=NO_BF16_REASON)
def test_bf16_runs_where_the_cpu_has_it():
    torch.manual_seed(0)
    model = with_random_statistics(create_model("deeplabv3plus_mobilenetv2", num_classes=3)).eval()
    x = torch.randn(2, 3, 65, 65, generator=torch.Generator().manual_seed(0))
    bf16 = Predictor(model, num_classes=3, precision="bf16")
    assert bf16.precision == "bf16"
    logits, reference = bf16.logits_for_batch(x), Predictor(model, num_classes=3).logits_for_batch(x)
    assert logits.dtype == torch.float32
    relative = ((logits - reference).abs().max() / reference.abs().max()).item()
    assert 1e-5 < relative < 0.05  # really computed in bf16 (fp32 paths differ by ~1e-7), yet close
    assert (logits.argmax(1) == reference.argmax(1)).float().mean() >= 0.99


def test_bf16_is_refused_where_it_would_be_emulated(monkeypatch):
    from deeplab.deploy import precision as runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}))
    with pytest.raises(ValueError, match="bf16 needs a CPU with AVX512-BF16 or AMX, which this one lacks"):
        Predictor(_pixel_linear(), num_classes=4, precision="bf16")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert Predictor(_pixel_linear(), num_classes=4, precision="bf16").precision == "bf16"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "ck.pt"
    torch.manual_seed(0)
    model = with_random_statistics(create_model("deeplabv3plus_mobilenetv2", num_classes=3))
    save_checkpoint(path, model=model, optimizer=None, step=7, best_miou=0.0, config=Config(),
                    classes=["sky", "sea", "boat"], palette=[(0, 0, 255), (0, 128, 255), (255, 0, 0)])
    return path


def test_from_file_with_a_training_checkpoint_matches_the_checkpoints_model(tiny_checkpoint):
    predictor = Predictor.from_file(tiny_checkpoint, output_stride=8, flip=True)
    model, _ = load_checkpoint(tiny_checkpoint, output_stride=8)
    assert predictor.classes == ["sky", "sea", "boat"] and predictor.palette[2] == (255, 0, 0)
    assert predictor.num_classes == 3 and predictor.output_stride == 8 and predictor.spec == model.spec
    assert predictor.flip
    image = _image(70, 90)
    expected = Predictor(model, num_classes=3, flip=True, fast=False).predict_logits(image)
    assert (predictor.predict_logits(image) - expected).abs().max() < 1e-3
    assert predictor.predict(image).shape == (70, 90) and predictor.predict(image).dtype == torch.int64


@pytest.mark.parametrize("name, content, message", [
    ("notes.txt", b"hello", "notes.txt is not a checkpoint: it is a text file"),
    ("model.onnx", b"\x08\x07 certainly not protobuf \xff\xff", "not an ONNX model"),
    ("weights.pt", None, "not a deeplab training checkpoint"),
])
def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        torch.save({"conv.weight": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        Predictor.from_file(path)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        Predictor.from_file(tmp_path / "missing.onnx")


def test_an_onnx_file_from_elsewhere_is_not_taken_for_an_export(tmp_path):
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "foreign.onnx"
    torch.onnx.export(nn.Conv2d(3, 2, 1), (torch.zeros(1, 3, 4, 4),), str(path), dynamo=False)
    assert onnx.load(str(path)).graph.node
    with pytest.raises(ValueError, match="not a deeplab export"):
        Predictor.from_file(path)


def test_onnx_without_the_deploy_extra_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07")
    monkeypatch.setitem(sys.modules, "onnx", None)  # what an environment without the extra looks like
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"deeplab\[deploy\]"):
        Predictor.from_file(path)


class ImagePooling(nn.Module):
    """Logits = a 1x1 conv plus the input's spatial mean: padding the input changes every logit."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 4, kernel_size=1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return self.conv(x) + x.mean(dim=(1, 2, 3), keepdim=True)


def test_pad_to_runs_the_padded_input_and_crops_the_scores_back():
    model = ImagePooling()
    x = torch.randn(1, 3, 5, 7)
    with torch.no_grad():
        expected = model(F.pad(x, (0, 9 - 7, 0, 8 - 5)))[..., :5, :7]  # zeros = the mean pixel once normalised
    padded = Predictor(model, num_classes=4, pad_to=(8, 9), fast=False).logits_for_batch(x)
    torch.testing.assert_close(padded, expected)
    plain = Predictor(model, num_classes=4, fast=False).logits_for_batch(x)
    assert not torch.allclose(padded, plain)  # the padding really reaches the network
    assert model.calls[-2:] == [(1, 3, 8, 9), (1, 3, 5, 7)]
    # A side already beyond the target is left alone; an int pads to a square.
    Predictor(model, num_classes=4, pad_to=6, fast=False).logits_for_batch(x)
    assert model.calls[-1] == (1, 3, 6, 7)


def test_pad_to_comes_before_the_scales_and_flips():
    model = ImagePooling()
    x = torch.randn(1, 3, 5, 7)
    predictor = Predictor(model, num_classes=4, pad_to=(9, 9), scales=(0.5, 1.0), flip=True, fast=False)
    out = predictor.logits_for_batch(x)
    assert out.shape == (1, 4, 5, 7)
    assert sorted(model.calls[-4:]) == [(1, 3, 4, 4), (1, 3, 4, 4), (1, 3, 9, 9), (1, 3, 9, 9)]


@pytest.mark.parametrize("pad_to", [0, (4,), (3, -1), "513"])
def test_bad_pad_to_is_refused(pad_to):
    with pytest.raises(ValueError, match=r"pad_to must be a positive int or \(h, w\)"):
        Predictor(_pixel_linear(), num_classes=4, pad_to=pad_to)


def test_tf_numerics_scale_like_the_reference():
    """A spec with align_corners scales as the TF reference: side int((n - 1) * s + 1), corners aligned."""
    from deeplab.models.spec import ModelSpec

    model = _pixel_linear(seed=2)
    x = torch.randn(1, 3, 9, 12)
    tf_spec = ModelSpec("tiny", 4, 16, {"align_corners": True})
    predictor = Predictor(model, num_classes=4, scales=(0.5, 0.75), spec=tf_spec, fast=False)
    probs = []
    with torch.no_grad():
        for size in [(5, 6), (7, 9)]:  # int(8 * 0.5 + 1), int(11 * 0.5 + 1); int(8 * 0.75 + 1), int(11 * 0.75 + 1)
            scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            probs.append(F.interpolate(model(scaled), size=(9, 12), mode="bilinear", align_corners=True).softmax(1))
    torch.testing.assert_close(predictor.logits_for_batch(x), (sum(probs) / 2).log())
    native = Predictor(model, num_classes=4, scales=(0.5, 0.75), fast=False).logits_for_batch(x)
    assert not torch.allclose(native, predictor.logits_for_batch(x))


class StridedTiny(nn.Module):
    """A TF-style network in miniature: logits at stride 4 ('SAME': ceil(n / 4)), resized to the input with
    align_corners=True by ``forward``, given before that resize by ``coarse_logits``."""

    logits_stride = 4

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 4, kernel_size=3, stride=4, padding=1)

    def coarse_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.coarse_logits(x), size=x.shape[-2:], mode="bilinear", align_corners=True)


def test_tf_numerics_follow_the_reference_multi_scale_steps():
    """predict_labels_multi_scale's steps, sizes written out: scale 0.5 -> input 9 x 11 -> logits 3 x 3 -> the
    scale-1 logit size 5 x 6 -> the image; scale 1.25 -> 21 x 26 -> 6 x 7 (already the merge size) -> the image;
    the flipped passes flipped back at the logit resolution; softmax probabilities averaged."""
    from deeplab.models.spec import ModelSpec

    model = StridedTiny().eval()
    x = torch.randn(1, 3, 17, 21)

    def resize(t, size):
        return F.interpolate(t, size=size, mode="bilinear", align_corners=True)

    probs = []
    with torch.no_grad():
        for scaled, merged in [((9, 11), (5, 6)), ((21, 26), (6, 7))]:
            for flipped in (False, True):
                inp = resize(x, scaled)
                coarse = model.coarse_logits(inp.flip(-1) if flipped else inp)
                coarse = resize(coarse, merged)
                probs.append(resize(coarse.flip(-1) if flipped else coarse, (17, 21)).softmax(1))
    spec = ModelSpec("tiny", 4, 16, {"align_corners": True})
    predictor = Predictor(model, num_classes=4, scales=(0.5, 1.25), flip=True, spec=spec, fast=False)
    assert predictor.uses_reference_steps and predictor.protocol()["numerics"] == "tf-reference"
    torch.testing.assert_close(predictor.logits_for_batch(x), (sum(probs) / 4).log())
    # model(x) still gives input-size logits; each pass resized from the input size (the old way) differs
    assert model(x).shape == (1, 4, 17, 21)
    windowed = Predictor(model, num_classes=4, scales=(0.5, 1.25), flip=True, spec=spec, fast=False, window=64)
    assert not windowed.uses_reference_steps and windowed.protocol()["numerics"] == "tf-align-corners"
    assert (windowed.logits_for_batch(x) - predictor.logits_for_batch(x)).abs().max() > 1e-3
