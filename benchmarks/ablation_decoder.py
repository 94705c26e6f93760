"""The decoder ablation: v3 (bilinear upsampling) against v3+ (decoder) on the same encoder and budget.

    python benchmarks/ablation_decoder.py [--encoder mobilenetv2] [--seeds 0 1 2] [--iterations 150]
        [--batch-size 8] [--bands 4 8 16] [--config configs/demo.yaml] [--set data.name=folder data.root=DIR ...]

Both models share the encoder (backbone and ASPP, same atrous rates, same output stride); the only
difference is what follows it: v3 upsamples the ASPP's class scores bilinearly, v3+ fuses them with
the stride-4 feature in its decoder. Each is trained from the same recipe (``--config``, the demo's
by default, on the embedded demo set or any dataset given with ``--set``) once per seed, then
evaluated on the val split: mIoU over all pixels and within bands of ``--bands`` pixels around the
ground truth's object boundaries (the trimap experiment of the v3+ paper, arXiv:1802.02611). The
table gives mean +- sample standard deviation over seeds. The v3+ paper reports +1.64 mIoU for the
decoder with ResNet-101 on VOC 2012 val (77.21 -> 78.85, train and eval at output stride 16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from deeplab.config import Config, load_config
from deeplab.data import eval_transforms
from deeplab.devices import resolve_device
from deeplab.engine.data import build_dataset
from deeplab.engine.train import train
from deeplab.imageio import atomic_write
from deeplab.inference import Predictor
from deeplab.metrics import boundary_band, confusion_matrix, segmentation_metrics
from deeplab.modelfile import load_checkpoint, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# encoder -> (v3 model, v3+ model, options that make the v3 encoder the v3+ one). The v3 MobileNetV2 of
# the TF reference has no atrous ASPP branches; here it gets v3+'s (6, 12, 18) so that only the decoder differs.
PAIRS = {
    "mobilenetv2": ("deeplabv3_mobilenetv2", "deeplabv3plus_mobilenetv2", ["model.atrous_rates=[6, 12, 18]"]),
    "resnet50": ("deeplabv3_resnet50", "deeplabv3plus_resnet50", []),
    "resnet101": ("deeplabv3_resnet101", "deeplabv3plus_resnet101", []),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", choices=sorted(PAIRS), default="mobilenetv2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bands", type=int, nargs="+", default=[4, 8, 16], help="trimap half-widths in pixels")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml", help="the training recipe")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe overrides, e.g. data.name=folder data.root=mydata data.crop_size=321")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "ablation_decoder")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--keep-finished", action="store_true",
                        help="score a run whose last.pt already reached --iterations instead of training it again "
                             "(continue an ablation that was stopped)")
    return parser.parse_args(argv)


def run_config(args: argparse.Namespace, model: str, extra: Sequence[str], seed: int) -> Config:
    return load_config(args.config, [
        f"model.name={model}", *extra, f"train.iterations={args.iterations}", f"train.batch_size={args.batch_size}",
        f"train.seed={seed}", f"train.eval_every={args.iterations}", "train.progress=false",
        f"train.run_dir={args.run_dir / f'{model}_seed{seed}'}", *args.overrides,
    ])


@torch.no_grad()
def evaluate_with_bands(checkpoint: Path, config: Config, bands: Sequence[int]) -> dict[str, float]:
    """mIoU over the val split and within each boundary band, at the recipe's evaluation settings."""
    device = resolve_device(config.train.device)
    model, ck = load_checkpoint(checkpoint, output_stride=config.eval.output_stride or config.model.output_stride,
                                device=device)
    dataset = build_dataset(config.data, config.data.val_split, eval_transforms(mean=ck.spec.mean, std=ck.spec.std))
    n = len(ck.classes)
    predictor = Predictor(model, num_classes=n, device=device, scales=config.eval.scales, flip=config.eval.flip)
    total = torch.zeros(n, n, dtype=torch.long)
    within = {width: torch.zeros(n, n, dtype=torch.long) for width in bands}
    for images, masks in DataLoader(dataset, batch_size=config.eval.batch_size):
        pred = predictor.logits_for_batch(images).argmax(dim=1).cpu()
        total += confusion_matrix(pred, masks, n, dataset.ignore_index)
        for width in bands:
            band = boundary_band(masks, width)
            within[width] += confusion_matrix(pred[band], masks[band], n, dataset.ignore_index)
    figures = {"miou": segmentation_metrics(total)["miou"]}
    figures.update({f"band_{width}": segmentation_metrics(cm)["miou"] for width, cm in within.items()})
    return figures


