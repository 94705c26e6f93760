"""Our side of the conformance check: the reference's checkpoints through ``deeplab import-tf``, against its outputs.

Run with the project's venv on the folder ``tf_reference.py`` wrote: ``python conformance/compare.py OUT``.
For each variant it checks that

1. ``deeplab.tfcheckpoint.read_tf_checkpoint`` returns exactly what TensorFlow's own reader returned
   (``variables.npz``): the same names, dtypes, shapes and bytes;
2. ``deeplab import-tf`` (the CLI, as a user runs it) turns the checkpoint into a deeplab checkpoint;

and for each input size that

3. the model from ``deeplab.load_checkpoint``, fed the PNG normalised as the checkpoint's spec says, in float32,
   gives logits within ``max|ours - ref| <= 1e-4 * max|ref|`` of the reference's (float64 is shown as well, to
   tell arithmetic error from a difference in the network), and its argmax agrees on >= 99.9% of pixels;
4. ``deeplab predict --checkpoint`` writes a mask equal to the reference's argmax on >= 99.9% of pixels;

and for each multi-scale case (``cases.MULTI_SCALE_CASES``) that

5. ``Predictor.from_file`` on the imported checkpoint at output stride 8 with the VOC protocol's options (scales
   0.5:0.25:1.75, flip, ``pad_to`` where the case pads; what ``deeplab eval`` builds) gives averaged class
   probabilities within 1e-4 of ``predict_labels_multi_scale``'s, and their argmax agrees on >= 99.9% of pixels.

It prints a table, writes ``OUT/results.json`` and exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cases
import numpy as np
import torch
from PIL import Image


@dataclass
class SizeResult:
    variant: str
    size: str
    max_diff: float = float("nan")
    max_ref: float = float("nan")
    ratio: float = float("nan")
    ratio_f64: float = float("nan")
    agree_model: float = float("nan")
    agree_predict: float = float("nan")
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (not self.errors and self.ratio <= cases.MAX_RELATIVE_DIFFERENCE
                and self.agree_model >= cases.MIN_ARGMAX_AGREEMENT
                and self.agree_predict >= cases.MIN_ARGMAX_AGREEMENT)


@dataclass
class MultiScaleResult:
    """One multi-scale + flip case: our Predictor (what ``deeplab eval`` runs) against predict_labels_multi_scale."""

    variant: str
    case: str
    max_diff: float = float("nan")  # of the averaged class probabilities
    agree: float = float("nan")
    max_diff_resized: float = float("nan")  # the same when each pass's input-size logits are resized (before #28)
    runtime: str = ""
    reference_steps: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (not self.errors and self.max_diff <= cases.MAX_PROBABILITY_DIFFERENCE
                and self.agree >= cases.MIN_ARGMAX_AGREEMENT)


def compare_multi_scale(folder: Path) -> list[MultiScaleResult]:
    """Each multi-scale case of ``folder``: the imported checkpoint at the eval output stride through
    ``Predictor.from_file`` with the protocol's options in fp32 (the runtime chosen as for ``deeplab eval``)."""
    from deeplab.imageio import read_image
    from deeplab.inference import Predictor

    results = []
    for size, padded in cases.MULTI_SCALE_CASES:
        result = MultiScaleResult(folder.name, cases.multi_scale_name(size, padded))
        results.append(result)
        sub = folder / result.case
        try:
            predictor = Predictor.from_file(folder / "imported.pt", output_stride=cases.EVAL_OUTPUT_STRIDE,
                                            scales=cases.EVAL_SCALES, flip=True, pad_to=padded, precision="fp32")
            result.runtime, result.reference_steps = predictor.runtime.runtime, predictor.uses_reference_steps
            reference = np.load(sub / "probabilities.npy").astype(np.float64)
            ours = predictor.predict_logits(read_image(sub / "image.png")).softmax(dim=0).permute(1, 2, 0).numpy()
            if ours.shape != reference.shape:
                raise ValueError(f"probabilities {ours.shape}, the reference's {reference.shape}")
            result.max_diff = float(np.abs(ours - reference).max())
            result.agree = float((ours.argmax(-1) == np.load(sub / "labels.npy")).mean())
            # for comparison: the model as a plain callable (an export's view) gets each pass's input-size logits
            resized = Predictor(predictor.model.forward, num_classes=predictor.num_classes, spec=predictor.spec,
                                options=predictor.options)
            old = resized.predict_logits(read_image(sub / "image.png")).softmax(dim=0).permute(1, 2, 0).numpy()
            result.max_diff_resized = float(np.abs(old - reference).max())
        except Exception as err:  # noqa: BLE001 (a failure is a failed row; the other cases still run)
            result.errors.append(f"{type(err).__name__}: {err}")
    return results


