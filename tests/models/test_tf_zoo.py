"""The TF model zoo by name (deeplab.models.published, deeplab.models.tf_hub) without TensorFlow or a network:
the registry against model_zoo.md, the converted-weights cache, offline errors, eval with the zoo's protocol."""

import os
import re
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from deeplab import create_model
from deeplab.classes import ADE20K_CLASSES_WITH_OTHER, CITYSCAPES_CLASSES, VOC_CLASSES
from deeplab.cli import main
from deeplab.inference import Predictor
from deeplab.models import PUBLISHED_WEIGHTS, published_weights
from deeplab.models.published import TF_BACKBONES
from deeplab.models.tf_hub import CACHE_FORMAT, converted_path
from deeplab.palettes import CITYSCAPES_PALETTE, voc_palette
from tests.fixtures import with_random_statistics

TF_NAMES = {
    "deeplabv3plus_xception65.tf_voc_trainaug", "deeplabv3plus_xception65.tf_voc_trainval",
    "deeplabv3_mobilenetv2.tf_voc_trainaug", "deeplabv3_mobilenetv2.tf_voc_trainval",
    "deeplabv3plus_xception65.tf_cityscapes_trainfine", "deeplabv3_mobilenetv2.tf_cityscapes_trainfine",
    "deeplabv3plus_xception65.tf_ade20k_train",
}
REPO = Path(__file__).resolve().parents[2]


def _model_zoo_md() -> Path | None:
    research = os.environ.get("DEEPLAB_TF_REFERENCE", str(REPO.parent / "shared/reference/tf-deeplab/research"))
    path = Path(research) / "deeplab" / "g3doc" / "model_zoo.md"
    return path if path.is_file() else None


