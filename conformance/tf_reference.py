"""The reference's side of the conformance check: the authors' DeepLab graphs with random weights, and their outputs.

Run with the TF venv (``.venv-tf/bin/python conformance/tf_reference.py OUT``) and the reference code in
``DEEPLAB_TF_REFERENCE`` (a tensorflow/models ``research`` folder). For each variant it builds the graph with the
reference's own ``model.predict_labels`` (logits resized to the input by its own ``align_corners=True`` resize),
gives every variable a seeded random value, and writes to ``OUT/<variant>/``:

- ``model.ckpt.index`` / ``model.ckpt.data-*``: the TF checkpoint (what ``deeplab import-tf`` reads);
- ``variables.npz``: every entry as TensorFlow's own checkpoint reader returns it (to check our reader against);
- ``meta.json``: the settings, seeds and versions;
- ``<H>x<W>/image.png`` (the random uint8 input, lossless), ``logits.npy`` (H x W x C float32, input size),
  ``labels.npy`` (H x W, the reference's argmax) and, with ``--dump REGEX``, ``tensors.npz`` (matching graph tensors);
- for ``cases.MULTI_SCALE_VARIANTS``, ``ms_flip_<H>x<W>[_pad<H>x<W>]/``: the reference's
  ``predict_labels_multi_scale`` (the zoo's VOC protocol) on that image: ``image.png``, ``probabilities.npy``
  (the averaged softmax, H x W x C) and ``labels.npy``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import zlib
from pathlib import Path

import cases
import numpy as np
import tf_compat


def random_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A random value for one variable; BatchNorm statistics are drawn here and recalibrated by ``calibrate``.

    Convolutions are He-scaled (fan-in of one output); BatchNorm gets gamma, beta and moving statistics that all
    differ from their identity values, so the check covers how every one of them is applied.
    """
    leaf = name.rsplit("/", 1)[-1]
    if leaf in ("weights", "pointwise_weights"):
        fan_in = int(np.prod(shape[:-1]))
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    if leaf == "depthwise_weights":  # [kh, kw, channels, multiplier]: one output sees kh*kw inputs
        return rng.normal(0.0, np.sqrt(2.0 / (shape[0] * shape[1])), shape)
    if leaf == "biases":
        return rng.normal(0.0, 0.1, shape)
    if leaf == "moving_mean":
        return rng.normal(0.0, 0.2, shape)
    if leaf == "moving_variance":
        return rng.uniform(0.5, 2.0, shape)
    if leaf == "gamma":
        # The last BatchNorm of a residual branch gets a small gamma, as in trained networks: otherwise a random
        # deep residual network is chaotic and amplifies float32 rounding (in TF as in ours) past 1e-4.
        last = re.search(r"/(conv3|separable_conv3_pointwise|project)/BatchNorm/gamma$", name)
        return rng.uniform(0.05, 0.2, shape) if last else rng.uniform(0.5, 1.0, shape)
    if leaf == "beta":
        return rng.normal(0.0, 0.1, shape)
    raise ValueError(f"no random value defined for variable {name} {list(shape)}")


def batch_norm_waves(graph) -> list[list]:
    """The graph's BatchNorm ops grouped so that no op depends on another of its own group or a later one."""
    below: dict[str, int] = {}  # op name -> bit set of the BatchNorm ops it depends on (itself included)
    depth: dict[int, int] = {}
    norms = []
    for op in graph.get_operations():  # creation order is a topological order
        bits = 0
        for tensor in op.inputs:
            bits |= below.get(tensor.op.name, 0)
        for control in op.control_inputs:
            bits |= below.get(control.name, 0)
        if op.type.startswith("FusedBatchNorm"):
            index = len(norms)
            depth[index] = 1 + max((depth[i] for i in range(index) if bits >> i & 1), default=0)
            norms.append(op)
            bits |= 1 << index
        below[op.name] = bits
    waves: list[list] = [[] for _ in range(max(depth.values(), default=0))]
    for index, op in enumerate(norms):
        waves[depth[index] - 1].append(op)
    return waves


def _nearest_norms(tensors: list) -> set:
    """The BatchNorm ops that ``tensors`` depend on with no other BatchNorm in between (what to feed)."""
    found, seen, stack = set(), set(), [t.op for t in tensors]
    while stack:
        for tensor in stack.pop().inputs:
            op = tensor.op
            if op.type.startswith("FusedBatchNorm"):
                found.add(op)
            elif op not in seen:
                seen.add(op)
                stack.append(op)
    return found