def finished(run_dir: Path, iterations: int) -> bool:
    """Whether ``run_dir`` holds a run that trained for ``iterations`` steps."""
    last = run_dir / "last.pt"
    return last.is_file() and read_checkpoint(last).step >= iterations


def mean_std(values: Sequence[float]) -> str:
    percent = [100 * v for v in values]
    spread = statistics.stdev(percent) if len(percent) > 1 else 0.0
    return f"{statistics.mean(percent):.2f} ± {spread:.2f}"


def format_table(results: dict[str, list[dict[str, float]]], labels: dict[str, str], bands: Sequence[int]) -> str:
    keys = ["miou", *(f"band_{w}" for w in bands)]
    header = ["model", "mIoU %", *(f"trimap {w} px %" for w in bands)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, runs in results.items():
        lines.append("| " + " | ".join([labels[name], *(mean_std([r[k] for r in runs]) for k in keys)]) + " |")
    (_, v3_runs), (_, plus_runs) = results.items()
    gains = [f"{100 * (statistics.mean(r[k] for r in plus_runs) - statistics.mean(r[k] for r in v3_runs)):+.2f}"
             for k in keys]
    lines.append("| " + " | ".join(["decoder gain (v3+ − v3)", *gains]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    v3, v3plus, same_encoder = PAIRS[args.encoder]
    models = {v3: same_encoder, v3plus: []}
    labels = {v3: f"v3, bilinear ({v3})", v3plus: f"v3+, decoder ({v3plus})"}
    results: dict[str, list[dict[str, float]]] = {v3: [], v3plus: []}
    config = run_config(args, v3plus, [], args.seeds[0])
    for seed in args.seeds:
        for model, extra in models.items():
            config = run_config(args, model, extra, seed)
            start = time.perf_counter()
            run_dir = Path(config.train.run_dir)
            if not (args.keep_finished and finished(run_dir, args.iterations)):
                outcome = train(config)
                if outcome.interrupted:  # Ctrl-C / SIGTERM: train saved last.pt; stop rather than score a partial run
                    print(f"interrupted during {model} seed {seed}; no table", file=sys.stderr)
                    return 130
            figures = evaluate_with_bands(run_dir / "last.pt", config, args.bands)
            figures["seconds"] = time.perf_counter() - start
            results[model].append(figures)
            print(f"{model} seed {seed}: mIoU {100 * figures['miou']:.2f}% "
                  + " ".join(f"band{w} {100 * figures[f'band_{w}']:.2f}%" for w in args.bands)
                  + f" ({figures['seconds']:.0f} s)", flush=True)
    print()
    t, d = config.train, config.data
    print(f"seeds {' '.join(map(str, args.seeds))}; each run {t.iterations} iterations at batch {t.batch_size}, "
          f"crop {d.crop_size}, LR {t.lr:g}; encoder {args.encoder}; data {d.name}/{d.val_split}; "
          f"recipe {args.config.name} {' '.join(args.overrides)}".rstrip())
    print(format_table(results, labels, args.bands))
    if args.json:
        with atomic_write(args.json, "w") as handle:
            json.dump({"argv": list(sys.argv[1:] if argv is None else argv), "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