def multi_scale_table(rows: list[MultiScaleResult]) -> str:
    head = ("| variant | case (OS 8, scales 0.5:0.25:1.75, flip) | max abs diff of averaged probabilities (<= 1e-4) "
            "| argmax agreement | runtime | reference's steps | the same, input-size logits resized | result |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r.variant} | {r.case} | {r.max_diff:.2e} | {r.agree:.4%} | {r.runtime} | "
                     f"{'yes' if r.reference_steps else 'no'} | {r.max_diff_resized:.2e} | "
                     f"{'pass' if r.passed else 'FAIL'} |")
    return "\n".join(lines)


def deeplab_cli() -> list[str]:
    """The ``deeplab`` command of the running interpreter's environment (what a user of that venv types)."""
    script = Path(sys.executable).with_name("deeplab")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "deeplab"]


def run_cli(*args: str) -> None:
    done = subprocess.run([*deeplab_cli(), *args], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"deeplab {args[0]} exited with {done.returncode}: {' | '.join(tail)}")


def check_reader(folder: Path) -> list[str]:
    """Differences between our TF checkpoint reader and TensorFlow's on this checkpoint (empty: identical)."""
    from deeplab.tfcheckpoint import read_tf_checkpoint

    with np.load(folder / "variables.npz") as stored:
        reference = {name: stored[name] for name in stored.files}
    ours = read_tf_checkpoint(folder / "model.ckpt")
    problems = []
    if sorted(ours) != sorted(reference):
        missing, extra = sorted(set(reference) - set(ours)), sorted(set(ours) - set(reference))
        problems.append(f"names differ: missing {missing[:5]}, extra {extra[:5]}")
    for name in sorted(set(ours) & set(reference)):
        a, b = np.asarray(ours[name]), reference[name]
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            problems.append(f"{name}: ours {a.dtype}{list(a.shape)} != TF's {b.dtype}{list(b.shape)} or values differ")
    return problems


def model_logits(model: torch.nn.Module, image: torch.Tensor, mean, std, dtype: torch.dtype) -> np.ndarray:
    """H x W x C logits of ``model`` for a uint8 3 x H x W image, normalised as the spec says, in ``dtype``."""
    x = image.to(dtype).unsqueeze(0) / 255.0
    x = (x - torch.tensor(mean, dtype=dtype).view(1, 3, 1, 1)) / torch.tensor(std, dtype=dtype).view(1, 3, 1, 1)
    with torch.inference_mode():
        out = model.to(dtype)(x)
    return out[0].permute(1, 2, 0).double().numpy()


