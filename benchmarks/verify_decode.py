"""Times full decoding of dataset files (deeplab.data.verify): one thread, a thread pool, a process pool;
then a folder dataset's verification cold and from the cache.

    python benchmarks/verify_decode.py [--count 200] [--workers N]

Writes VOC-like JPEGs (500x375) and palette PNG masks, and Cityscapes-like RGB PNGs (1024x512), to a
temporary folder, decodes each set with every executor and prints files per second. Then it builds
a ``FolderDataset`` over the JPEG/mask pairs twice (the second start is served by the verdict cache).
"""

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from deeplab.constants import default_workers
from deeplab.data.folder import FolderDataset
from deeplab.data.verify import inspect_file


def _smooth_rgb(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like image (smooth gradients plus noise): compresses and decodes like real data."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * rng.uniform(0.2, 1)) % 256, (y * rng.uniform(0.2, 1)) % 256, ((x + y) // 3) % 256], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def write_files(folder: Path, count: int) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    sets: dict[str, list[str]] = {"JPEG 500x375": [], "PNG mask 500x375": [], "PNG RGB 1024x512": []}
    for i in range(count):
        jpeg, mask, png = folder / f"{i}.jpg", folder / f"{i}_mask.png", folder / f"{i}_rgb.png"
        Image.fromarray(_smooth_rgb(rng, 375, 500)).save(jpeg, quality=90)
        labels = np.zeros((375, 500), np.uint8)
        labels[50 + i % 100: 250, 80: 300 + i % 150] = 1 + i % 20
        Image.fromarray(labels, "L").convert("P").save(mask)
        Image.fromarray(_smooth_rgb(rng, 512, 1024)).save(png, compress_level=6)
        for name, path in zip(sets, (jpeg, mask, png), strict=True):
            sets[name].append(str(path))
    return sets


def folder_starts(folder: Path, count: int) -> list[float]:
    """Seconds to construct a FolderDataset over ``count`` pairs: cold cache, then warm."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir()
    for i in range(count):
        os.link(folder / f"{i}.jpg", folder / "images" / f"{i}.jpg")
        os.link(folder / f"{i}_mask.png", folder / "masks" / f"{i}.png")
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        FolderDataset(folder, val_ratio=0.0, num_classes=21)
        seconds.append(time.perf_counter() - start)
    return seconds


def timed(paths: list[str], make: Callable[[], Executor] | None) -> float:
    start = time.perf_counter()
    if make is None:
        for path in paths:
            inspect_file(path)
    else:
        with make() as pool:  # pool start-up is part of the cost a user pays
            list(pool.map(inspect_file, paths, chunksize=8 if isinstance(pool, ProcessPoolExecutor) else 1))
    return len(paths) / (time.perf_counter() - start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="files per kind")
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()
    executors: dict[str, Callable[[], Executor] | None] = {
        "1 thread": None,
        f"{args.workers} threads": lambda: ThreadPoolExecutor(args.workers),
        f"{args.workers} processes": lambda: ProcessPoolExecutor(args.workers),
    }
    with tempfile.TemporaryDirectory() as tmp:
        sets = write_files(Path(tmp), args.count)
        print(f"{os.cpu_count()} CPUs, {args.count} files per kind; files decoded per second (higher is better)\n")
        print(f"| files | {' | '.join(executors)} |")
        print(f"|---|{'---|' * len(executors)}")
        for name, paths in sets.items():
            rates = [timed(paths, make) for make in executors.values()]
            print(f"| {name} | {' | '.join(f'{r:.0f}' for r in rates)} |")
        os.environ["DEEPLAB_CACHE"] = str(Path(tmp) / "cache")
        cold, warm = folder_starts(Path(tmp), args.count)
        print(f"\nFolderDataset over {args.count} JPEG/PNG pairs: first start {cold:.2f} s, second start {warm:.3f} s")