@pytest.fixture
def hub(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


@pytest.fixture
def offline(monkeypatch):
    def refuse(url, dst, *args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_every_zoo_model_of_the_issue_is_registered_with_its_classes_and_palette():
    tf = {name for name, weights in PUBLISHED_WEIGHTS.items() if weights.source == "tf"}
    assert tf == TF_NAMES
    expected = {"voc": (VOC_CLASSES, voc_palette(21)), "cityscapes": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
                "ade20k": (ADE20K_CLASSES_WITH_OTHER, voc_palette(151))}
    for name in TF_NAMES:
        weights = published_weights(name)
        assert name.startswith(weights.model + ".tf_") and weights.url.startswith("http://download.tensorflow.org/")
        assert (weights.classes, weights.palette) == expected[weights.dataset]
    assert str(published_weights("deeplabv3plus_xception65.tf_voc_trainaug").results[1]) == \
        "83.58% val (OS8, scales 0.5:0.25:1.75, flip)"


def test_urls_and_figures_match_the_reference_model_zoo_page():
    page = _model_zoo_md()
    if page is None:
        pytest.skip("the TF reference (DEEPLAB_TF_REFERENCE) is not on this machine")
    rows = {re.search(r"\((http://download\.tensorflow\.org/models/[^ )]+)", line).group(1): line
            for line in page.read_text().splitlines() if "download.tensorflow.org/models/" in line}
    for name in TF_NAMES:
        weights = published_weights(name)
        row = rows[weights.url]
        for result in weights.results:
            assert f"{result.miou:.2f}" in row, (name, result)
    for backbone in TF_BACKBONES.values():
        assert backbone.url in rows


def _converted(model: torch.nn.Module, name: str) -> dict:
    weights = published_weights(name)
    return {"format": CACHE_FORMAT, "source": weights.url, "model_spec": model.spec.to_dict(),
            "model": model.state_dict(), "classes": list(weights.classes),
            "palette": [list(c) for c in weights.palette]}


def _plant_converted(name: str, seed: int = 0) -> torch.nn.Module:
    """A small random model saved where the import of ``name`` would have cached its result."""
    torch.manual_seed(seed)
    weights = published_weights(name)
    model = with_random_statistics(create_model(weights.model, num_classes=len(weights.classes)), seed).eval()
    path = converted_path(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_converted(model, name), path)
    return model


def test_a_cached_conversion_loads_by_name_offline(hub, offline):
    name = "deeplabv3_mobilenetv2.tf_voc_trainaug"
    model = _plant_converted(name)
    assert converted_path(published_weights(name)) == hub / "checkpoints" / \
        "deeplabv3_mnv2_pascal_train_aug_2018_01_29.pt"
    loaded = create_model("deeplabv3_mobilenetv2", weights=name).eval()
    assert loaded.spec == model.spec
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    at_os8 = create_model("deeplabv3_mobilenetv2", weights=name, output_stride=8)
    assert at_os8.spec.output_stride == 8
    predictor = Predictor.from_published(name)
    assert predictor.classes == list(VOC_CLASSES) and predictor.palette == voc_palette(21)


def test_offline_without_the_tarball_names_the_url_and_where_to_put_it(hub, offline):
    name = "deeplabv3plus_xception65.tf_cityscapes_trainfine"
    with pytest.raises(RuntimeError, match=r"could not download the TF model-zoo checkpoint "
                                           r"'deeplabv3plus_xception65.tf_cityscapes_trainfine' from "
                                           r"http://download.tensorflow.org/models/deeplabv3_cityscapes_train_2018_02_06"
                                           r".tar.gz \(URLError: .*\)\. Without internet, download that file elsewhere "
                                           r"and place it at .*hub/checkpoints/deeplabv3_cityscapes_train_2018_02_06"
                                           r".tar.gz"):
        create_model("deeplabv3plus_xception65", weights=name)


def test_a_stale_or_damaged_conversion_is_redone_from_the_tarball(hub, offline):
    name = "deeplabv3_mobilenetv2.tf_voc_trainval"
    path = converted_path(published_weights(name))
    path.parent.mkdir(parents=True)
    for content in (b"not a torch file", None):
        if content is None:
            torch.save({"format": "deeplab-tf-zoo-0", "model": {}}, path)
        else:
            path.write_bytes(content)
        with pytest.raises(RuntimeError, match=r"place it at .*deeplabv3_mnv2_pascal_trainval_2018_01_29.tar.gz"):
            create_model("deeplabv3_mobilenetv2", weights=name)


def test_tf_imagenet_backbone_for_the_wrong_model_is_refused_before_any_download(hub, offline):
    with pytest.raises(ValueError, match=r"pretrained_backbone='xception_65_imagenet' fits deeplabv3plus_xception65, "
                                         r"not deeplabv3_mobilenetv2"):
        create_model("deeplabv3_mobilenetv2", pretrained_backbone="xception_65_imagenet")


def test_tf_imagenet_backbone_offline_names_where_to_put_it(hub, offline):
    with pytest.raises(RuntimeError, match=r"could not download the TF ImageNet checkpoint 'xception_65_imagenet' "
                                           r"from http://download.tensorflow.org/models/deeplabv3_xception_2018_01_04"
                                           r".tar.gz .* place it at .*hub/checkpoints/deeplabv3_xception_2018_01_04"):
        create_model("deeplabv3plus_xception65", pretrained_backbone="xception_65_imagenet")


def test_models_command_lists_the_zoo_with_figures_and_protocols(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "| deeplabv3plus_xception65.tf_voc_trainaug | deeplabv3plus_xception65 | 21 | 82.20% val (OS16, scales " \
           "1.0, no flip); 83.58% val (OS8, scales 0.5:0.25:1.75, flip) |" in out
    assert "| deeplabv3_mobilenetv2.tf_cityscapes_trainfine | deeplabv3_mobilenetv2 | 19 | 70.71% val" in out
    assert all(name in out for name in TF_BACKBONES)


def test_eval_pretrained_with_the_zoo_protocol_config(hub, offline, tmp_path, monkeypatch, capsys):
    import deeplab.engine.evaluate as evaluate_module
    from tests.data.layouts import make_voc

    name = "deeplabv3_mobilenetv2.tf_voc_trainaug"
    model = _plant_converted(name, seed=1)
    make_voc(tmp_path / "voc", train={"t1": 1}, val={"v1": 12})  # one image: 12 passes at up to 898 x 898
    seen = {}
    real = evaluate_module.evaluate_predictor

    def spy(predictor, dataset, **kwargs):
        seen.update(predictor=predictor, dataset=dataset)
        return real(predictor, dataset, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate_predictor", spy)
    report = tmp_path / "metrics.json"
    config = REPO / "configs" / "eval" / "tf_zoo_voc_os8_ms_flip.yaml"
    assert main(["eval", "--pretrained", name, "--config", str(config), "--json", str(report), "--set",
                 f"data.root={tmp_path / 'voc'}", "data.num_workers=0", "train.device=cpu"]) == 0
    assert "miou" in report.read_text() and "tvmonitor" in capsys.readouterr().out
    predictor, dataset = seen["predictor"], seen["dataset"]
    assert (predictor.pad_to, predictor.scales, predictor.flip) == ((513, 513), (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), True)
    assert predictor.spec.output_stride == 8 and predictor.classes == list(VOC_CLASSES) and len(dataset) == 1
    # What the network saw: the image padded with zeros (the mean pixel once normalised) to 513 x 513.
    image, _ = dataset[0]
    single = Predictor(create_model(model.spec.name, weights=name, output_stride=8), num_classes=21, pad_to=513,
                       fast=False)
    padded = torch.nn.functional.pad(image[None], (0, 513 - image.shape[-1], 0, 513 - image.shape[-2]))
    with torch.no_grad():
        expected = single.model(padded)[..., :image.shape[-2], :image.shape[-1]]
    torch.testing.assert_close(single.logits_for_batch(image[None]), expected)


def _plant_tarball(name: str, folder: str, checkpoint: str, seed: int = 0) -> torch.nn.Module:
    """The zoo's tarball for ``name`` in its real layout, written without TensorFlow from a small random model of
    the same architecture (plus the training state a zoo checkpoint carries), in torch.hub's cache."""
    from deeplab.models import build_from_spec
    from deeplab.models.tf_import import tf_spec, tf_variables
    from tests.tfbundle import write_zoo_tarball

    torch.manual_seed(seed)
    weights = published_weights(name)
    model = with_random_statistics(build_from_spec(tf_spec(weights.model, num_classes=len(weights.classes),
                                                           atrous_rates=())), seed).eval()
    variables = tf_variables(model)
    variables.update({"global_step": np.array(30000, dtype=np.int64),
                      **{f"{k}/Momentum": np.zeros_like(v) for k, v in list(variables.items())[:5]}})
    weights.cache_path().parent.mkdir(parents=True, exist_ok=True)
    write_zoo_tarball(weights.cache_path(), folder, checkpoint, variables)
    return model


def test_predict_pretrained_from_a_zoo_tarball_in_the_hub_cache(hub, offline, tmp_path):
    from PIL import Image

    name = "deeplabv3_mobilenetv2.tf_voc_trainaug"
    model = _plant_tarball(name, "deeplabv3_mnv2_pascal_train_aug", "model.ckpt-30000")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(photo)
    assert main(["predict", "--pretrained", name, str(photo), "--out", str(tmp_path / "out")]) == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    image = torch.from_numpy(np.array(Image.open(photo))).permute(2, 0, 1)
    reference = Predictor(model, num_classes=21, fast=False)
    assert (mask == reference.predict(image).numpy()).mean() >= 0.999
    # A random MobileNet's masks are nearly flat, so the scores are compared too.
    expected, logits = reference.predict_logits(image), Predictor.from_published(name).predict_logits(image)
    assert (logits - expected).abs().max() / expected.abs().max() < 1e-4
    assert Image.open(tmp_path / "out" / "photo.png").getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    # Imported once: the conversion is cached beside the tarball and used without it.
    cached = converted_path(published_weights(name))
    assert cached.is_file()
    published_weights(name).cache_path().unlink()
    again = create_model("deeplabv3_mobilenetv2", weights=name).eval()
    assert again.spec == model.spec and again.spec.options["align_corners"] is True
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_a_tarball_holding_another_model_is_refused(hub, offline):
    name = "deeplabv3_mobilenetv2.tf_cityscapes_trainfine"  # 19 classes expected
    from deeplab.models import build_from_spec
    from deeplab.models.tf_import import tf_spec, tf_variables
    from tests.tfbundle import write_zoo_tarball

    model = build_from_spec(tf_spec("deeplabv3_mobilenetv2", num_classes=21, atrous_rates=()))
    weights = published_weights(name)
    weights.cache_path().parent.mkdir(parents=True)
    write_zoo_tarball(weights.cache_path(), "deeplabv3_mnv2_cityscapes_train", "model.ckpt", tf_variables(model))
    with pytest.raises(ValueError, match=r"deeplabv3_mnv2_cityscapes_train_2018_02_05.tar.gz holds a "
                                         r"deeplabv3_mobilenetv2 with 21 classes; "
                                         r"deeplabv3_mobilenetv2.tf_cityscapes_trainfine should be a "
                                         r"deeplabv3_mobilenetv2 with 19 classes"):
        create_model("deeplabv3_mobilenetv2", weights=name)
    assert not converted_path(weights).exists()


def test_tf_imagenet_backbone_loads_into_the_backbone(hub, monkeypatch):
    import deeplab.models.tf_hub as tf_hub
    from deeplab.models.tf_import import tf_variables

    torch.manual_seed(0)
    source = with_random_statistics(create_model("deeplabv3plus_xception65", num_classes=3))
    imagenet = {k: v for k, v in tf_variables(source).items() if k.startswith("xception_65/")}
    imagenet["xception_65/logits/weights"] = np.zeros((1, 1, 2048, 1001), np.float32)  # ImageNet's classifier
    asked = []
    monkeypatch.setattr(tf_hub, "zoo_variables", lambda url, path, what: asked.append((url, path)) or imagenet)
    model = create_model("deeplabv3plus_xception65", num_classes=3, pretrained_backbone="xception_65_imagenet")
    assert asked == [(TF_BACKBONES["xception_65_imagenet"].url, TF_BACKBONES["xception_65_imagenet"].cache_path())]
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_tf_imagenet_backbone_adapts_its_stem_to_other_input_channels(hub, monkeypatch):
    import deeplab.models.tf_hub as tf_hub
    from deeplab.models.channels import adapt_input_weight
    from deeplab.models.tf_import import tf_variables

    torch.manual_seed(0)
    source = with_random_statistics(create_model("deeplabv3plus_xception65", num_classes=3))
    imagenet = {k: v for k, v in tf_variables(source).items() if k.startswith("xception_65/")}
    monkeypatch.setattr(tf_hub, "zoo_variables", lambda url, path, what: imagenet)
    model = create_model("deeplabv3plus_xception65", num_classes=3, in_channels=4,
                         pretrained_backbone="xception_65_imagenet")
    own, theirs = model.backbone.state_dict(), source.backbone.state_dict()
    (stem,) = [key for key in own if own[key].shape != theirs[key].shape]  # the one convolution reading the image
    assert own[stem].shape[1] == 4 and torch.equal(own[stem], adapt_input_weight(theirs[stem], 4))
    assert all(torch.equal(own[key], theirs[key]) for key in own if key != stem)
    assert model.init_notes == [f"input: backbone.{stem.removesuffix('.weight')} adapted from xception_65_imagenet's "
                                "3 channels to 4 (RGB weights repeated over 4 channels and scaled by 3/4)"]
    assert model(torch.randn(1, 4, 65, 65)).shape == (1, 3, 65, 65)
