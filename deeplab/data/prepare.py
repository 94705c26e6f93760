"""Getting the standard benchmarks onto disk (``deeplab data prepare``) and checking them (``data check``).

The URLs and checksums are module constants so that tests (and mirrors) can point them elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deeplab.data._standard import DatasetNotFoundError
from deeplab.data.ade20k import ADE20K_DIR, locate_ade20k
from deeplab.data.base import SegmentationDataset
from deeplab.data.cityscapes import CityscapesSegmentation, locate_cityscapes
from deeplab.data.download import ChecksumError, extract, file_digest
from deeplab.data.download import download as download_file
from deeplab.data.stats import median_frequency_weights
from deeplab.data.verify import Problem, verify_dataset
from deeplab.data.voc import SBD_SUBDIR, locate_voc, prepare_voc_aug

# Oxford's mirror of the VOC host (host.robots.ox.ac.uk); torchvision downloads from it too.
VOC_URL = "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
SBD_URL = (
    "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz"
)
SBD_MD5 = "82b4d87ceb2ed10f6038a1cba92111cb"
ADE20K_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
ADE20K_MD5 = "7328b3957e407ddae1d3cbf487f149ef"
CITYSCAPES_URL = "https://www.cityscapes-dataset.com/downloads/"
CITYSCAPES_ARCHIVES = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")


def prepare(name: str, root: Path, *, download: bool = True) -> str:
    """Downloads, unpacks and converts benchmark ``name`` under ``root``; safe to run again.

    Args:
        name: ``"voc"``, ``"voc_aug"``, ``"ade20k"`` or ``"cityscapes"`` (instructions only: it
            needs a login).
        root: dataset folder; archives are kept in it. For ``voc``/``voc_aug`` it may also be the
            ``VOCdevkit`` or ``VOC2012`` folder, for ``ade20k`` the ``ADEChallengeData2016`` folder:
            the folder above is then used.
        download: if false, only archives already in ``root`` are used.

    Returns:
        A human-readable account of what was found or done.
    """
    steps: dict[str, Callable[[Path, bool], str]] = {
        "voc": _prepare_voc,
        "voc_aug": _prepare_voc_aug,
        "ade20k": _prepare_ade20k,
        "cityscapes": lambda root, _download: cityscapes_instructions(root),
    }
    if name not in steps:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(steps)}")
    root = Path(root)
    if name in ("voc", "voc_aug"):
        root = locate_voc(root)[0]
    elif name == "ade20k":
        root = locate_ade20k(root)[0]
    if name != "cityscapes":
        root.mkdir(parents=True, exist_ok=True)
    return steps[name](root, download)


def _prepare_voc(root: Path, download: bool) -> str:
    marker = locate_voc(root)[1] / "ImageSets" / "Segmentation" / "val.txt"
    return _fetch_and_extract(VOC_URL, VOC_MD5, root, marker, "PASCAL VOC 2012", download)


def _prepare_voc_aug(root: Path, download: bool) -> str:
    lines = [
        _prepare_voc(root, download),
        _fetch_and_extract(SBD_URL, SBD_MD5, root, root / SBD_SUBDIR / "cls", "SBD", download),
    ]
    split_file = prepare_voc_aug(root)
    count = len(split_file.read_text().split())
    lines.append(f"train_aug: {count} images listed in {split_file}")
    return "\n".join(lines)


def _prepare_ade20k(root: Path, download: bool) -> str:
    marker = root / ADE20K_DIR / "annotations" / "validation"
    return _fetch_and_extract(ADE20K_URL, ADE20K_MD5, root, marker, "ADE20K", download)


def _fetch_and_extract(url: str, md5: str, root: Path, marker: Path, label: str, download: bool) -> str:
    """Makes ``marker`` exist by unpacking the archive at ``url`` (downloaded into ``root`` if needed)."""
    if marker.exists():
        return f"{label}: already present ({marker})"
    archive = root / url.rsplit("/", 1)[-1]
    if download:
        download_file(url, archive, md5=md5)
    elif not archive.is_file():
        raise DatasetNotFoundError(
            f"{label} not found: expected {marker}, or the archive {archive} to unpack. "
            f"Download {url} into {root}, or run `deeplab data prepare` without --no-download."
        )
    elif (actual := file_digest(archive, "md5")) != md5:
        raise ChecksumError(f"checksum mismatch for {archive.name}: expected md5 {md5}, got {actual}")
    extract(archive, root)
    if not marker.exists():
        raise DatasetNotFoundError(f"{archive.name} was unpacked into {root} but {marker} is still missing")
    return f"{label}: unpacked {archive.name} into {root} (the archive may be deleted)"


def cityscapes_instructions(root: Path) -> str:
    """What to download for Cityscapes (it needs a login), where to unpack it, and the layout found."""
    root = locate_cityscapes(root)
    lines = [
        "Cityscapes requires a (free) account, so it is not downloaded automatically.",
        f"1. Log in at {CITYSCAPES_URL} and download these two archives:",
        f"     {CITYSCAPES_ARCHIVES[0]}  (11 GB: images of train / val / test)",
        f"     {CITYSCAPES_ARCHIVES[1]:<{len(CITYSCAPES_ARCHIVES[0])}}  (241 MB: fine annotations)",
        f"2. Unpack both into {root}:",
        f"     cd {root} && unzip -n {CITYSCAPES_ARCHIVES[0]} && unzip -n {CITYSCAPES_ARCHIVES[1]}",
        f"   which gives {root / 'leftImg8bit' / '<split>' / '<city>'}/*_leftImg8bit.png",
        f"           and {root / 'gtFine' / '<split>' / '<city>'}/*_gtFine_labelIds.png",
        "Layout found:",
    ]
    for split in CityscapesSegmentation.splits:
        folders = [root / "leftImg8bit" / split, root / "gtFine" / split]
        if not all(folder.is_dir() for folder in folders):
            lines.append(f"  {split}: missing {', '.join(str(f) for f in folders if not f.is_dir())}")
            continue
        data = CityscapesSegmentation(root, split)
        missing = sum(not mask.is_file() for mask in data.masks)
        lines.append(f"  {split}: {len(data)} images, {missing} without a gtFine_labelIds.png")
    return "\n".join(lines)


@dataclass
class CheckReport:
    """What :func:`check` found in one split of a dataset."""

    split: str
    num_images: int
    classes: Sequence[str]
    class_pixels: list[int]
    ignored_pixels: int
    problems: list[Problem] = field(default_factory=list)
    skipped: int = 0  # samples among ``num_images`` the loader had already left out (``skip_bad``)
    mask_format: str = ""  # what the masks were recognised as (folder datasets)
    advice: str | None = None  # the config line that fits them, if the current settings do not


def check(dataset: SegmentationDataset, *, split: str | None = None, progress: bool = False) -> CheckReport:
    """Decodes every sample of ``dataset`` and collects the class pixel histogram and every bad file.

    A sample is bad if a file is missing or cannot be decoded completely, if its mask is not a
    single-channel index image, if image and mask sizes differ, or if the mask holds values that are
    neither a class id nor ``ignore_index``. The decoding is :func:`deeplab.data.verify.verify_dataset`:
    parallel, and cached per file, so a second check of unchanged files decodes nothing. Samples a
    loader left out when it was built (``FolderDataset(skip_bad=True)`` keeps them in ``skipped``) are
    reported and counted with the rest: skipping a sample does not make it good. A folder dataset has
    decoded and judged every file when it was built: its findings, class pixels and the format of its masks
    (:meth:`~deeplab.data.FolderDataset.mask_format`) are reported as they are.
    """
    split = split if split is not None else str(getattr(dataset, "split", ""))
    skipped = list(getattr(dataset, "skipped", ()))
    count = len({problem.sample for problem in skipped})
    if hasattr(dataset, "mask_format"):  # a folder checked every file when built: its counts and findings stand
        classes = tuple(dataset.classes)
        if dataset.task == "binary":
            classes = ("background", *classes)
        found, advice = dataset.mask_format()
        return CheckReport(split, len(dataset) + count, classes, dataset.class_pixels.tolist(),
                           dataset.ignored_pixels, skipped, skipped=count, mask_format=found, advice=advice)
    verified = verify_dataset(dataset, progress=progress, desc=f"check {split}")
    return CheckReport(split, len(dataset) + count, tuple(dataset.classes),
                       verified.pixels[: dataset.num_classes].tolist(), int(verified.pixels[dataset.ignore_index]),
                       skipped + verified.problems, skipped=count)


def format_check_report(reports: CheckReport | Sequence[CheckReport]) -> str:
    """Renders check results as text tables: images per split, class pixels, problems."""
    reports = [reports] if isinstance(reports, CheckReport) else list(reports)
    if not reports:
        return "nothing checked"
    splits = [[r.split, r.num_images, len(r.problems)] for r in reports]
    problems = [[r.split, p.sample, p.kind, p.detail] for r in reports for p in r.problems]
    sections = [_table(["split", "images", "problems"], splits), _histogram_table(reports)]
    formats = dict.fromkeys((r.mask_format, r.advice) for r in reports if r.mask_format)
    for found, advice in formats:
        sections.insert(0, f"masks: {found}" + (f"\nconfig: {advice}" if advice else ""))
    if problems:
        sections.append(_table(["split", "sample", "problem", "detail"], problems))
    else:
        sections.append("no problems found")
    return "\n\n".join(sections)


def _histogram_table(reports: Sequence[CheckReport]) -> str:
    classes = reports[0].classes
    pixels = [sum(r.class_pixels[i] for r in reports) for i in range(len(classes))]
    ignored = sum(r.ignored_pixels for r in reports)
    total = max(sum(pixels) + ignored, 1)
    weights = median_frequency_weights(pixels)
    rows = [[i, classes[i], n, f"{100 * n / total:.2f}%", f"{w:.3f}"]
            for i, (n, w) in enumerate(zip(pixels, weights, strict=True))]
    rows.append(["255", "(ignore)", ignored, f"{100 * ignored / total:.2f}%", ""])
    return _table(["id", "class", "pixels", "share", "median-freq weight"], rows)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
