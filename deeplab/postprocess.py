"""DeepLab v1/v2 post-processing: the fully connected CRF of Krähenbühl & Koltun on softmax probabilities.

The CRF's energy has a unary term, ``-log`` of the network's probabilities, and two Gaussian pairwise
terms over every pair of pixels (Potts compatibility):

* appearance (bilateral) kernel, weight ``w1``, widths ``sigma_alpha`` (position, pixels) and
  ``sigma_beta`` (colour, on the 0..255 RGB scale): nearby pixels of similar colour should agree;
* smoothness kernel, weight ``w2``, width ``sigma_gamma`` (position, pixels): removes small isolated regions.

Inference is the efficient mean-field approximation, through ``pydensecrf2`` (the optional extra
``pip install 'deeplab[crf]'``). Where the defaults come from:

* ``iterations=10``: v1 paper (arXiv:1412.7062) Sec. 5 and v2 paper (arXiv:1606.00915) Sec. 4.1: 10
  mean-field iterations for every reported result.
* ``w2=3``, ``sigma_gamma=3``: fixed in both papers (v1 Sec. 5, v2 Sec. 4.1); only ``w1``, ``sigma_alpha``
  and ``sigma_beta`` are cross-validated, on 100 val images (v2's ranges: ``w1`` 3..6,
  ``sigma_alpha`` 30..100 step 10, ``sigma_beta`` 3..6; see ``deeplab crf-tune``).
* ``w1=4``, ``sigma_alpha=121``, ``sigma_beta=5``: neither paper prints the chosen values (their tables
  give only mIoU). These are the ones the authors published with their DeepLab-CRF-LargeFOV (v1)
  model; :data:`CRF_PRESETS` has the other published settings. Each model and dataset has its own best
  values, so cross-validate (``deeplab crf-tune``) rather than trust a default.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from .constants import default_workers

Task = TypeVar("Task")
Result = TypeVar("Result")


class CRFUnavailableError(RuntimeError):
    """``pydensecrf2`` is not installed."""


@dataclass(frozen=True)
class CRFParams:
    """The fully connected CRF's settings, named as in the DeepLab papers (see the module docstring).

    Attributes:
        iterations: mean-field iterations.
        w1: weight of the appearance (bilateral) kernel.
        sigma_alpha: its spatial width in pixels.
        sigma_beta: its colour width, on the 0..255 RGB scale.
        w2: weight of the smoothness kernel.
        sigma_gamma: its spatial width in pixels.
    """

    iterations: int = 10
    w1: float = 4.0
    sigma_alpha: float = 121.0
    sigma_beta: float = 5.0
    w2: float = 3.0
    sigma_gamma: float = 3.0

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"CRF iterations must be a positive int, got {self.iterations!r}")
        for name in ("w1", "w2"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"CRF {name} must be a number >= 0, got {value!r}")
        for name in ("sigma_alpha", "sigma_beta", "sigma_gamma"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ValueError(f"CRF {name} must be a number > 0, got {value!r}")
        for name in ("w1", "sigma_alpha", "sigma_beta", "w2", "sigma_gamma"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def from_options(cls, base: CRFParams | None = None, **options: Any) -> CRFParams:
        """``base`` (default: the defaults) with ``options`` replaced; an unknown key is a clear error."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown CRF parameter(s) {', '.join(unknown)}; valid: {', '.join(known)}")
        return replace(base or cls(), **options)

    @classmethod
    def build(cls, enabled: bool = True, text: str | None = None, *, base: CRFParams | None = None,
              **overrides: float | int | None) -> CRFParams | None:
        """The one way settings become :class:`CRFParams`, whoever gives them (the CLI, a config, a grid).

        Args:
            enabled: whether the CRF is wanted at all; ``False`` without ``text`` gives ``None``.
            text: ``"w1=5,sigma_alpha=50"``, the form ``--crf-params`` takes (implies ``enabled``).
            base: the settings the others replace (default: the defaults).
            **overrides: single settings by name; ``None`` leaves one unset (a config's blank key).

        Raises:
            ValueError: a malformed item of ``text``, an unknown name or a bad value, saying which.
        """
        if text is None and not enabled:
            return None
        options = _parse_options(text) if text is not None else {}
        options.update((key, value) for key, value in overrides.items() if value is not None)
        return cls.from_options(base, **options)

    def describe(self) -> str:
        """``w1=4 sigma_alpha=121 ...``: the form ``deeplab predict --crf-params`` takes."""
        return " ".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self))