def compare_variant(folder: Path, use_f64: bool) -> tuple[list[str], list[SizeResult]]:
    from deeplab import load_checkpoint
    from deeplab.imageio import read_image

    variant = folder.name
    results = [SizeResult(variant, cases.size_name(size)) for size in cases.SIZES]
    try:
        reader_problems = check_reader(folder)
    except Exception as err:  # noqa: BLE001 (report any failure of the reader as a failed check, keep going)
        reader_problems = [f"read_tf_checkpoint failed: {type(err).__name__}: {err}"]
    imported = folder / "imported.pt"
    try:
        run_cli("import-tf", str(folder / "model.ckpt"), "--out", str(imported))
        model, checkpoint = load_checkpoint(imported)
    except Exception as err:  # noqa: BLE001
        for result in results:
            result.errors.append(f"{type(err).__name__}: {err}")
        return reader_problems, results
    spec = checkpoint.spec
    for result in results:
        sub = folder / result.size
        reference = np.load(sub / "logits.npy").astype(np.float64)
        labels = np.load(sub / "labels.npy")
        image = read_image(sub / "image.png")
        try:
            ours = model_logits(model, image, spec.mean, spec.std, torch.float32)
            if ours.shape != reference.shape:
                raise ValueError(f"logits {ours.shape}, the reference's {reference.shape}")
            result.max_diff = float(np.abs(ours - reference).max())
            result.max_ref = float(np.abs(reference).max())
            result.ratio = result.max_diff / result.max_ref
            result.agree_model = float((ours.argmax(-1) == labels).mean())
            if use_f64:
                ours64 = model_logits(model, image, spec.mean, spec.std, torch.float64)
                result.ratio_f64 = float(np.abs(ours64 - reference).max()) / result.max_ref
                model.float()
            predicted = sub / "predict"
            shutil.rmtree(predicted, ignore_errors=True)
            run_cli("predict", "--checkpoint", str(imported), str(sub / "image.png"), "--out", str(predicted))
            mask = np.asarray(Image.open(predicted / "image.png"))
            if mask.shape != labels.shape:
                raise ValueError(f"deeplab predict's mask is {mask.shape}, the reference's {labels.shape}")
            result.agree_predict = float((mask == labels).mean())
        except Exception as err:  # noqa: BLE001
            result.errors.append(f"{type(err).__name__}: {err}")
    return reader_problems, results


def table(rows: list[SizeResult], readers: dict[str, list[str]]) -> str:
    head = ("| variant | size | max abs diff | max abs ref | ratio (<= 1e-4) | ratio float64 | argmax model "
            "| argmax `deeplab predict` | TF reader | result |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        reader = "identical" if not readers[r.variant] else "DIFFERS"
        lines.append(f"| {r.variant} | {r.size} | {r.max_diff:.3g} | {r.max_ref:.3g} | {r.ratio:.2e} | "
                     f"{r.ratio_f64:.2e} | {r.agree_model:.4%} | {r.agree_predict:.4%} | {reader} | "
                     f"{'pass' if r.passed and not readers[r.variant] else 'FAIL'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder tf_reference.py wrote")
    parser.add_argument("--variants", nargs="+", choices=sorted(cases.VARIANTS), default=list(cases.VARIANTS))
    parser.add_argument("--no-float64", dest="float64", action="store_false",
                        help="skip the float64 run that separates arithmetic error from network differences")
    args = parser.parse_args(argv)
    missing = [v for v in args.variants if not (args.out / v / "meta.json").is_file()]
    if missing:
        print(f"compare: {args.out} has no reference outputs for {', '.join(missing)} "
              "(run conformance/tf_reference.py first)", file=sys.stderr)
        return 2
    rows: list[SizeResult] = []
    readers: dict[str, list[str]] = {}
    for variant in args.variants:
        readers[variant], results = compare_variant(args.out / variant, args.float64)
        rows.extend(results)
        for problem in readers[variant][:10]:
            print(f"{variant}: TF reader: {problem}")
        for r in results:
            for error in r.errors:
                print(f"{variant} {r.size}: {error}")
    multi: list[MultiScaleResult] = []
    for variant in args.variants:
        if variant in cases.MULTI_SCALE_VARIANTS:
            multi.extend(compare_multi_scale(args.out / variant))
    for r in multi:
        for error in r.errors:
            print(f"{r.variant} {r.case}: {error}")
    text = table(rows, readers) + ("\n\n" + multi_scale_table(multi) if multi else "")
    print(text)
    (args.out / "results.json").write_text(json.dumps(
        {"rows": [asdict(r) | {"passed": r.passed} for r in rows], "reader": readers,
         "multi_scale": [asdict(r) | {"passed": r.passed} for r in multi]}, indent=1) + "\n")
    (args.out / "table.md").write_text(text + "\n")
    failed = any(not r.passed for r in [*rows, *multi]) or any(readers.values())
    print("conformance:", "FAILED" if failed else "passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
