"""One model, many requests: a queue that a single worker drains, one batch at a time, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

import torch


class QueueFull(RuntimeError):
    """More requests are waiting than the queue takes."""


class PredictionQueue:
    """Runs a predictor for concurrent requests without blocking the event loop.

    Requests wait in an asyncio queue. A single worker task takes the first waiting request plus any others
    already waiting (up to ``max_batch``), groups the images by size, and runs each group as one batch in a
    worker thread; so the model only ever runs one batch at a time and the loop stays free to answer
    ``/health`` and read uploads meanwhile. A group that fails is retried one image at a time, so one bad
    image fails only its own request.

    Args:
        predictor: anything with ``predict(uint8 3 x H x W) -> H x W``; batching uses its
            ``predict_batch(list of images) -> list of class maps`` when it has one (``deeplab.Predictor`` does).
        max_batch: the most images run together (1 runs every image alone through ``predict``).
        max_queue: the most requests waiting; one more gets ``QueueFull``.
    """

    def __init__(self, predictor: Any, *, max_batch: int = 8, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be positive, got {max_batch} and {max_queue}")
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.busy = False
        self.batches_run = 0
        self.images_run = 0
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        """Requests queued and not yet taken by the worker."""
        return self._queue.qsize() if self._queue is not None else 0

    async def predict(self, image: torch.Tensor) -> torch.Tensor:
        """The class map (int64 ``H x W``, CPU) of a uint8 ``3 x H x W`` image, once the worker has run it."""
        self._start()
        assert self._queue is not None
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} requests are already waiting (the limit); try again shortly")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((image, future))
        return await future

    def _start(self) -> None:
        """Starts the worker on the running loop (lazily, so an app works with or without lifespan events)."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._work(self._queue), name="deeplab-prediction-worker")

    async def close(self) -> None:
        """Stops the worker; requests still waiting are cancelled."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait()[1].cancel()

    async def _work(self, queue: asyncio.Queue) -> None:
        while True:
            items = [await queue.get()]
            while len(items) < self.max_batch and not queue.empty():
                items.append(queue.get_nowait())
            groups: dict[tuple[int, ...], list[tuple[torch.Tensor, asyncio.Future]]] = defaultdict(list)
            for image, future in items:
                if not future.done():  # the client may have gone away while it waited
                    groups[tuple(image.shape)].append((image, future))
            for group in groups.values():
                await self._run_group(group)

    async def _run_group(self, group: list[tuple[torch.Tensor, asyncio.Future]]) -> None:
        images = [image for image, _ in group]
        self.busy = True
        try:
            masks = await asyncio.to_thread(self._run, images)
        except Exception as err:
            if len(group) == 1:
                _resolve(group[0][1], error=err)
                return
            for item in group:  # find the culprit: every other image still gets its mask
                await self._run_group([item])
            return
        finally:
            self.busy = False
        self.batches_run += 1
        self.images_run += len(group)
        for (_, future), mask in zip(group, masks, strict=True):
            _resolve(future, result=mask)

    def _run(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        predictor = self.predictor
        if len(images) == 1 or not hasattr(predictor, "predict_batch"):
            return [predictor.predict(image) for image in images]
        return predictor.predict_batch(images)  # the Predictor's own rule, its DenseCRF included


def _resolve(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)

