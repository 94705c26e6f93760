"""A model folder as the Hugging Face Hub shows it: ``config.json``, ``model.safetensors``, ``README.md``.

``Segmenter.save_pretrained`` and ``deeplab push`` write it; :mod:`deeplab.modelfile` reads it (from a
local folder or an ``hf-hub:`` name). ``config.json`` holds the model spec (everything that rebuilds the
network), the class names and palette, the input normalisation and task, the training config's
essentials (no local paths) and the evaluation metrics when known. ``README.md`` is a model card whose
YAML header is huggingface_hub's ``ModelCardData`` (library, pipeline tag, license, datasets, the metrics
in model-index form), followed by what the model is, its figures and a usage snippet.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from .hub import CARD_NAME, CONFIG_NAME, HUB_PREFIX, WEIGHTS_NAME
from .imageio import atomic_write

PRETRAINED_FORMAT = "deeplab-pretrained-1"
LIBRARY_NAME = "deeplab"
PIPELINE_TAG = "image-segmentation"
DEFAULT_LICENSE = "apache-2.0"
# The training config's essentials: enough to say how the model was trained and to evaluate it again
# (``deeplab eval`` reads the data section); local paths (data.root, run_dir, weights files) stay out.
TRAINING_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("name", "output_stride"),
    "data": ("name", "train_split", "val_split", "crop_size", "scale_min", "scale_max", "scale_step", "hflip",
             "num_classes", "ignore_index"),
    "train": ("iterations", "batch_size", "lr", "momentum", "weight_decay", "poly_power", "warmup_iterations",
              "backbone_lr_mult", "aux_weight", "amp", "seed"),
    "eval": ("output_stride", "scales", "flip", "window", "crf"),
}
# Dataset names of deeplab's config that are a user's own images, not a dataset the card's metadata can name.
_OWN_DATA = ("folder", "demo")
# Metrics of metrics_to_json (fractions) -> the model-index metric type and a readable name.
_CARD_METRICS = {"miou": ("mean_iou", "mIoU"), "pixel_accuracy": ("accuracy", "pixel accuracy"),
                 "mean_class_accuracy": ("mean_accuracy", "mean class accuracy")}


def training_essentials(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The :data:`TRAINING_KEYS` of a config dict (``Config.to_dict()``), in its own sections; None for none."""
    if not config:
        return None
    kept = {section: {key: config[section][key] for key in keys if key in config.get(section, {})}
            for section, keys in TRAINING_KEYS.items() if isinstance(config.get(section), Mapping)}
    return {section: values for section, values in kept.items() if values} or None


def pretrained_config(spec: Mapping[str, Any], classes: Sequence[str], palette: Sequence[Sequence[int]], *,
                      training: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                      ) -> dict[str, Any]:
    """The ``config.json`` record; ``spec`` is ``ModelSpec.to_dict()`` (the one source of the architecture)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        written_by = version("deeplab")
    except PackageNotFoundError:  # a source tree that was never installed
        written_by = "unknown"
    if len(classes) != len(palette):
        raise ValueError(f"{len(classes)} class names but {len(palette)} palette colours")
    return {
        "format": PRETRAINED_FORMAT, "library_name": LIBRARY_NAME, "deeplab_version": written_by,
        "model_spec": dict(spec), "model": spec["name"], "task": spec.get("task", "multiclass"),
        "num_classes": spec["num_classes"], "classes": list(classes), "palette": [list(c) for c in palette],
        "mean": list(spec["mean"]), "std": list(spec["std"]),
        "training": training_essentials(training), "metrics": dict(metrics) if metrics else None,
    }


def is_pretrained_config(config: Mapping[str, Any]) -> bool:
    return config.get("format") == PRETRAINED_FORMAT


def write_model_folder(folder: str | Path, record: Mapping[str, Any], state: Mapping[str, Tensor],
                       card: str) -> list[Path]:
    """Writes ``config.json``, ``model.safetensors`` and ``README.md`` into ``folder`` (each file atomically)."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    paths = [folder / CONFIG_NAME, folder / WEIGHTS_NAME, folder / CARD_NAME]
    with atomic_write(paths[0], "w") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    with atomic_write(paths[1]) as handle:
        handle.write(save(tensors, metadata={"format": "pt", "library": LIBRARY_NAME}))
    with atomic_write(paths[2], "w") as handle:
        handle.write(card)
    return paths