def calibrate(graph, session, feed, values: dict[str, np.ndarray], rng: np.random.Generator) -> int:
    """Redraws every BatchNorm's moving statistics around the statistics of its actual input on this image.

    Independent draws (the defaults of ``random_value``) make 100 layers either fade or blow up; here each
    BatchNorm gets mean + 0.3 std * N(0, 1) and var * U(0.5, 2) of its input, so every layer's output stays
    O(1) and keeps its spatial variation, while the statistics still differ from the true ones (and from 0 / 1).
    Layers are set wave by wave in dependency order; each wave feeds the earlier waves' outputs (computed
    here from their new statistics), so TensorFlow runs only the layers in between. Returns the wave count.
    """
    by_name = {v.op.name: v for v in graph.get_collection("variables")}
    outputs = {}  # BatchNorm op -> its output under the new statistics
    waves = batch_norm_waves(graph)
    for wave in waves:
        wanted = [op.inputs[0] for op in wave]
        fed = {norm.outputs[0]: outputs[norm] for norm in _nearest_norms(wanted)}
        inputs = session.run(wanted, {**feed, **fed})
        for op, x in zip(wave, inputs, strict=True):
            scope = op.name.rsplit("/", 1)[0]
            axes = tuple(range(x.ndim - 1))
            mean, var = x.mean(axis=axes, dtype=np.float64), x.var(axis=axes, dtype=np.float64)
            if x.size == x.shape[-1]:  # one value per channel (image pooling): its spread over channels instead
                var = np.full_like(var, x.var(dtype=np.float64))
            # A channel (almost) constant on this image must not get a tiny variance that another image amplifies.
            var = np.maximum(var, 0.1 * var.mean() + 1e-3)
            stats = {"moving_mean": mean + 0.1 * np.sqrt(var) * rng.normal(size=mean.shape),
                     "moving_variance": var * rng.uniform(0.5, 2.0, var.shape)}
            for leaf, value in stats.items():
                variable = by_name[f"{scope}/{leaf}"]
                values[variable.op.name] = value.astype(variable.dtype.as_numpy_dtype)
                variable.load(values[variable.op.name], session)
            gamma, beta = values[f"{scope}/gamma"], values[f"{scope}/beta"]
            scale = gamma / np.sqrt(values[f"{scope}/moving_variance"] + op.get_attr("epsilon"))
            outputs[op] = ((x - values[f"{scope}/moving_mean"]) * scale + beta).astype(x.dtype)
    return len(waves)


def _flags(variant: str) -> None:
    from deeplab import common  # the reference's

    flags = common.FLAGS
    if not flags.is_parsed():
        flags(["tf_reference"])  # defaults of common.py; never our own argv
    options = cases.VARIANTS[variant]
    flags.model_variant = variant
    flags.decoder_output_stride = [str(s) for s in options["decoder_output_stride"] or []] or None


def build(variant: str, size: tuple[int, int]):
    """The reference graph for one variant and input size: (graph, image placeholder, logits, labels)."""
    import tensorflow as tf

    from deeplab import common, model

    tf1 = tf.compat.v1
    _flags(variant)
    options = cases.VARIANTS[variant]
    graph = tf1.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [1, *size, 3], name="ImageTensor")
        model_options = common.ModelOptions(
            outputs_to_num_classes={common.OUTPUT_TYPE: cases.NUM_CLASSES}, crop_size=list(size),
            atrous_rates=options["atrous_rates"], output_stride=options["output_stride"])
        predictions = model.predict_labels(images, model_options, image_pyramid=None)
        labels = predictions[common.OUTPUT_TYPE]
        # predict_labels takes the argmax of the logits it resized to the input (prediction_with_upsampled_logits,
        # the default); that resized tensor is the argmax's input.
        logits = labels.op.inputs[0]
        if logits.shape.as_list() != [1, *size, cases.NUM_CLASSES]:
            raise RuntimeError(f"{variant} {size}: unexpected logits {logits.shape} (argmax input)")
    return graph, images, logits, labels


def build_multi_scale(variant: str, crop: tuple[int, int]):
    """The reference's ``predict_labels_multi_scale`` for one variant on a ``crop``-sized (padded) input, with the
    zoo's VOC protocol (``cases.EVAL_*``, flipped images added): (graph, image placeholder, averaged softmax
    probabilities, labels)."""
    import tensorflow as tf

    from deeplab import common, model

    tf1 = tf.compat.v1
    _flags(variant)
    graph = tf1.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [1, *crop, 3], name="ImageTensor")
        model_options = common.ModelOptions(  # eval.py's: crop_size is the eval crop the image is padded to
            outputs_to_num_classes={common.OUTPUT_TYPE: cases.NUM_CLASSES}, crop_size=list(crop),
            atrous_rates=cases.eval_atrous_rates(variant), output_stride=cases.EVAL_OUTPUT_STRIDE)
        predictions = model.predict_labels_multi_scale(images, model_options, eval_scales=cases.EVAL_SCALES,
                                                       add_flipped_images=True)
        labels = predictions[common.OUTPUT_TYPE]
        probabilities = labels.op.inputs[0]  # the mean of every pass's softmax, the argmax's input
        if probabilities.shape.as_list() != [1, *crop, cases.NUM_CLASSES]:
            raise RuntimeError(f"{variant} {crop}: unexpected probabilities {probabilities.shape} (argmax input)")
    return graph, images, probabilities, labels


