"""Config: YAML + typed overrides, every key checked, model options that reach the builder."""

import pytest

from deeplab.config import Config, ConfigError, apply_overrides, from_dict, load_config, save_config
from deeplab.engine.checkpoint import model_from_config, model_options


def test_yaml_file_and_overrides_round_trip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: deeplabv3_resnet50\n  multi_grid: [1, 2, 1]\ntrain:\n  weight_decay: 4e-5\n")
    config = load_config(path, ["train.iterations=12", "model.dropout=0", "eval.scales=[0.5, 1.0]"])
    assert config.model.multi_grid == [1, 2, 1] and config.train.weight_decay == 4e-5
    assert config.train.iterations == 12 and config.model.dropout == 0.0 and config.eval.scales == [0.5, 1.0]
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(("override", "message"), [
    ("train.iters=3", "unknown key 'train.iters'; valid keys in 'train': iterations"),
    ("model.output_stride=sixteen", "model.output_stride: expected int | None, got 'sixteen'"),
    ("nosection.key=1", "unknown config key 'nosection.key'"),
    ("train.iterations", "must look like section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [override])


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="section 'model' must be a mapping"):
        from_dict({"model": 3})


def test_only_set_model_keys_reach_the_builder():
    config = load_config(None, ["model.name=deeplabv3_resnet50", "model.multi_grid=[1, 1, 1]", "model.head_conv=true"])
    assert model_options(config.model) == {"multi_grid": (1, 1, 1), "head_conv": True}
    model = model_from_config(config, num_classes=4)
    assert model.spec.options["multi_grid"] == (1, 1, 1) and model.spec.options["head_conv"] is True
    assert model.spec.output_stride == 16  # unset: the model's default


def test_a_model_key_the_model_does_not_take_is_a_clear_error():
    config = load_config(None, ["model.name=deeplabv1_vgg16", "model.atrous_rates=[6, 12]"])
    with pytest.raises(ValueError, match="deeplabv1_vgg16 does not take 'atrous_rates'; it accepts: .*atrous_rate"):
        model_from_config(config, num_classes=4)


def test_loss_and_class_weights_keys():
    config = load_config(None, ["train.loss=[ce, {name: dice, weight: 0.5, smooth: 1}]", "train.class_weights=auto"])
    assert config.train.loss == ["ce", {"name": "dice", "weight": 0.5, "smooth": 1}]
    assert config.train.class_weights == "auto" and load_config().train.loss == "ce"
    assert load_config(None, ["train.class_weights=[1, 2.5]"]).train.class_weights == [1.0, 2.5]
    with pytest.raises(ConfigError, match=r"train.loss: expected str \| dict"):
        load_config(None, ["train.loss=[3]"])
