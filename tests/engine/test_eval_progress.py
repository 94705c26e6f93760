"""The saved progress of a stopped evaluation (deeplab/engine/eval_progress.py): round trip, and clear refusals of a
file that is damaged or belongs to another split."""

import pytest
import torch

from deeplab.engine.eval_progress import EvalProgress, load_progress, model_identity, progress_file, save_progress


def test_progress_round_trips_and_a_file_of_another_split_or_a_damaged_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_CACHE", str(tmp_path))
    path = progress_file({"model": {"name": "x"}, "eval": {"flip": True}})
    assert path.parent == tmp_path / "eval_progress" and path != progress_file({"model": {"name": "x"}})
    assert path == progress_file({"model": {"name": "x"}, "eval": {"flip": True, "batch_size": 4}})  # speed only
    assert path != progress_file({"model": {"name": "x"}, "eval": {"flip": True, "scales": [1.0]}})
    assert load_progress(path, 5, (3, 3)) is None  # nothing saved: start from the beginning
    confusion = torch.arange(9).reshape(3, 3)
    save_progress(path, EvalProgress([3, 0], confusion), total=5)
    loaded = load_progress(path, 5, (3, 3))
    assert loaded.indices == [0, 3] and torch.equal(loaded.confusion, confusion)
    with pytest.raises(ValueError, match=r"saved for 5 image\(s\) and a \(3, 3\) confusion matrix, this split has 7 "
                                         r"and \(3, 3\); delete it to start over"):
        load_progress(path, 7, (3, 3))
    path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"cannot resume from {path} \(JSONDecodeError: .*delete it to start over"):
        load_progress(path, 5, (3, 3))


def test_a_model_file_is_named_by_its_path_size_and_time_a_name_by_itself(tmp_path):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"12345")
    identity = model_identity(checkpoint)
    assert identity["path"] == str(checkpoint.resolve()) and identity["size"] == 5
    checkpoint.write_bytes(b"123456")  # retrained: another model
    assert model_identity(checkpoint) != identity
    assert model_identity("hf-hub:lab/roads") == {"name": "hf-hub:lab/roads"}
