"""One container for every DeepLab version: backbone -> head -> logits at the input's size."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn


def upsample_to(logits: Tensor, size: tuple[int, int] | list[int], align_corners: bool = False) -> Tensor:
    """Bilinear: the one resize rule used for every output and feature map.

    ``align_corners=False`` by default (PyTorch's convention); ``True`` reproduces the TF reference's
    ``tf.image.resize_bilinear(..., align_corners=True)`` for models that carry its weights.
    """
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


class Segmenter(nn.Module):
    """A DeepLab model.

    ``forward(x)`` returns one logits tensor, N x num_classes x H x W, at the input's size (inference,
    export). ``forward_train(x)`` returns everything the training loss needs, as a dict.

    Args:
        backbone: returns a dict of named features and declares them in ``feature_specs``.
        head: maps that dict to logits at feature resolution.
        aux_head: optional head on the ``aux`` feature.
        num_classes: number of output classes.
        output_stride: the backbone's output stride (recorded for users and checkpoints).
        align_corners: the bilinear resize of the logits to the input's size (True: the TF reference's).
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None, *,
        num_classes: int, output_stride: int, align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.align_corners = align_corners
        self.in_channels = 3  # the model's builder sets it from the spec, after adapting the first convolutions
        self.init_notes: list[str] = []  # what the builder says about the initial weights (fine-tuning, adapting)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected an N x {self.in_channels} x H x W image batch, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        return upsample_to(self.coarse_logits(x), x.shape[-2:], self.align_corners)

    def coarse_logits(self, x: Tensor) -> Tensor:
        """The logits at the network's own output resolution (``logits_stride``), before the resize to the input.

        The TF reference's multi-scale evaluation resizes these once, straight to the image
        (:class:`deeplab.inference.Predictor`); ``forward`` is this plus the resize to ``x``'s size.
        """
        self._check_input(x)
        return self.head(self.backbone(x))

    @property
    def logits_stride(self) -> int:
        """The stride of :meth:`coarse_logits`: the feature the head's logits are aligned with (the decoder's
        stride-4 ``low_level`` for v3+, else ``out`` at the output stride)."""
        return self.backbone.feature_specs[getattr(self.head, "logits_feature", "out")].stride

    def forward_train(self, x: Tensor) -> dict[str, Tensor]:
        """Logits for the loss, all at the input's size: ``"out"`` (main) and ``"aux"`` with an aux head.

        This is what a training module wrapped in DistributedDataParallel calls, so that every output
        the loss uses is computed inside the wrapped ``forward``.
        """
        self._check_input(x)
        features = self.backbone(x)
        size = x.shape[-2:]
        outputs = {"out": upsample_to(self.head(features), size, self.align_corners)}
        if self.aux_head is not None:
            outputs["aux"] = upsample_to(self.aux_head(features["aux"]), size, self.align_corners)
        return outputs

    def save_pretrained(self, folder: str | Path, *, classes: Sequence[str] | None = None,
                        palette: Sequence[Sequence[int]] | None = None, dataset: str | None = None,
                        config: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                        repo_id: str | None = None, license: str = "apache-2.0") -> Path:
        """Writes the model as the Hugging Face Hub shows one: ``config.json`` (spec, classes, palette,
        normalisation, task, training essentials, metrics), ``model.safetensors`` and a ``README.md`` model card.

        ``deeplab.from_pretrained(folder)`` reads it back; ``deeplab push`` (or huggingface_hub's
        ``upload_folder``) publishes it, after which ``hf-hub:ORG/NAME`` loads it anywhere a model name is taken.

        Args:
            folder: created if needed; the three files are replaced.
            classes, palette: class names and colours (default: those of ``dataset``, or of the class count).
            dataset: a standard dataset name for the default classes and palette (``voc``, ``cityscapes``, ...).
            config: the training config as a dict (``Config.to_dict()``); only its essentials are kept, no paths.
            metrics: evaluation results as ``deeplab eval --json`` writes them (fractions: ``miou`` ...).
            repo_id: the Hub repo it will live in (``org/name``), for the card's title and usage snippet.
            license: the card's license identifier.
        """
        from ..classes import dataset_classes
        from ..hubfolder import model_card, pretrained_config, write_model_folder

        spec = getattr(self, "spec", None)
        if spec is None:
            raise ValueError("the model has no .spec; build it with deeplab.create_model or deeplab.load_checkpoint")
        default_classes, default_palette = dataset_classes(dataset, spec.num_classes)
        record = pretrained_config(spec.to_dict(), list(classes or default_classes),
                                   [tuple(c) for c in (palette or default_palette)], training=config,
                                   metrics=metrics)
        write_model_folder(folder, record, self.state_dict(), model_card(record, repo_id=repo_id, license=license))
        return Path(folder)

    def push_to_hub(self, repo_id: str, *, private: bool = False, classes: Sequence[str] | None = None,
                    palette: Sequence[Sequence[int]] | None = None, dataset: str | None = None,
                    config: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                    license: str = "apache-2.0") -> str:
        """:meth:`save_pretrained` into a temporary folder, uploaded to the Hub repo ``repo_id`` (``org/name``,
        created if needed) with huggingface_hub's ``create_repo`` and ``upload_folder``; returns the commit URL.
        ``deeplab push`` does the same for a training run or checkpoint."""
        import tempfile

        from ..hub import upload_model_folder

        with tempfile.TemporaryDirectory(prefix="deeplab-push-") as staging:
            folder = self.save_pretrained(staging, classes=classes, palette=palette, dataset=dataset, config=config,
                                          metrics=metrics, repo_id=repo_id, license=license)
            return upload_model_folder(folder, repo_id, private=private, message=f"Upload {self.spec.name}")
