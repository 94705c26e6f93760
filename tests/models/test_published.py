"""Published weights by name, through torch.hub's cache (offline: a file planted where torchvision keeps it)."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from deeplab import create_model
from deeplab.cli import main
from deeplab.models import PUBLISHED_WEIGHTS, published_weights
from deeplab.palettes import voc_palette

TV_WEIGHTS = {
    "deeplabv3_resnet50.coco_voc": torchvision.models.segmentation.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
    "deeplabv3_resnet101.coco_voc":
        torchvision.models.segmentation.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
}


@pytest.fixture
def hub(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def _plant(name: str) -> dict:
    """What torchvision publishes for ``name`` (random values): 21 classes, aux head, in the hub cache."""
    torch.manual_seed(0)
    model = getattr(torchvision.models.segmentation, PUBLISHED_WEIGHTS[name].model)(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 1.5)
    path = published_weights(name).cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def test_published_names_use_torchvision_urls_and_file_names():
    for name, tv_weights in TV_WEIGHTS.items():
        published = published_weights(name)
        assert published.url == tv_weights.url and published.file_name == tv_weights.url.rsplit("/", 1)[1]
        assert published.classes[0] == "background"
        assert published.classes[1:] == tuple(tv_weights.meta["categories"][1:])
        assert published.palette == voc_palette(21)
    with pytest.raises(ValueError, match="unknown published weights 'x'; valid names: .*deeplabv3_resnet101.coco_voc"):
        published_weights("x")


@pytest.mark.parametrize("name", sorted(TV_WEIGHTS))
def test_create_model_by_weights_name_agrees_with_torchvision(name, hub):
    _plant(name)
    model_name = PUBLISHED_WEIGHTS[name].model
    ours = create_model(model_name, weights=name).eval()
    # torchvision reads the same cached file for its own enum
    theirs = getattr(torchvision.models.segmentation, model_name)(weights=TV_WEIGHTS[name]).eval()
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        assert (ours(x) - theirs(x)["out"]).abs().max() < 1e-4
    assert ours.spec.output_stride == 8 and ours.spec.num_classes == 21


def test_weights_name_for_another_model_is_refused(hub):
    with pytest.raises(ValueError, match="are for deeplabv3_resnet50, not deeplabv3_resnet101"):
        create_model("deeplabv3_resnet101", weights="deeplabv3_resnet50.coco_voc")


def test_missing_file_offline_says_where_to_put_it(hub, monkeypatch):
    name = "deeplabv3_resnet50.coco_voc"
    monkeypatch.setitem(PUBLISHED_WEIGHTS, name, PUBLISHED_WEIGHTS[name].__class__(
        name, "deeplabv3_resnet50", "http://127.0.0.1:9/deeplabv3_resnet50_coco-cd0a2569.pth",
        PUBLISHED_WEIGHTS[name].classes, "test"))
    with pytest.raises(RuntimeError, match=r"could not fetch .* place it at .*hub/checkpoints/deeplabv3_resnet50_coco"):
        create_model("deeplabv3_resnet50", weights=name)


def test_predict_pretrained_segments_a_photo_in_one_command(hub, tmp_path, capsys):
    name = "deeplabv3_resnet50.coco_voc"
    state = _plant(name)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(photo)
    assert main(["predict", "--pretrained", name, str(photo), "--out", str(tmp_path / "out"), "--areas"]) == 0
    header = (tmp_path / "out" / "areas.csv").read_text().splitlines()[0].split(",")
    assert header[2:] == list(published_weights(name).classes)
    mask = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    theirs = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                                aux_loss=True)
    theirs.load_state_dict(state)
    image = torch.from_numpy(np.array(Image.open(photo).convert("RGB"))).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        expected = theirs.eval()(((image - mean) / std)[None])["out"][0].argmax(0).numpy()
    assert (mask == expected).mean() > 0.999


def test_models_command_lists_published_weights(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PUBLISHED_WEIGHTS)
