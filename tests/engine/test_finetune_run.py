"""`deeplab train` from another model's weights: the run says, on the console and in log.jsonl, what started afresh."""

import json

import torch

from deeplab import create_model
from deeplab.cli import main
from deeplab.config import load_config
from deeplab.engine.checkpoint import save_checkpoint


def test_training_from_a_21_class_checkpoint_names_the_new_classifier(tiny, tmp_path, capsys):
    torch.manual_seed(0)
    source = create_model("deeplabv3plus_mobilenetv2", num_classes=21)
    save_checkpoint(tmp_path / "voc.pt", model=source, optimizer=None, step=30000, best_miou=0.7,
                    config=load_config(None, []), classes=[f"c{i}" for i in range(21)],
                    palette=[(i, i, i) for i in range(21)])
    assert main(["train", "--set", *tiny(f"model.weights={tmp_path / 'voc.pt'}", "train.iterations=1",
                                         "train.eval_every=1")]) == 0
    line = ("re-initialised the classifier (21 multiclass -> 7 multiclass): head.classifier.bias, "
            "head.classifier.weight")
    assert line in capsys.readouterr().out
    records = [json.loads(text) for text in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    notes = [record["initial_weights"] for record in records if "initial_weights" in record]
    assert len(notes) == 1 and line in notes[0][0] and notes[0][0].startswith("initial weights: ")
