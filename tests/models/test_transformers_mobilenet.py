"""transformers' DeepLab v3 MobileNetV2 checkpoints load as our deeplabv3_mobilenetv2 with the TF numerics, and give
transformers' own logits. The reference is a randomly initialised transformers model (non-trivial weights and
BatchNorm statistics) saved locally, as the authors' google/deeplabv3_mobilenet_v2_1.0_513 is laid out."""

import json
from pathlib import Path

import pytest
import torch

import deeplab
from deeplab.classes import VOC_CLASSES
from deeplab.models.segmenter import upsample_to
from deeplab.models.transformers_mobilenet import transformers_classes, transformers_spec
from deeplab.palettes import voc_palette
from tests.fixtures import with_random_statistics
from tests.hubcache import folder_files, offline_cache, plant

transformers = pytest.importorskip("transformers", reason="the transformers extra is not installed "
                                                          "(pip install -e '.[transformers]'; make test installs it)")

VOC_ID2LABEL = {str(i): name for i, name in enumerate(VOC_CLASSES)}


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """A private Hugging Face cache, offline (HF_HOME in tmp_path, HF_HUB_OFFLINE=1)."""
    return offline_cache(tmp_path, monkeypatch)


def _randomise(model: torch.nn.Module) -> None:
    """Conv weights at a scale that keeps activations O(1) through the network (transformers' init gives logits
    near 0) and BatchNorm statistics far from (0, 1), so that a misplaced tensor, a wrong epsilon or padding shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)
    with_random_statistics(model)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(transformers model, its save_pretrained folder): VOC labels, output stride 8, as the authors' port."""
    config = transformers.MobileNetV2Config(output_stride=8, id2label=VOC_ID2LABEL,
                                            label2id={v: int(k) for k, v in VOC_ID2LABEL.items()},
                                            classifier_dropout_prob=0.1)
    model = transformers.MobileNetV2ForSemanticSegmentation(config).eval()
    _randomise(model)
    folder = tmp_path_factory.mktemp("transformers") / "deeplabv3_mobilenet_v2"
    model.save_pretrained(folder)
    transformers.MobileNetV2ImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return model, folder


def test_the_folder_is_laid_out_as_the_authors_checkpoint(reference):
    _, folder = reference
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(p.name for p in folder.iterdir())
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["MobileNetV2ForSemanticSegmentation"]


@pytest.mark.parametrize("size", [(65, 65), (66, 71)])
def test_logits_equal_transformers_own_model_on_the_same_weights(reference, size):
    model, folder = reference
    ours = deeplab.from_pretrained(folder)
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(pixel_values=image).logits  # at feature resolution (stride 8)
        features = ours.head(ours.backbone(image))
        full = ours(image)
    largest = expected.abs().max()
    assert largest > 1.0  # logits far from zero: the comparison is not trivially passed
    assert features.shape == expected.shape
    assert (features - expected).abs().max() <= 1e-4 * largest
    # at the input's size, with the TF reference's align_corners=True resize the spec switches on
    assert (full - upsample_to(expected, size, align_corners=True)).abs().max() <= 1e-4 * largest


def test_the_spec_has_the_tf_numerics_and_the_voc_classes(reference):
    _, folder = reference
    model, card = deeplab.open_model(folder)
    options = card.spec.options
    assert (card.spec.name, card.spec.output_stride, card.spec.num_classes) == ("deeplabv3_mobilenetv2", 8, 21)
    assert (options["tf_padding"], options["bn_eps"], options["align_corners"], options["atrous_rates"]) == \
        (True, 1e-3, True, ())
    assert card.spec.mean == card.spec.std == (0.5, 0.5, 0.5)
    assert card.classes == list(VOC_CLASSES) and card.palette == voc_palette(21) and card.format == "transformers"


def test_the_authors_hub_name_loads_offline_with_the_voc_classes(reference, offline_hub):
    model, folder = reference
    plant(offline_hub, "google/deeplabv3_mobilenet_v2_1.0_513", folder_files(folder))
    predictor = deeplab.Predictor.from_file("hf-hub:google/deeplabv3_mobilenet_v2_1.0_513")
    assert predictor.classes == list(VOC_CLASSES) and predictor.mean == (0.5, 0.5, 0.5)
    image = torch.randint(0, 256, (3, 65, 65), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(pixel_values=image.float().div(255).sub(0.5).div(0.5)[None]).logits
    logits = predictor.predict_logits(image)
    assert (logits - upsample_to(expected, (65, 65), align_corners=True)[0]).abs().max() <= 1e-4 * expected.abs().max()


def test_other_networks_and_placeholder_labels():
    config = transformers.MobileNetV2Config(depth_multiplier=0.5).to_dict()
    with pytest.raises(ValueError, match=r"depth_multiplier=0\.5 \(deeplab's is 1\.0\)"):
        transformers_spec(config)
    classes, palette = transformers_classes(transformers.MobileNetV2Config(num_labels=3).to_dict())
    assert classes == ["class_0", "class_1", "class_2"] and len(palette) == 3
    named = transformers_classes({"id2label": {"0": "sky", "1": "sea"}})[0]
    assert named == ["sky", "sea"]
