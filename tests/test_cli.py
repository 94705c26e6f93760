"""The command line's own behaviour: plain messages, each said once."""

import argparse
import warnings

import numpy as np
import pytest
from PIL import Image

from deeplab import cli, create_model
from deeplab.cli import build_parser, main
from deeplab.config import Config, apply_overrides
from deeplab.engine.checkpoint import save_checkpoint


def test_predict_reports_each_skipped_input_once_without_python_locations(tmp_path, capsys):
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=2)
    save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=None, step=1, best_miou=0.0, config=Config(),
                    classes=["a", "b"], palette=[(0, 0, 0), (255, 0, 0)])
    Image.fromarray(np.zeros((33, 33, 3), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code = main(["predict", "--checkpoint", str(tmp_path / "ck.pt"), str(tmp_path / "good.png"),
                     str(tmp_path / "broken.jpg"), str(tmp_path / "missing.png"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    for name in ("broken.jpg", "missing.png"):
        assert len([line for line in err.splitlines() if name in line]) == 1, err
    assert ".py:" not in err and "Warning" not in err


def test_library_warnings_print_as_one_plain_line(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "images" / f"s{i}.png")
        Image.fromarray(np.full((20, 20), i % 2, np.uint8)).save(root / "masks" / f"s{i}.png")
    (root / "images" / "lonely.png").write_bytes((root / "images" / "s0.png").read_bytes())
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("s0\ns1\nlonely\n")
    (root / "splits" / "val.txt").write_text("s2\n")
    code = main(["train", "--set", "data.name=folder", f"data.root={root}", "data.skip_bad=true",
                 "data.crop_size=17", "data.num_workers=0", "train.batch_size=2", "train.iterations=1",
                 "train.progress=false", f"train.run_dir={tmp_path / 'run'}", "data.num_classes=2"])
    err = capsys.readouterr().err
    assert "warning: " in err and "lonely" in err and ".py:" not in err, err
    assert code == 0, err


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every subcommand, nested ones (``data check``) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def test_every_command_has_a_description_and_every_option_a_help_text():
    commands = dict(_commands(build_parser()))
    assert {"train", "eval", "predict", "export", "benchmark", "serve", "crf-tune", "models", "data"} <= {
        path[0] for path in commands}
    assert ("data", "check") in commands and ("data", "prepare") in commands
    for path, parser in commands.items():
        assert parser.description and len(parser.description) > 20, f"deeplab {' '.join(path)} --help: no description"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            if action.help == argparse.SUPPRESS:  # only an old spelling, beside the option that replaced it
                assert any(other.dest == action.dest and other.help != argparse.SUPPRESS for other in
                           parser._actions), f"deeplab {' '.join(path)} {name}: hidden"
                continue
            assert action.help, f"deeplab {' '.join(path)} {name}: no help"


def test_every_command_summary_is_one_sentence_styled_alike():
    for path, parser in [((), build_parser()), *_commands(build_parser())]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    summary = choice.help
                    assert summary[0].isupper() and summary.endswith("."), f"deeplab {' '.join(path)} {choice.dest}"


def test_every_numeric_default_is_named_in_its_help():
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            values = action.default if isinstance(action.default, list) else [action.default]
            numeric = values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            if numeric and action.help != argparse.SUPPRESS:
                assert "default" in action.help, f"deeplab {' '.join(path)} {action.option_strings}: {action.help}"


def test_export_takes_the_calibration_count_under_its_new_and_its_old_name():
    parser = build_parser()
    base = ["export", "--checkpoint", "c.pt", "--out", "m.onnx"]
    assert parser.parse_args(base).calibration_images == 64
    assert parser.parse_args([*base, "--calibration-count", "8"]).calibration_images == 8
    assert parser.parse_args([*base, "--calibration-images", "5"]).calibration_images == 5
    assert "--calibration-images" not in dict(_commands(parser))[("export",)].format_help()


@pytest.mark.parametrize(("command", "sections"), [("train", {"train", "model"}), ("eval", {"eval"}),
                                                    ("crf-tune", {"data", "eval"})])
def test_set_examples_name_keys_of_the_sections_the_command_reads(command, sections):
    parser = dict(_commands(build_parser()))[(command,)]
    (text,) = [action.help for action in parser._actions if action.dest == "overrides"]
    example = text.split("e.g. ", 1)[1].split()
    assert example and {item.split(".")[0] for item in example} <= sections, text
    apply_overrides(Config(), example)  # each key exists and each value has its type


def test_ctrl_c_before_a_loop_listens_ends_with_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the model loads

    monkeypatch.setattr(cli, "_open_predictor", interrupted)
    assert main(["predict", "--checkpoint", "ck.pt", "x.png", "--out", "out"]) == 130
    assert capsys.readouterr().err == "interrupted by SIGINT\n"
