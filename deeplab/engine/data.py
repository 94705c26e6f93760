"""Config -> datasets, and a step-indexed sampler that makes resumed runs repeat uninterrupted ones."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig
from ..data import DemoDataset, FolderDataset, SegmentationDataset, eval_transforms, train_transforms
from ..data.base import PairTransform
from ..data.registry_standard import DATASETS as STANDARD_DATASETS
from ..data.verify import ensure_valid
from .workers import worker_options

DATASET_NAMES = ("demo", "folder", *STANDARD_DATASETS)


def build_dataset(cfg: DataConfig, split: str, transforms: PairTransform | None, *, task: str = "multiclass",
                  in_channels: int = 3) -> SegmentationDataset:
    """The dataset named by ``cfg.name`` for one split; a folder's targets follow ``task`` (``model.task``) and its
    images have ``in_channels`` channels (``model.in_channels``)."""
    if cfg.name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {cfg.name!r}; valid choices: {', '.join(DATASET_NAMES)}")
    if cfg.name == "demo":
        return DemoDataset(split=split, transforms=transforms, num_images=cfg.num_images,
                           image_size=cfg.image_size)
    if cfg.root is None:
        raise ValueError(f"data.root is required for data.name={cfg.name!r}")
    if cfg.name == "folder":
        return FolderDataset(cfg.root, split, transforms=transforms, val_ratio=cfg.val_ratio,
                             num_classes=cfg.num_classes, ignore_index=cfg.ignore_index, skip_bad=cfg.skip_bad,
                             task=task, in_channels=in_channels, label_map=cfg.label_map, max_value=cfg.max_value)
    return STANDARD_DATASETS[cfg.name](cfg.root, split, transforms=transforms)


def build_train_val(cfg: DataConfig, *, progress: bool = True, task: str = "multiclass",
                    in_channels: int = 3) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training and validation splits, both checked before any training step, without transforms yet.

    Every image and mask of both splits is decoded once (in parallel, cached per file), so that a
    corrupt file stops the run at start with one error listing every bad file, instead of crashing
    it at the first evaluation. Folder datasets check themselves when built; the standard datasets
    are checked here unless ``cfg.verify`` is false. With ``cfg.skip_bad`` bad samples are dropped
    with a warning each. Transforms depend on the model's normalisation, known once the model is
    built: see :func:`attach_transforms`.
    """
    train = build_dataset(cfg, cfg.train_split, None, task=task, in_channels=in_channels)
    val = build_dataset(cfg, cfg.val_split, None, task=task, in_channels=in_channels)
    if cfg.verify and cfg.name in STANDARD_DATASETS:
        ensure_valid({cfg.train_split: train, cfg.val_split: val}, skip_bad=cfg.skip_bad, progress=progress)
    return train, val


def attach_transforms(train_set: SegmentationDataset, val_set: SegmentationDataset, cfg: DataConfig, *,
                      mean: Sequence[float], std: Sequence[float]) -> None:
    """DeepLab's augmentation on the training split, plain normalisation on the validation split."""
    train_set.transforms = train_transforms(
        cfg.crop_size, scale_range=(cfg.scale_min, cfg.scale_max), scale_step=cfg.scale_step, hflip=cfg.hflip,
        mean=mean, std=std, ignore_index=cfg.ignore_index)
    val_set.transforms = eval_transforms(mean=mean, std=std)


class SeededSamples(Dataset):
    """Wraps a dataset so each sample's random augmentation is a pure function of its position in the run.

    Items are ``(index, seed)`` pairs: the transforms draw from torch's CPU generator, seeded with
    ``seed`` for this one sample and restored afterwards, in the main process as in loader workers.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        # Only the CPU generator, which the transforms use: seeding every device (torch.manual_seed)
        # would leave a GPU's dropout stream at a value fork_rng(devices=[]) does not restore.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return self.dataset[index]


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches for steps ``start_step, start_step + 1, ...``: sample ``p`` of the run is element
    ``p % n`` of epoch ``p // n``'s seeded permutation, with augmentation seed ``f(seed, p)``, so batch
    ``k`` never depends on the past (resuming repeats the uninterrupted run).

    ``batch_size`` is the global batch: with ``world_size`` processes, each takes its rank's contiguous
    slice of ``batch_size // world_size`` samples, and together they see exactly what one process
    would, whatever their number.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if num_samples == 0:
            raise ValueError("the training split is empty")
        check_global_batch(batch_size, world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not within world size {world_size}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.local_batch_size = batch_size // world_size
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _index(self, position: int) -> int:
        epoch = position // self.num_samples
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.num_samples, generator=generator)
        return int(self._order[position % self.num_samples])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            first = step * self.batch_size + self.rank * self.local_batch_size
            positions = range(first, first + self.local_batch_size)
            yield [(self._index(p), self.seed * 7_919 + p) for p in positions]
            step += 1


def check_global_batch(batch_size: int, world_size: int) -> int:
    """The per-process batch of a global ``batch_size``; a clear error when it does not divide."""
    if batch_size < 1 or batch_size % world_size:
        raise ValueError(f"train.batch_size={batch_size} is the global batch and must be a positive multiple "
                         f"of the number of processes ({world_size})")
    return batch_size // world_size


def train_loader(dataset: Dataset, *, batch_size: int, seed: int, start_step: int, num_workers: int,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """Endless loader of this process's share of the global batch for each step from ``start_step`` on.

    ``batch_size`` is the global batch (see :class:`StepBatchSampler`). The sampler never ends, so the
    ``num_workers`` worker processes are started once and live as long as the loader; they leave SIGINT and
    SIGTERM to the trainer while it is :func:`~deeplab.engine.workers.shielded`.
    """
    sampler = StepBatchSampler(len(dataset), batch_size, seed=seed, start_step=start_step, rank=rank,
                               world_size=world_size)
    return DataLoader(SeededSamples(dataset), batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      **worker_options(num_workers))
