"""deeplab.modelfile: every model source read once, identified, and opened into a runner with its card."""

import json

import pytest
import torch

import deeplab.modelfile as modelfile
from deeplab import create_model
from deeplab.config import Config
from deeplab.engine.checkpoint import save_checkpoint
from deeplab.inference import Predictor
from deeplab.modelfile import ModelCard, open_model, read_model
from deeplab.models import build_from_spec
from deeplab.models.tf_import import tf_spec, tf_variables
from tests.fixtures import with_random_statistics
from tests.tfbundle import write_bundle

CLASSES = ["sky", "sea", "boat"]
PALETTE = [(0, 0, 255), (0, 128, 255), (255, 0, 0)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = with_random_statistics(create_model("deeplabv3plus_mobilenetv2", num_classes=3)).eval()
    path = tmp_path_factory.mktemp("modelfile") / "ck.pt"
    save_checkpoint(path, model=model, optimizer=None, step=11, best_miou=0.5, config=Config(), classes=CLASSES,
                    palette=PALETTE)
    return path, model


def test_a_checkpoint_is_read_once_and_opens_at_any_output_stride(checkpoint, monkeypatch):
    path, model = checkpoint
    reads = []
    real = modelfile.read_torch_file
    monkeypatch.setattr(modelfile, "read_torch_file", lambda *a, **k: reads.append(a) or real(*a, **k))
    model_file = read_model(path)
    at16, at8 = model_file.open(), model_file.open(output_stride=8)
    assert len(reads) == 1  # one read, whatever is opened from it
    card = model_file.card
    assert (card.format, card.classes, card.palette, card.extra["step"]) == ("checkpoint", CLASSES, PALETTE, 11)
    assert card.config["model"]["name"] == Config().model.name and card.spec == model.spec
    assert at16.spec.output_stride == 16 and at8.spec.output_stride == 8 and not at8.training
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(at16(x), model(x))


def test_a_plain_state_dict_says_how_to_load_it(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(create_model("deeplabv3_mobilenetv2", num_classes=2).state_dict(), path)
    with pytest.raises(ValueError, match=r"weights.pt is not a deeplab training checkpoint: it holds a plain state "
                                         r"dict.*deeplab.create_model\(NAME, weights=PATH\)"):
        read_model(path)
    # ... which create_model then takes
    assert create_model("deeplabv3_mobilenetv2", num_classes=2, weights=path).spec.num_classes == 2


@pytest.mark.parametrize(("content", "message"), [
    (b"not a model", "notes.bin is not a checkpoint: it is a text file"),
    (b"", "notes.bin is not a checkpoint: it is empty"),
])
def test_a_foreign_file_is_named_in_the_error(tmp_path, content, message):
    (tmp_path / "notes.bin").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_model(tmp_path / "notes.bin")


def test_a_missing_source_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_model(tmp_path / "nope.pt")


def test_the_card_round_trips_through_the_export_metadata(checkpoint):
    card = read_model(checkpoint[0]).card
    again = ModelCard.from_json(card.to_json(), "x.onnx")
    assert (again.spec, again.classes, again.palette, again.config) == (card.spec, CLASSES, PALETTE, card.config)
    damaged = json.loads(card.to_json())
    del damaged["model_spec"]
    with pytest.raises(ValueError, match="x.onnx: damaged deeplab export metadata"):
        ModelCard.from_json(json.dumps(damaged), "x.onnx")


def test_a_model_in_memory_exports_and_opens_with_its_card(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    from deeplab.deploy.export import export_model

    _, model = checkpoint
    out = tmp_path / "m.onnx"
    export_model(model, out, classes=CLASSES, palette=PALETTE, progress=False)
    runner, card = open_model(out)
    assert (card.format, card.precision, card.classes, card.spec) == ("onnx", "fp32", CLASSES, model.spec)
    x = torch.randn(2, 3, 65, 81)
    with torch.no_grad():
        expected = model(x)
    assert (runner(x) - expected).abs().max() <= 1e-4 * expected.abs().max()
    with pytest.raises(ValueError, match="exported at output stride 16; for 8, export again"):
        read_model(out).open(output_stride=8)


def test_a_tf_checkpoint_opens_as_the_model_it_holds(tmp_path):
    torch.manual_seed(0)
    spec = tf_spec("deeplabv3_mobilenetv2", num_classes=21, atrous_rates=())
    model = with_random_statistics(build_from_spec(spec)).eval()
    prefix = write_bundle(tmp_path / "train" / "model.ckpt-30000", tf_variables(model))
    predictor = Predictor.from_file(prefix)
    assert predictor.spec == model.spec and predictor.classes[15] == "person"  # 21 classes: VOC's names
    assert read_model(tmp_path / "train").card.format == "tf-checkpoint"  # the folder holding it works too
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        expected = model(x)
    assert (predictor.logits_for_batch(x) - expected).abs().max() <= 1e-4 * expected.abs().max()
