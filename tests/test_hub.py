"""Sharing models: save_pretrained -> from_pretrained, hf-hub: names read offline from the Hugging Face cache,
`deeplab push` (its folder, its upload calls) and the refusals (pickle-only repos, missing files)."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import deeplab
from deeplab.cli import main
from deeplab.hub import HubName, parse_hub_name
from deeplab.hubfolder import PRETRAINED_FORMAT
from deeplab.imageio import save_rgb_png
from deeplab.modelfile import open_model
from tests.fixtures import with_random_statistics
from tests.hubcache import folder_files, offline_cache, plant

CLASSES = ["background", "road", "tree"]
PALETTE = [(0, 0, 0), (200, 10, 10), (10, 200, 10)]
METRICS = {"miou": 0.6125, "pixel_accuracy": 0.875, "mean_class_accuracy": 0.7, "fw_iou": 0.8,
           "per_class_iou": {"background": 0.9, "road": 0.5, "tree": None}, "absent_classes": ["tree"]}
CONFIG = {"model": {"name": "deeplabv3_mobilenetv2", "output_stride": 16, "weights": "/home/me/init.pt"},
          "data": {"name": "folder", "root": "/home/me/private-data", "num_classes": 3, "crop_size": 129},
          "train": {"iterations": 200, "batch_size": 4, "lr": 0.01, "run_dir": "/home/me/runs/x"},
          "eval": {"output_stride": 16, "scales": [1.0], "flip": False}}


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """A private Hugging Face cache, offline (HF_HOME in tmp_path, HF_HUB_OFFLINE=1)."""
    return offline_cache(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def model() -> deeplab.Segmenter:
    """A small model with non-trivial BatchNorm statistics, so that buffers that fail to travel show."""
    torch.manual_seed(0)
    return with_random_statistics(deeplab.create_model("deeplabv3_mobilenetv2", num_classes=3)).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 65, 71)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pretrained") / "seg"
    return model.save_pretrained(folder, classes=CLASSES, palette=PALETTE, config=CONFIG, metrics=METRICS,
                                 repo_id="lab/roads")


def _logits(net, image) -> torch.Tensor:
    with torch.no_grad():
        return net(image)


def test_save_pretrained_round_trip_gives_the_same_logits_and_a_card_with_the_metrics(model, saved, image):
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = deeplab.from_pretrained(saved)
    assert not loaded.training and loaded.spec == model.spec
    assert torch.equal(_logits(loaded, image), _logits(model, image))

    record = json.loads((saved / "config.json").read_text())
    assert record["format"] == PRETRAINED_FORMAT and record["model_spec"] == model.spec.to_dict()
    assert record["classes"] == CLASSES and record["palette"] == [list(c) for c in PALETTE]
    assert (record["task"], record["mean"], record["std"]) == ("multiclass", list(model.spec.mean),
                                                               list(model.spec.std))
    assert record["metrics"] == METRICS
    # the essentials of the training config, and no local path
    assert record["training"]["train"] == {"iterations": 200, "batch_size": 4, "lr": 0.01}
    assert record["training"]["data"] == {"name": "folder", "num_classes": 3, "crop_size": 129}
    assert "/home/me" not in (saved / "config.json").read_text()

    card = ModelCard.load(saved / "README.md")
    assert (card.data.library_name, card.data.pipeline_tag, card.data.license) == \
        ("deeplab", "image-segmentation", "apache-2.0")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"mean_iou": 61.25, "accuracy": 87.5, "mean_accuracy": 70.0}
    assert {r.task_type for r in card.data.eval_results} == {"image-segmentation"}
    assert 'deeplab.from_pretrained("hf-hub:lab/roads")' in card.text and "| IoU road | 50.00 |" in card.text

    _, model_card = open_model(saved)
    assert model_card.format == "pretrained" and model_card.classes == CLASSES
    assert model_card.extra["metrics"] == METRICS and model_card.config["data"]["name"] == "folder"


def test_hub_names_load_offline_from_the_cache_wherever_a_model_is_taken(model, saved, image, offline_hub,
                                                                         tmp_path):
    commit = plant(offline_hub, "lab/roads", folder_files(saved), revisions=("main", "v1"))
    expected = _logits(model, image)
    for name in ("hf-hub:lab/roads", "lab/roads", "hf-hub:lab/roads@v1", f"hf-hub:lab/roads@{commit}"):
        assert torch.equal(_logits(deeplab.from_pretrained(name), image), expected), name
    predictor = deeplab.Predictor.from_file("hf-hub:lab/roads")
    assert predictor.classes == CLASSES and predictor.palette == PALETTE
    # model.weights and --set model.weights=... take it through create_model
    as_weights = deeplab.create_model("deeplabv3_mobilenetv2", weights="hf-hub:lab/roads").eval()
    assert torch.equal(_logits(as_weights, image), expected)
    # model.pretrained_backbone: the backbone only, under a new head
    fresh = deeplab.create_model("deeplabv3_mobilenetv2", num_classes=5, pretrained_backbone="hf-hub:lab/roads")
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in fresh.backbone.state_dict().items())
    bands = deeplab.create_model("deeplabv3_mobilenetv2", num_classes=5, in_channels=4,
                                 pretrained_backbone="hf-hub:lab/roads")  # the RGB stem adapts to 4 channels
    stem = model.backbone.state_dict()["features.0.0.weight"]
    assert torch.equal(bands.backbone.state_dict()["features.0.0.weight"], torch.cat([stem, stem[:, :1]], 1) * 0.75)
    assert "input: backbone.features.0.0 adapted from hf-hub:lab/roads's 3 channels to 4" in bands.init_notes[0]
    with pytest.raises(ValueError, match=r"pretrained_backbone=hf-hub:lab/roads.*does not fit deeplabv3_resnet50"):
        deeplab.create_model("deeplabv3_resnet50", num_classes=5, pretrained_backbone="hf-hub:lab/roads")
    # the command line: deeplab predict --pretrained hf-hub:...
    save_rgb_png(torch.randint(0, 255, (65, 65, 3), dtype=torch.uint8), tmp_path / "in.png")
    assert main(["predict", "--pretrained", "hf-hub:lab/roads", str(tmp_path / "in.png"), "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--workers", "0"]) == 0
    assert (tmp_path / "out" / "in.png").is_file()


def test_a_name_missing_from_the_offline_cache_names_the_repo_the_file_and_the_cache(offline_hub, capsys):
    with pytest.raises(FileNotFoundError) as caught:
        deeplab.from_pretrained("hf-hub:lab/absent")
    message = str(caught.value)
    assert "hf-hub:lab/absent" in message and "config.json" in message and str(offline_hub) in message
    assert "HF_HUB_OFFLINE is set" in message
    assert main(["predict", "--pretrained", "hf-hub:lab/absent", "x.png", "--out", "out"]) == 2
    assert "error: hf-hub:lab/absent: config.json is not in the local Hugging Face cache" in capsys.readouterr().err


class _Payload:
    """A pickle that creates a file when it is unpickled: a stand-in for code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_pickle_only_repo_is_refused_naming_what_it_holds(saved, offline_hub, tmp_path):
    marker = tmp_path / "pwned"
    files = {"config.json": saved / "config.json", "README.md": saved / "README.md",
             "pytorch_model.bin": pickle.dumps(_Payload(marker))}
    plant(offline_hub, "lab/pickled", files)
    with pytest.raises(FileNotFoundError) as caught:
        deeplab.from_pretrained("hf-hub:lab/pickled")
    message = str(caught.value)
    assert "model.safetensors" in message and "README.md, config.json, pytorch_model.bin" in message
    assert not marker.exists()
    # the same refusal for a local folder, which says what it holds and that pickles are never loaded
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data.read_bytes() if isinstance(data, Path) else data)
    with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors; it holds README\.md, config\.json, "
                                                r"pytorch_model\.bin.*pickle files \(pytorch_model\.bin\) are never"):
        deeplab.from_pretrained(folder)
    assert not marker.exists()