def _parse_options(text: str) -> dict[str, float | int]:
    """``"w1=5, sigma_alpha=50"`` -> ``{"w1": 5.0, "sigma_alpha": 50.0}`` (``iterations`` an int); blanks skipped."""
    options: dict[str, float | int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        try:
            options[key.strip()] = int(value) if key.strip() == "iterations" else float(value)
        except ValueError:
            raise ValueError(f"--crf-params: {item!r} must look like KEY=NUMBER, e.g. w1=5,sigma_alpha=50") from None
    return options


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


# Settings the authors published with their trained models (their project pages list bi_w, bi_xy_std,
# bi_rgb_std, pos_w, pos_xy_std), not printed in the papers. The v2 ResNet-101 page gives a smoothness
# width of 1 where the paper says sigma_gamma = 3 was fixed.
CRF_PRESETS: dict[str, CRFParams] = {
    "deeplabv1_largefov": CRFParams(w1=4, sigma_alpha=121, sigma_beta=5, w2=3, sigma_gamma=3),
    "deeplabv1_msc_largefov": CRFParams(w1=4, sigma_alpha=83, sigma_beta=5, w2=3, sigma_gamma=3),
    "deeplabv2_resnet101": CRFParams(w1=4, sigma_alpha=67, sigma_beta=3, w2=3, sigma_gamma=1),
}
"""Published CRF settings per model (DeepLab-CRF-LargeFOV, DeepLab-MSc-CRF-LargeFOV, v2 ResNet-101)."""

# The v2 paper's search ranges (Sec. 4.1: w1 in 3..6, sigma_alpha in 30..100 step 10, sigma_beta in 3..6),
# thinned to a small grid of 64 settings for ``deeplab crf-tune``; pass the full ranges to search them all.
CRF_SEARCH_GRID: dict[str, tuple[float, ...]] = {
    "w1": (3.0, 4.0, 5.0, 6.0),
    "sigma_alpha": (30.0, 50.0, 70.0, 90.0),
    "sigma_beta": (3.0, 4.0, 5.0, 6.0),
}


def _densecrf_module():
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as err:
        raise CRFUnavailableError(
            "the DenseCRF post-processing needs pydensecrf2: pip install 'deeplab[crf]'"
        ) from err
    return densecrf


def _as_numpy_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """``H x W x 3`` contiguous uint8 from a ``3 x H x W`` tensor or an ``H x W x 3`` array."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be a uint8 3 x H x W RGB tensor, got {image.dtype} {tuple(image.shape)}")
        array = image.detach().cpu().permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"image must be a uint8 H x W x 3 RGB array, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


def _as_numpy_probs(probs: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if isinstance(probs, torch.Tensor):
        array = probs.detach().cpu().float().numpy() if probs.is_floating_point() else probs.cpu().numpy()
    else:
        array = np.asarray(probs)
    if array.ndim != 3 or array.shape[0] < 1 or tuple(array.shape[1:]) != size:
        raise ValueError(f"probs must be C x H x W with the image's H x W {size}, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all() or (array < 0).any():
        raise ValueError("probs must be finite, non-negative floats (softmax probabilities)")
    return array.astype(np.float32, copy=False)


def dense_crf(image: torch.Tensor | np.ndarray, probs: torch.Tensor | np.ndarray, params: CRFParams | None = None,
              **options: Any) -> torch.Tensor | np.ndarray:
    """Refines softmax probabilities with the fully connected CRF (mean-field inference).

    Args:
        image: the RGB image the probabilities belong to, uint8: a ``3 x H x W`` tensor (deeplab's
            layout) or an ``H x W x 3`` numpy array (numpy's and PIL's).
        probs: ``C x H x W`` class probabilities (a softmax), a tensor or an array.
        params: the CRF's settings; default :class:`CRFParams` ().
        **options: replace single settings, e.g. ``w1=5, sigma_alpha=50`` (names of :class:`CRFParams`).

    Returns:
        The refined ``C x H x W`` probabilities (float32, each pixel sums to 1): a tensor on the CPU
        if ``probs`` is a tensor, else a numpy array.

    Raises:
        ValueError: bad image, probabilities or settings, naming which.
        CRFUnavailableError: ``pydensecrf2`` is not installed.
    """
    params = CRFParams.from_options(params, **options) if options else (params or CRFParams())
    rgb = _as_numpy_image(image)
    unary_probs = _as_numpy_probs(probs, rgb.shape[:2])
    num_classes, height, width = unary_probs.shape
    crf = _densecrf_module().DenseCRF2D(width, height, num_classes)
    # Unary = -log p; clipped so that a probability of exactly 0 costs a large, finite energy.
    unary = -np.log(np.clip(unary_probs, 1e-8, None)).reshape(num_classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.sigma_gamma, compat=params.w2)
    crf.addPairwiseBilateral(sxy=params.sigma_alpha, srgb=params.sigma_beta, rgbim=rgb, compat=params.w1)
    refined = np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(num_classes, height, width)
    return torch.from_numpy(refined) if isinstance(probs, torch.Tensor) else refined


def _process_context() -> multiprocessing.context.BaseContext:
    # Workers run numpy and pydensecrf only, never torch, so forking them is safe (fork's hazards are
    # CUDA and OpenMP use in the child) and saves each worker a fresh import of torch, which spawn
    # would cost (seconds per worker). Elsewhere (macOS, Windows) spawn is the safe choice.
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def map_in_processes(fn: Callable[[Task], Result], tasks: Iterable[Task], *, workers: int | None = None,
                     total: int | None = None, desc: str = "crf", progress: bool = True) -> Iterator[Result]:
    """``fn`` over ``tasks`` in worker processes, results in the tasks' order, with a progress bar.

    Tasks are pulled lazily and at most ``2 * workers`` are in flight, so a long stream of large
    probability maps never piles up in memory. ``workers`` <= 1 runs everything in this process.
    ``fn`` must be a module-level function (it is pickled by name).
    """
    workers = default_workers() if workers is None else workers
    bar = tqdm(total=total, desc=desc, unit="image", leave=False, disable=not progress)
    try:
        if workers <= 1:
            for task in tasks:
                yield fn(task)
                bar.update(1)
            return
        with ProcessPoolExecutor(max_workers=workers, mp_context=_process_context()) as pool:
            pending: deque = deque()
            for task in tasks:
                pending.append(pool.submit(fn, task))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
                    bar.update(1)
            while pending:
                yield pending.popleft().result()
                bar.update(1)
    finally:
        bar.close()


def _refine_task(task: tuple[np.ndarray, np.ndarray, CRFParams]) -> np.ndarray:
    image, probs, params = task
    return dense_crf(image, probs, params)


def refine_many(pairs: Iterable[tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
                params: CRFParams | None = None, *, workers: int | None = None, total: int | None = None,
                progress: bool = True) -> Iterator[np.ndarray]:
    """:func:`dense_crf` over a stream of ``(image, probs)`` pairs, in parallel processes, in order.

    Args:
        pairs: ``(image, probs)`` as :func:`dense_crf` takes them; consumed lazily.
        params: the CRF's settings (default :class:`CRFParams` ()).
        workers: processes (default: one per core); <= 1 runs in this process.
        total: number of pairs, for the progress bar.
        progress: show a progress bar.

    Yields:
        The refined ``C x H x W`` float32 probabilities of each pair, as numpy arrays, in order.
    """
    params = params or CRFParams()
    _densecrf_module()  # fail here, before any work, when the extra is missing

    def tasks() -> Iterator[tuple[np.ndarray, np.ndarray, CRFParams]]:
        for image, probs in pairs:
            rgb = _as_numpy_image(image)
            yield rgb, _as_numpy_probs(probs, rgb.shape[:2]), params

    yield from map_in_processes(_refine_task, tasks(), workers=workers, total=total, desc="crf", progress=progress)
