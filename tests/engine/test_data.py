"""The step-indexed sampler and the training loader: what each step and each process gets, whatever
the number of processes, the start step or the loader's worker processes."""

import pytest
import torch

from deeplab.data import DemoDataset, train_transforms
from deeplab.engine.data import SeededSamples, StepBatchSampler, train_loader
from deeplab.engine.train import reseed


def _batches(sampler, steps):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(steps)]


@pytest.mark.parametrize("world_size", [2, 4])
def test_processes_together_draw_exactly_the_single_process_batches(world_size):
    single = _batches(StepBatchSampler(10, 8, seed=3), 6)
    ranks = [_batches(StepBatchSampler(10, 8, seed=3, rank=r, world_size=world_size), 6) for r in range(world_size)]
    for step in range(6):
        assert [item for r in range(world_size) for item in ranks[r][step]] == single[step]
        assert all(len(ranks[r][step]) == 8 // world_size for r in range(world_size))


def test_each_epoch_is_a_fresh_permutation_and_seeds_are_unique():
    batches = _batches(StepBatchSampler(6, 3, seed=0), 4)  # 2 epochs of 2 steps
    first, second = [i for b in batches[:2] for i, _ in b], [i for b in batches[2:] for i, _ in b]
    assert sorted(first) == sorted(second) == list(range(6)) and first != second
    seeds = [s for b in batches for _, s in b]
    assert len(set(seeds)) == len(seeds)


def test_starting_at_a_step_repeats_the_uninterrupted_sequence():
    full = _batches(StepBatchSampler(7, 4, seed=1, rank=1, world_size=2), 9)
    assert _batches(StepBatchSampler(7, 4, seed=1, start_step=5, rank=1, world_size=2), 4) == full[5:]


def test_global_batch_that_does_not_divide_is_a_clear_error():
    with pytest.raises(ValueError, match=r"train.batch_size=6 is the global batch and must be a positive multiple "
                                         r"of the number of processes \(4\)"):
        StepBatchSampler(10, 6, seed=0, rank=0, world_size=4)
    with pytest.raises(ValueError, match="training split is empty"):
        StepBatchSampler(0, 2, seed=0)


def _demo():
    return DemoDataset(split="train", image_size=65, num_images=4,
                       transforms=train_transforms(49, scale_range=(0.5, 2.0), hflip=True))


def test_augmentation_is_a_function_of_the_seed_and_leaves_the_global_stream_alone():
    samples = SeededSamples(_demo())
    torch.manual_seed(5)
    a = samples[(1, 123)]
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after)  # drawing a sample did not advance the global generator
    b = samples[(1, 123)]
    c = samples[(1, 124)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_worker_processes_give_the_same_batches_as_the_main_process():
    dataset = _demo()

    def first_batches(num_workers):
        torch.manual_seed(num_workers)  # a different global state must not matter either
        loader = iter(train_loader(dataset, batch_size=2, seed=0, start_step=1, num_workers=num_workers))
        return [next(loader) for _ in range(3)]

    for (xa, ya), (xb, yb) in zip(first_batches(0), first_batches(2), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_reseed_makes_dropout_a_function_of_seed_step_and_rank():
    def mask(seed, step, rank):
        reseed(seed, step, rank)
        return torch.nn.functional.dropout(torch.ones(64), 0.5)

    torch.rand(100)  # whatever was drawn before does not matter
    assert torch.equal(mask(0, 3, 0), mask(0, 3, 0))
    assert not torch.equal(mask(0, 3, 0), mask(0, 4, 0))
    assert not torch.equal(mask(0, 3, 0), mask(0, 3, 1))
    assert not torch.equal(mask(0, 3, 0), mask(1, 3, 0))