def test_a_foreign_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "segformer", "architectures": ["X"]}))
    with pytest.raises(ValueError, match=r"neither a deeplab model's .* model_type='segformer'"):
        deeplab.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory) -> Path:
    """A training run's folder: best.pt (with its config) and the metrics.json of `deeplab eval --json`."""
    from deeplab.config import from_dict

    run = tmp_path_factory.mktemp("run")
    deeplab.save_model(model, run / "best.pt", classes=CLASSES, palette=PALETTE, config=from_dict(CONFIG))
    (run / "metrics.json").write_text(json.dumps(METRICS))
    return run


def test_push_dry_run_writes_the_exact_folder(model, run_dir, image, tmp_path, capsys):
    out = tmp_path / "upload"
    assert main(["push", str(run_dir), "lab/roads", "--dry-run", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    printed = capsys.readouterr().out
    assert f"metrics from {run_dir / 'metrics.json'}" in printed and f"would get is {out}" in printed
    record = json.loads((out / "config.json").read_text())
    assert record["model_spec"] == model.spec.to_dict() and record["classes"] == CLASSES
    assert record["metrics"] == METRICS and record["training"]["data"]["crop_size"] == 129
    assert "/home/me" not in (out / "config.json").read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.model_name == "roads" and card.data.library_name == "deeplab"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["mean_iou"] == 61.25
    assert torch.equal(_logits(deeplab.from_pretrained(out), image), _logits(model, image))
    # a checkpoint file works as its run folder does; metrics.json beside it is found
    assert main(["push", str(run_dir / "best.pt"), "hf-hub:lab/roads", "--dry-run", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "config.json").read_text() == (out / "config.json").read_text()


def test_push_bad_sources_are_clear_errors(run_dir, tmp_path, capsys):
    assert main(["push", str(tmp_path), "lab/roads", "--dry-run", str(tmp_path / "o")]) == 2
    assert "without best.pt or last.pt" in capsys.readouterr().err
    assert main(["push", str(run_dir), "roads", "--dry-run", str(tmp_path / "o")]) == 2
    assert "'roads' is not a Hub repo name" in capsys.readouterr().err
    (tmp_path / "best.pt").write_bytes((run_dir / "best.pt").read_bytes())
    (tmp_path / "metrics.json").write_text(json.dumps({"loss": 1.0}))
    assert main(["push", str(tmp_path), "lab/roads", "--dry-run", str(tmp_path / "o")]) == 2
    assert "is not a metrics file of `deeplab eval --json`" in capsys.readouterr().err


@pytest.fixture
def hub_calls(monkeypatch) -> list:
    """huggingface_hub's HfApi.create_repo and upload_folder recorded (with the files of the folder at upload time)
    instead of sent: what an upload would do, offline."""
    from huggingface_hub import CommitInfo, HfApi, RepoUrl

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", sorted(p.name for p in Path(kwargs["folder_path"]).iterdir()), kwargs))
        return CommitInfo(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc", commit_message="m",
                          commit_description="", oid="abc")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_creates_the_repo_and_uploads_the_folder(run_dir, hub_calls, capsys):
    """Without --dry-run: huggingface_hub's create_repo then upload_folder, on the folder the dry run shows."""
    assert main(["push", str(run_dir), "lab/roads", "--private"]) == 0
    (create, repo_id, create_args), (upload, files, upload_args) = hub_calls
    assert (create, repo_id, create_args["private"], create_args["exist_ok"]) == ("create_repo", "lab/roads", True,
                                                                                  True)
    assert (upload, files, upload_args["repo_id"]) == ("upload_folder", ["README.md", "config.json",
                                                                         "model.safetensors"], "lab/roads")
    assert "uploaded to https://huggingface.co/lab/roads/commit/abc" in capsys.readouterr().out


def test_push_to_hub_from_python_uploads_what_save_pretrained_writes(model, hub_calls):
    url = model.push_to_hub("lab/python", classes=CLASSES, palette=PALETTE, metrics=METRICS)
    assert url == "https://huggingface.co/lab/python/commit/abc"
    assert [call[0] for call in hub_calls] == ["create_repo", "upload_folder"]
    assert hub_calls[0][2]["private"] is False
    assert hub_calls[1][1] == ["README.md", "config.json", "model.safetensors"]


def test_save_model_writes_a_checkpoint_every_command_reads(model, image, tmp_path):
    path = deeplab.save_model(model, tmp_path / "model.pt", dataset="voc" if model.spec.num_classes == 21 else None)
    loaded, checkpoint = deeplab.load_checkpoint(path)
    assert torch.equal(_logits(loaded, image), _logits(model, image))
    assert checkpoint.spec == model.spec and checkpoint.config.model.name == "deeplabv3_mobilenetv2"
    assert checkpoint.config.data.num_classes == 3 and len(checkpoint.classes) == len(checkpoint.palette) == 3
    assert open_model(path)[1].format == "checkpoint"  # what predict, eval, export and serve read
    with pytest.raises(ValueError, match="predicts 3 classes; got 2 class names"):
        deeplab.save_model(model, tmp_path / "bad.pt", classes=["a", "b"])


@pytest.mark.parametrize(("text", "expected"), [
    ("hf-hub:org/name", HubName("org/name")), ("hf-hub:org/name@v1.0", HubName("org/name", "v1.0")),
    ("hf-hub:org/name@refs/pr/3", HubName("org/name", "refs/pr/3")), (Path("hf-hub:org/name"), HubName("org/name")),
    ("org/name", None), ("deeplabv3_resnet101.coco_voc", None)])
def test_hub_names_parse(text, expected):
    assert parse_hub_name(text) == expected


@pytest.mark.parametrize("text", ["hf-hub:name", "hf-hub:a/b/c", "hf-hub:org/name@", "hf-hub:../x"])
def test_malformed_hub_names_are_refused(text):
    with pytest.raises(ValueError, match="expected hf-hub:ORG/NAME"):
        parse_hub_name(text)


def test_loading_our_files_imports_neither_transformers_nor_the_hub_client_early(saved, offline_hub):
    """`import deeplab` loads neither huggingface_hub nor transformers; from_pretrained of our own files (a folder,
    an hf-hub: name) needs huggingface_hub only, never transformers."""
    plant(offline_hub, "lab/roads", folder_files(saved))
    code = ("import sys, deeplab; early = {'huggingface_hub', 'transformers'} & set(sys.modules); "
            f"deeplab.from_pretrained({str(saved)!r}); deeplab.from_pretrained('hf-hub:lab/roads'); "
            "print(sorted(early), 'transformers' in sys.modules)")
    env = {"PATH": "", "HF_HOME": str(offline_hub.parent), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(deeplab.__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "False"]


def test_a_timm_hub_backbone_points_to_the_encoder_name_that_loads_it():
    with pytest.raises(ValueError, match=r"pretrained_backbone=hf-hub:timm/resnet18.a1_in1k is timm's ImageNet "
                                         r"checkpoint of resnet18.a1_in1k: .* model deeplabv3plus_tu-resnet18.a1_in1k "
                                         r"with pretrained_backbone=true"):
        deeplab.create_model("deeplabv3plus_tu-resnet18", pretrained_backbone="hf-hub:timm/resnet18.a1_in1k")
