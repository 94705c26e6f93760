"""int8 static quantization of ONNX models: which nodes stay fp32, the written model, the settings."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from deeplab.deploy import quantize
from deeplab.deploy.quantize import QuantizationSettings, fp32_nodes, quantize_onnx

onnx = pytest.importorskip("onnx", reason="the deploy extra (onnx, onnxruntime) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxruntime) is not installed")
numpy_helper = onnx.numpy_helper

CLASSES = 3


class _Tiny(nn.Module):
    """A first conv on the image, two inner convs, a classifier conv (CLASSES output channels)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(16, CLASSES, 1)

    def forward(self, x):
        return self.classifier(self.body(self.stem(x)))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "fp32.onnx"
    with warnings.catch_warnings():  # the TorchScript-based exporter (the one deeplab.export uses) is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_Tiny().eval(), (torch.randn(1, 3, 17, 17),), str(path), dynamo=False,
                          opset_version=17, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}})
    return path


def _conv_nodes(path):
    graph = onnx.load(str(path)).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    return {node.name: shapes[node.input[1]] for node in graph.node if node.op_type == "Conv"}


def _batches(count=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 17, 17, generator=generator) for _ in range(count)]


def test_fp32_nodes_keeps_the_first_conv_and_the_classifier(tiny_onnx):
    convs = _conv_nodes(tiny_onnx)
    assert len(convs) == 4
    first = next(name for name, shape in convs.items() if shape[1] == 3)
    classifier = next(name for name, shape in convs.items() if shape[0] == CLASSES)
    assert sorted(fp32_nodes(tiny_onnx, CLASSES, QuantizationSettings())) == sorted([first, classifier])
    assert fp32_nodes(tiny_onnx, CLASSES, QuantizationSettings(keep_first_conv=False)) == [classifier]
    assert fp32_nodes(tiny_onnx, CLASSES, QuantizationSettings(keep_classifier=False)) == [first]
    assert fp32_nodes(tiny_onnx, CLASSES, QuantizationSettings(keep_first_conv=False, keep_classifier=False)) == []


def test_quantize_onnx_writes_an_int8_model_close_to_fp32(tiny_onnx, tmp_path):
    out = tmp_path / "int8.onnx"
    report = quantize_onnx(tiny_onnx, out, _batches(), num_classes=CLASSES)
    assert report["calibration_images"] == 4 and report["method"] == "minmax" and len(report["fp32_nodes"]) == 2
    ops = [node.op_type for node in onnx.load(str(out)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    x = torch.randn(2, 3, 23, 19, generator=torch.Generator().manual_seed(5)).numpy()  # another size: dynamic
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
               for p in (tiny_onnx, out)]
    reference, int8 = outputs
    assert int8.shape == reference.shape == (2, CLASSES, 23, 19)
    difference = np.abs(int8 - reference).max() / np.abs(reference).max()
    assert 0 < difference < 0.05  # really quantized, yet close
    assert (int8.argmax(1) == reference.argmax(1)).mean() > 0.95


@pytest.mark.parametrize("vnni, expected", [(True, False), (False, True)])
def test_reduce_range_follows_the_vnni_flag(monkeypatch, vnni, expected):
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: vnni)
    assert QuantizationSettings().resolved_reduce_range() is expected  # 7-bit weights only without VNNI
    assert QuantizationSettings(reduce_range=False).resolved_reduce_range() is False  # an explicit choice wins
    assert QuantizationSettings(reduce_range=True).resolved_reduce_range() is True


def _largest_int8_weight(path) -> int:
    weights = [numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer]
    return max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.dtype == np.int8 and w.ndim == 4)


def test_reduce_range_reaches_the_quantizer(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: False)
    assert quantize_onnx(tiny_onnx, tmp_path / "a.onnx", _batches(1), num_classes=CLASSES)["reduce_range"] is True
    assert _largest_int8_weight(tmp_path / "a.onnx") <= 64  # 7-bit weights
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: True)
    assert quantize_onnx(tiny_onnx, tmp_path / "b.onnx", _batches(1), num_classes=CLASSES)["reduce_range"] is False
    assert _largest_int8_weight(tmp_path / "b.onnx") == 127  # the full 8 bits


def test_bad_settings_are_clear_errors(tiny_onnx, tmp_path):
    with pytest.raises(ValueError, match="unknown calibration method 'kl'; valid: minmax, percentile, entropy"):
        quantize_onnx(tiny_onnx, tmp_path / "int8.onnx", _batches(), num_classes=CLASSES,
                      settings=QuantizationSettings(method="kl"))
    with pytest.raises(ValueError, match="int8 calibration needs at least one image"):
        quantize_onnx(tiny_onnx, tmp_path / "int8.onnx", [], num_classes=CLASSES)
    assert not (tmp_path / "int8.onnx").exists()