def run_multi_scale(variant: str, folder: Path, variables: dict[str, np.ndarray], report: dict) -> None:
    """The multi-scale + flip cases (``cases.MULTI_SCALE_CASES``) with the variant's variables: writes
    ``<case>/image.png`` (unpadded), ``probabilities.npy`` (H x W x C, cropped to the image) and ``labels.npy``."""
    import tensorflow as tf
    from deeplab.core import feature_extractor

    tf1 = tf.compat.v1
    for size, padded in cases.MULTI_SCALE_CASES:
        started = time.perf_counter()
        crop = padded or size
        graph, images, probabilities, labels = build_multi_scale(variant, crop)
        image = random_image(size)
        mean_pixel = np.asarray(feature_extractor.mean_pixel(variant), np.float32)
        fed = np.broadcast_to(mean_pixel, (*crop, 3)).copy()  # eval.py pads with the mean pixel
        fed[: size[0], : size[1]] = image
        with graph.as_default(), tf1.Session(graph=graph, config=session_config()) as session:
            restore(graph, session, variables, report["checkpoint"])
            probs, labels_value = session.run([probabilities, labels], {images: fed[None]})
            png = session.run(tf.io.encode_png(image))
        probs, labels_value = probs[0, : size[0], : size[1]], labels_value[0, : size[0], : size[1]]
        name = cases.multi_scale_name(size, padded)
        sub = folder / name
        sub.mkdir(exist_ok=True)
        (sub / "image.png").write_bytes(png)
        np.save(sub / "probabilities.npy", probs)
        np.save(sub / "labels.npy", labels_value)
        top = np.sort(probs, axis=-1)
        report.setdefault("multi_scale", {})[name] = {
            "classes_present": int(len(np.unique(labels_value))), "max_probability": float(probs.max()),
            "near_ties": float((top[..., -1] - top[..., -2] <= 2 * cases.MAX_PROBABILITY_DIFFERENCE).mean()),
            "seconds": round(time.perf_counter() - started, 1)}
        print(f"{variant} {name}: {report['multi_scale'][name]}", flush=True)


def restore(graph, session, variables: dict[str, np.ndarray], checkpoint: str) -> None:
    """Loads the variant's checkpoint into ``graph`` (one run, where loading variable by variable re-prunes a graph of
    12 networks each time), after checking that it holds exactly those variables."""
    import tensorflow as tf

    graph_vars = graph.get_collection("variables")
    if sorted(v.op.name for v in graph_vars) != sorted(variables):
        raise RuntimeError("the multi-scale graph holds other variables than the single-scale one")
    tf.compat.v1.train.Saver(graph_vars).restore(session, checkpoint)


def assign_random(graph, session, variables: dict[str, np.ndarray] | None, rng: np.random.Generator
                  ) -> dict[str, np.ndarray]:
    """Gives every global variable a value (drawn now, or the given ones) and returns them all."""
    values = {} if variables is None else variables
    graph_vars = sorted(graph.get_collection("variables"), key=lambda v: v.op.name)
    names = [v.op.name for v in graph_vars]
    if variables is not None and sorted(variables) != names:
        raise RuntimeError("graphs of one variant at two sizes hold different variables")
    for var in graph_vars:
        name = var.op.name
        if variables is None:
            values[name] = random_value(name, tuple(var.shape.as_list()), rng).astype(var.dtype.as_numpy_dtype)
        var.load(values[name], session)
    return values


def session_config():
    """Sessions run the graph as written, op by op: Grappler's rewrites (folding BatchNorm into convolutions,
    constant folding) would be re-run for every new feed/fetch signature of the calibration (minutes for
    Xception-65) and make the reference's arithmetic depend on which rewrites happened to apply."""
    import tensorflow as tf

    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config


