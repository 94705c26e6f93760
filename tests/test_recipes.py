"""Every recipe in configs/ parses, matches its name, and trains 2 iterations on fixture datasets."""

import re
from pathlib import Path

import pytest

from deeplab.config import load_config
from deeplab.data.voc import prepare_voc_aug
from deeplab.engine.train import train
from deeplab.modelfile import read_checkpoint
from deeplab.options import crf_from_eval_config
from tests.data.layouts import make_ade20k, make_cityscapes, make_voc_aug_sources

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if p.stem != "demo")
CLASSES = {"voc_aug": 21, "cityscapes": 19, "ade20k": 150}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    voc = tmp_path_factory.mktemp("voc")
    make_voc_aug_sources(voc)
    prepare_voc_aug(voc)
    cityscapes = tmp_path_factory.mktemp("cityscapes")
    make_cityscapes(cityscapes)
    ade = tmp_path_factory.mktemp("ade")
    make_ade20k(ade)
    return {"voc_aug": voc, "cityscapes": cityscapes, "ade20k": ade}


def test_there_is_a_recipe_for_each_paper_setting():
    names = {p.stem for p in RECIPES}
    for expected in ["deeplabv3_resnet101_voc-aug_513_30k", "deeplabv3plus_resnet101_voc-aug_513_30k",
                     "deeplabv3plus_xception65_voc-aug_513_30k", "deeplabv3_mobilenetv2_voc-aug_513_30k",
                     "deeplabv3plus_xception65_cityscapes_769_90k", "deeplabv1_vgg16_voc-aug_321_6k",
                     "deeplabv2_vgg16_voc-aug_321_6k", "deeplabv1_vgg16_msc_voc-aug_321_6k",
                     "deeplabv2_resnet101_msc_voc-aug_321_20k"]:
        assert expected in names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_matches_its_name_and_states_its_target(recipe):
    config = load_config(recipe)
    model, variant, dataset, crop, schedule = re.fullmatch(r"(\w+?)(_msc)?_([a-z0-9-]+)_(\d+)_(\d+)k",
                                                           recipe.stem).groups()
    assert config.model.name == model
    assert config.data.name == dataset.replace("-", "_")
    assert config.data.crop_size == int(crop) and config.train.iterations == int(schedule) * 1000
    assert config.model.pretrained_backbone is True and config.train.momentum == 0.9
    assert "# Target" in recipe.read_text()
    if config.data.crop_size == 513:  # the v3/v3+ recipe: train OS 16, evaluate OS 8
        assert (config.model.output_stride, config.eval.output_stride, config.train.lr) == (16, 8, 0.007)
    # "_msc" is each paper's multi-scale variant: v1's multi-scale features (DeepLab-MSc), v2's multi-scale
    # inputs (MSC); both papers report them with the DenseCRF.
    if model.startswith("deeplabv1"):
        assert bool(config.model.multiscale_features) == bool(variant)
    if model.startswith("deeplabv2"):
        assert config.model.msc_scales == ([1.0, 0.75, 0.5] if variant else None)
    if variant:
        assert config.eval.crf is True and "row" in recipe.read_text()
        assert crf_from_eval_config(config.eval).iterations == 10  # the CRF keys make valid settings


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_on_fixture_data(recipe, roots, tmp_path):
    config = load_config(recipe)
    config = load_config(recipe, [
        f"data.root={roots[config.data.name]}", "model.pretrained_backbone=false", "data.crop_size=33",
        "data.num_workers=0", "train.batch_size=2", "train.iterations=2", "train.progress=false",
        f"train.run_dir={tmp_path / 'run'}",
    ])
    result = train(config)
    checkpoint = read_checkpoint(tmp_path / "run" / "last.pt")
    assert result.step == checkpoint.step == 2
    assert len(checkpoint.classes) == CLASSES[config.data.name]
    assert 0.0 <= result.best_miou <= 1.0