# ----------------------------------------------------------------------------- the model card


def card_metadata(record: Mapping[str, Any], *, repo_id: str | None = None, license: str = DEFAULT_LICENSE):
    """huggingface_hub's ``ModelCardData`` for a ``config.json`` record: the YAML header of ``README.md``."""
    from huggingface_hub import EvalResult, ModelCardData

    training = record.get("training") or {}
    data = training.get("data", {})
    dataset = data.get("name")
    model_name = repo_id.split("/")[-1] if repo_id else record["model"]
    results = []
    for key, (metric_type, metric_name) in _CARD_METRICS.items():
        value = (record.get("metrics") or {}).get(key)
        if dataset and isinstance(value, int | float) and math.isfinite(value):
            results.append(EvalResult(task_type=PIPELINE_TAG, task_name="Semantic segmentation",
                                      dataset_type=dataset, dataset_name=dataset,
                                      dataset_split=data.get("val_split", "val"), metric_type=metric_type,
                                      metric_name=metric_name, metric_value=round(100 * float(value), 2)))
    tags = ["deeplab", "semantic-segmentation", "pytorch", record["model"]]
    public = dataset not in (None, *_OWN_DATA)
    return ModelCardData(library_name=LIBRARY_NAME, pipeline_tag=PIPELINE_TAG, license=license,
                         datasets=[dataset] if public else None, tags=tags, model_name=model_name,
                         eval_results=results or None)


def model_card(record: Mapping[str, Any], *, repo_id: str | None = None, license: str = DEFAULT_LICENSE) -> str:
    """``README.md``: the YAML metadata, then what the model is, how it was trained and scored, and how to use it."""
    from huggingface_hub import ModelCard

    metadata = card_metadata(record, repo_id=repo_id, license=license)
    spec = record["model_spec"]
    name = f"{HUB_PREFIX}{repo_id}" if repo_id else "path/to/this/folder"
    lines = [f"# {metadata.model_name}", "",
             f"A `{record['model']}` semantic segmentation model ({record['task']}, {record['num_classes']} classes, "
             f"output stride {spec['output_stride']}) for [deeplab](https://pypi.org/project/deeplab/), DeepLab "
             "v1/v2/v3/v3+ in PyTorch. `config.json` holds its full spec, classes, palette and input normalisation "
             f"(mean {_floats(spec['mean'])}, std {_floats(spec['std'])} on the 0..1 scale); `model.safetensors` its "
             "weights.", ""]
    lines += _training_lines(record.get("training")) + _metric_lines(record.get("metrics"))
    lines += ["## Usage", "", "```python", "import deeplab", "from deeplab.imageio import read_image", "",
              f'model = deeplab.from_pretrained("{name}")  # eval mode; .spec says what it is',
              f'predictor = deeplab.Predictor.from_file("{name}")  # classes, palette, normalisation',
              'mask = predictor.predict(read_image("photo.jpg"))  # H x W class indices',
              "```", "",
              "```bash", f"deeplab predict --pretrained {name} photos/ --out masks/", "```", "",
              "## Classes", "", ", ".join(f"{i} {c}" for i, c in enumerate(record["classes"])), ""]
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _training_lines(training: Mapping[str, Any] | None) -> list[str]:
    if not training:
        return ["## Training", "", "Not recorded (the weights were saved without a training config).", ""]
    rows = [f"| {section}.{key} | {value} |" for section, values in training.items() for key, value in values.items()]
    return ["## Training", "", "| setting | value |", "|---|---|", *rows, ""]


def _metric_lines(metrics: Mapping[str, Any] | None) -> list[str]:
    if not metrics:
        return ["## Evaluation", "", "No evaluation recorded.", ""]
    rows = [f"| {label} | {100 * metrics[key]:.2f} |" for key, (_, label) in _CARD_METRICS.items()
            if isinstance(metrics.get(key), int | float)]
    per_class = metrics.get("per_class_iou") or {}
    rows += [f"| IoU {name} | {'—' if iou is None else f'{100 * iou:.2f}'} |" for name, iou in per_class.items()]
    return ["## Evaluation", "", "| metric | % |", "|---|---|", *rows, ""]