def random_image(size: tuple[int, int]) -> np.ndarray:
    """A seeded uint8 image with structure at several scales: per-pixel noise plus blobs of 4, 16 and 48 pixels
    (what multi-scale evaluation is about: a structure's response changes with the scale it is seen at)."""
    rng = np.random.default_rng([cases.SEED, *size])
    image = np.zeros((*size, 3))
    for cell, weight in ((1, 0.6), (4, 0.8), (16, 1.0), (48, 1.0)):
        coarse = rng.normal(size=(-(-size[0] // cell), -(-size[1] // cell), 3))
        image += weight * np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[: size[0], : size[1]]
    image = (image - image.mean()) / (3 * image.std()) * 127.5 + 127.5
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def dump_tensors(graph, session, feed, pattern: str) -> dict[str, np.ndarray]:
    """Values of every float tensor whose op name matches ``pattern`` (to find the first layer that differs)."""
    wanted = [op.outputs[0] for op in graph.get_operations()
              if re.search(pattern, op.name) and op.outputs and op.outputs[0].dtype.is_floating
              and op.type not in ("VariableV2", "VarHandleOp", "Const", "Identity", "ReadVariableOp")]
    return dict(zip([t.op.name for t in wanted], session.run(wanted, feed), strict=True))


def top2_gap(logits: np.ndarray) -> dict[str, float]:
    """The gap between the best and second-best logit per pixel, relative to max|logit|: its median, and the
    share of pixels where it is within the tolerance (their argmax may flip under an allowed difference)."""
    top = np.sort(logits, axis=-1)
    gap = (top[..., -1] - top[..., -2]) / np.abs(logits).max()
    return {"top2_gap_median": float(np.median(gap)),
            "near_ties": float((gap <= 2 * cases.MAX_RELATIVE_DIFFERENCE).mean())}


def run_variant(variant: str, out: Path, dump: str | None) -> dict:
    import tensorflow as tf

    tf1 = tf.compat.v1
    folder = out / variant
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cases.SEED, zlib.crc32(variant.encode())])
    variables = None
    report = {"variant": variant, "options": cases.VARIANTS[variant], "seed": cases.SEED, "num_classes":
              cases.NUM_CLASSES, "tensorflow": tf.__version__, "sizes": {}}
    for size in cases.SIZES:
        started = time.perf_counter()
        graph, images, logits, labels = build(variant, size)
        with graph.as_default(), tf1.Session(graph=graph, config=session_config()) as session:
            drawing = variables is None
            variables = assign_random(graph, session, variables, rng)
            image = random_image(size)
            feed = {images: image[None].astype(np.float32)}
            if drawing:  # calibrated on the first size's image; the other size shows the values carry over
                report["calibration"] = {"size": cases.size_name(size),
                                         "waves": calibrate(graph, session, feed, variables, rng)}
            logits_value, labels_value = session.run([logits, labels], feed)
            sub = folder / cases.size_name(size)
            sub.mkdir(exist_ok=True)
            (sub / "image.png").write_bytes(session.run(tf.io.encode_png(image)))
            np.save(sub / "logits.npy", logits_value[0])
            np.save(sub / "labels.npy", labels_value[0])
            if dump:
                np.savez(sub / "tensors.npz", **dump_tensors(graph, session, feed, dump))
            if "checkpoint" not in report:  # one checkpoint per variant: the variables do not depend on the size
                saver = tf1.train.Saver(graph.get_collection("variables"), write_version=tf1.train.SaverDef.V2)
                report["checkpoint"] = saver.save(session, str(folder / "model.ckpt"), write_meta_graph=False)
        if not np.array_equal(labels_value[0], logits_value[0].argmax(-1)):
            raise RuntimeError(f"{variant} {size}: the reference's labels are not the argmax of its logits")
        report["sizes"][cases.size_name(size)] = {
            "max_abs_logit": float(np.abs(logits_value).max()), "logit_std": float(logits_value.std()),
            "spatial_std": float(logits_value[0].std(axis=(0, 1)).mean()), **top2_gap(logits_value[0]),
            "classes_present": int(len(np.unique(labels_value))), "seconds": round(time.perf_counter() - started, 1)}
        print(f"{variant} {cases.size_name(size)}: {report['sizes'][cases.size_name(size)]}", flush=True)
    if variant in cases.MULTI_SCALE_VARIANTS:
        run_multi_scale(variant, folder, variables, report)
    reader = tf.train.load_checkpoint(report["checkpoint"])
    stored = {name: reader.get_tensor(name) for name in sorted(reader.get_variable_to_shape_map())}
    np.savez(folder / "variables.npz", **stored)
    report["variables"] = len(stored)
    report["values"] = int(sum(v.size for v in stored.values()))
    (folder / "meta.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--variants", nargs="+", choices=sorted(cases.VARIANTS), default=list(cases.VARIANTS))
    parser.add_argument("--dump", metavar="REGEX", help="also save graph tensors whose op name matches")
    args = parser.parse_args(argv)
    try:
        research = tf_compat.install(os.environ.get("DEEPLAB_TF_REFERENCE"))
    except tf_compat.ReferenceNotFound as err:
        print(f"tf_reference: {err}", file=sys.stderr)
        return 2
    import tensorflow as tf

    print(f"reference: {research}\nTensorFlow {tf.__version__}; " + "; ".join(tf_compat.NOTES), flush=True)
    for variant in args.variants:
        report = run_variant(variant, args.out, args.dump)
        print(f"{variant}: {report['variables']} variables, {report['values']:,} values -> {report['checkpoint']}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
