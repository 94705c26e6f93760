"""The model table: name, version, backbone, parameters and multiply-adds against the papers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .complexity import count_macs, count_parameters
from .published import PUBLISHED_WEIGHTS, TF_BACKBONES
from .timm_encoder import EncoderRow
from .zoo import build_model, list_models, model_entry

OUTPUT_STRIDES = (16, 8)


@dataclass(frozen=True)
class ModelRow:
    name: str
    version: str
    backbone: str
    params: int
    macs: dict[int, int]  # output stride -> multiply-adds at the given size
    paper_macs: dict[int, float]  # output stride -> GMACs reported by the paper


def model_rows(*, macs: bool = False, size: int = 513, num_classes: int = 21) -> list[ModelRow]:
    """One row per registered model; models are built on the meta device, so nothing is computed."""
    rows = []
    for name in list_models():
        entry = model_entry(name)
        counts = {}
        with torch.device("meta"):
            model = build_model(name, num_classes=num_classes)
            if macs:
                for stride in OUTPUT_STRIDES:
                    counts[stride] = count_macs(build_model(name, num_classes=num_classes, output_stride=stride),
                                                size)
        rows.append(ModelRow(name, entry.version, entry.backbone, count_parameters(model), counts,
                             dict(entry.paper_macs)))
    return rows


def format_model_table(rows: list[ModelRow], *, size: int = 513) -> str:
    """A Markdown table (it reads well in a terminal and pastes into the README)."""
    header = ["model", "version", "backbone", "params (M)"]
    with_macs = bool(rows and rows[0].macs)
    if with_macs:
        for stride in OUTPUT_STRIDES:
            header += [f"GMACs OS{stride}", f"paper OS{stride}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.name, row.version, row.backbone, f"{row.params / 1e6:.2f}"]
        if with_macs:
            for stride in OUTPUT_STRIDES:
                paper = row.paper_macs.get(stride)
                cells += [f"{row.macs[stride] / 1e9:.2f}", f"{paper:.2f}" if paper else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    if with_macs:
        lines.append(f"\nMultiply-adds of conv and linear weights at {size}x{size}, 21 classes, aux head excluded. "
                     "The papers count TensorFlow graphs (SAME padding, tf-slim ResNet, 3-conv stem), "
                     "hence higher figures for ResNet.")
    return "\n".join(lines)


def format_published_table() -> str:
    """The published weights that load by name (``create_model(..., weights=NAME)``, ``--pretrained NAME``), with
    the published mIoU and its protocol, and the TF zoo's ImageNet checkpoints (``pretrained_backbone=NAME``)."""
    lines = ["| published weights | model | classes | published mIoU (protocol) | what they are |",
             "|---|---|---|---|---|"]
    for weights in sorted(PUBLISHED_WEIGHTS.values(), key=lambda w: w.name):
        lines.append(f"| {weights.name} | {weights.model} | {len(weights.classes)} | {weights.results_text()} "
                     f"| {weights.description} |")
    lines += ["", "| pretrained_backbone | for models | what it is |", "|---|---|---|"]
    for backbone in sorted(TF_BACKBONES.values(), key=lambda b: b.name):
        lines.append(f"| {backbone.name} | {', '.join(backbone.models)} | {backbone.description} |")
    lines.append("\nThe TF model zoo's figures are the authors' (g3doc/model_zoo.md); see docs/tf_models.md for the "
                 "commands that evaluate them.")
    return "\n".join(lines)


def format_encoder_table(rows: list[EncoderRow]) -> str:
    """The timm encoders (``deeplab models --encoders``): a Markdown table and how to name a model on one."""
    lines = ["| timm encoder | family | output stride 8 / 16 | ImageNet weights |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.name} | {row.family} | {'yes' if row.dilates else 'no (32 only)'} "
                     f"| {'yes' if row.pretrained else 'no'} |")
    lines.append(f"\n{len(rows)} timm models, {sum(r.dilates for r in rows)} of them at output stride 8 and 16 (one "
                 "model per family built to check). A model on one: deeplabv3plus_tu-NAME or deeplabv3_tu-NAME; "
                 "pretrained_backbone=true loads timm's ImageNet weights. The v3+ decoder needs a stride-4 feature.")
    return "\n".join(lines)
