"""timm's ImageNet weights for a ``tu-`` model's encoder: timm's own loader and the Hugging Face Hub cache, or a file.

The builders make the encoder with random weights; this module, above them, fills it. ``True`` builds timm's
``features_only`` network once more with ``pretrained=True`` (timm downloads or finds the file in the Hub cache,
applies its checkpoint filters and adapts the first convolution to ``in_chans``) and copies it in strictly: the
two networks have the same layers, so every tensor must match. A path is read by :mod:`deeplab.torchfile` and
loaded strictly (the classifier's tensors left out).
"""

from __future__ import annotations

from .timm_encoder import TimmEncoder, create_features_model, load_timm_file, timm_weights_problem
from .weights import load_backbone_state


def load_timm_weights(encoder: TimmEncoder, source: bool | str, *, output_stride: int, in_channels: int) -> None:
    """Loads ImageNet weights into ``encoder``: timm's (``True``) or a file's (a path or URL)."""
    what = f"ImageNet {encoder.encoder}"
    if isinstance(source, str):
        load_timm_file(encoder.body, source, what=what)
        return
    try:
        loaded = create_features_model(encoder.encoder, output_stride=output_stride, in_channels=in_channels,
                                       pretrained=True)
    except (OSError, RuntimeError) as err:  # no network and no cached file; a cached file that does not fit
        raise RuntimeError(timm_weights_problem(encoder.encoder, err)) from err
    load_backbone_state(encoder.body, loaded.state_dict(), what=what, source=f"timm's cache ({_cached_at(encoder)})")


def _cached_at(encoder: TimmEncoder) -> str:
    import timm

    cfg = timm.get_pretrained_cfg(encoder.encoder)
    return (cfg.hf_hub_id or cfg.url or "?") if cfg is not None else "?"
