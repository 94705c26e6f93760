"""A 4-channel binary model through export (ONNX fp32 and int8, TorchScript) and every runtime available, and
fine-tuning from an export's source checkpoint."""

import importlib.util

import numpy as np
import pytest
import torch

from deeplab import create_model
from deeplab.config import Config
from deeplab.deploy.export import export_model
from deeplab.engine.checkpoint import save_checkpoint
from deeplab.inference import Predictor
from tests.fixtures import with_random_statistics

pytest.importorskip("onnxruntime")
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def four_band(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bands")
    torch.manual_seed(0)
    model = with_random_statistics(create_model("deeplabv3_mobilenetv2", task="binary", in_channels=4)).eval()
    path = folder / "ck.pt"
    save_checkpoint(path, model=model, optimizer=None, step=1, best_miou=0.0, config=Config(),
                    classes=["background", "field"], palette=[(0, 0, 0), (0, 200, 0)])
    export_model(path, folder / "m.onnx", progress=False)
    export_model(path, folder / "m.pt", format="torchscript", progress=False)
    return folder, model


@pytest.mark.parametrize(("file", "runtime"), [
    ("m.onnx", "onnxruntime"),
    pytest.param("m.onnx", "openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed")),
    ("m.pt", "torch"),
])
def test_every_runtime_runs_the_four_channel_model(four_band, file, runtime):
    folder, model = four_band
    predictor = Predictor.from_file(folder / file, runtime=runtime)
    assert predictor.runtime.runtime == runtime and predictor.task == "binary" and predictor.in_channels == 4
    x = torch.randn(2, 4, 65, 81, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(x)
    got = predictor.logits_for_batch(x)
    assert got.shape == (2, 1, 65, 81) and (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    image = (torch.rand(4, 33, 41, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    assert set(predictor.predict(image).unique().tolist()) <= {0, 1}


def test_int8_export_calibrates_on_band_files(four_band):
    from deeplab.deploy.precision import check_int8

    try:
        check_int8()
    except (RuntimeError, ValueError) as err:
        pytest.skip(f"int8 unavailable here: {err}")
    folder, model = four_band
    rng = np.random.default_rng(0)
    (folder / "calib").mkdir()
    for index in range(1):
        np.save(folder / "calib" / f"{index}.npy", rng.integers(0, 256, (4, 65, 65), dtype=np.uint8))
    report = export_model(folder / "ck.pt", folder / "m8.onnx", precision="int8", eval_images=0, progress=False,
                          calibration=str(folder / "calib" / "*.npy"), calibration_images=1)
    assert report.precision == "int8" and report.agreement > 0.5
    predictor = Predictor.from_file(folder / "m8.onnx", runtime="onnxruntime", precision="int8")
    assert predictor.logits_for_batch(torch.randn(1, 4, 65, 65)).shape == (1, 1, 65, 65)


def test_an_export_fine_tunes_from_its_source_checkpoint(four_band):
    folder, model = four_band
    tuned = create_model("deeplabv3_mobilenetv2", weights=str(folder / "m.onnx"), task="multiclass", num_classes=3)
    assert (tuned.spec.in_channels, tuned.spec.num_classes) == (4, 3)
    for key, value in model.state_dict().items():
        if not key.startswith("head.1."):
            assert torch.equal(value, tuned.state_dict()[key]), key
    assert "re-initialised the classifier (1 binary -> 3 multiclass): head.1.bias, head.1.weight" in \
        tuned.init_notes[0]
