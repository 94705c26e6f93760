"""Many requests at once: one batch at a time off the event loop, batching by size, failures kept local."""

from __future__ import annotations

import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch
from PIL import Image

from deeplab.imageio import read_image
from deeplab.serve import ServeSettings, create_app

from .conftest import demo_image, running_server
from .test_api import png_bytes


class Gated:
    """A predictor wrapper whose model calls wait for ``release`` and are recorded (batch sizes)."""

    def __init__(self, inner, fail_on_black: bool = False) -> None:
        self.inner, self.fail_on_black = inner, fail_on_black
        self.release, self.started = threading.Event(), threading.Event()
        self.batches: list[int] = []

    def __getattr__(self, name):  # classes, palette, num_classes
        return getattr(self.inner, name)

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        self._gate(image.unsqueeze(0))
        return self.inner.predict(image)

    def predict_batch(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        self._gate(torch.stack(images))
        return self.inner.predict_batch(images)

    def _gate(self, batch: torch.Tensor) -> None:
        self.batches.append(len(batch))
        self.started.set()
        assert self.release.wait(timeout=60), "the test never released the model"
        if self.fail_on_black and any(bool((image == image.amin(dim=(1, 2), keepdim=True)).all()) for image in batch):
            raise RuntimeError("the model cannot take a blank image")


async def _until(condition, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _client(app) -> httpx.AsyncClient:
    """An in-process client: answers from the app as a server would give them (500s included)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t")


def _mask(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def _assert_predict_mask(mask: np.ndarray, predictor, data: bytes, label: str = "another mask") -> None:
    """``mask`` is ``predictor.predict``'s mask for the image ``data``, up to float rounding.

    A batch of several images runs other kernels than one image alone: the logits differ by about 1e-5,
    so a pixel whose two best classes tie that closely may go either way. Every other pixel must match.
    """
    logits = predictor.predict_logits(read_image(io.BytesIO(data)))
    expected = logits.argmax(0)
    served = torch.from_numpy(mask.astype(np.int64))
    differ = served != expected
    gap = (logits.gather(0, expected[None]) - logits.gather(0, served[None]))[0]
    assert bool((gap[differ] < 1e-4).all()) and float(differ.float().mean()) < 1e-3, label


def _post(client, data: bytes):
    return client.post("/predict?format=png", content=data, headers={"content-type": "image/png"})


def test_health_answers_while_the_model_runs_and_waiting_images_are_batched_by_size(predictor):
    gated = Gated(predictor)
    app = create_app(gated, settings=ServeSettings(max_batch=8))
    first = png_bytes(demo_image(0, 65))
    same_size = [png_bytes(demo_image(i, (65, 81))) for i in range(1, 5)]
    other_size = [png_bytes(demo_image(i, 97)) for i in range(5, 7)]

    async def scenario():
        async with _client(app) as client:
            running = asyncio.create_task(_post(client, first))
            await _until(gated.started.is_set)
            health = await asyncio.wait_for(client.get("/health"), timeout=5)
            assert health.json() == {"status": "ok", "waiting": 0, "busy": True, "images": 0, "batches": 0}
            waiting = [asyncio.create_task(_post(client, data)) for data in same_size + other_size]
            await _until(lambda: app.state.queue.waiting == 6)
            assert (await client.get("/health")).json()["waiting"] == 6
            gated.release.set()
            return await asyncio.gather(running, *waiting)

    responses = asyncio.run(scenario())
    assert gated.batches == [1, 4, 2]  # the one running, then the waiting ones: one batch per image size
    assert (app.state.queue.images_run, app.state.queue.batches_run) == (7, 3)
    for data, response in zip([first, *same_size, *other_size], responses, strict=True):
        _assert_predict_mask(_mask(response), predictor, data)


def test_a_failing_image_fails_alone_and_the_server_keeps_answering(predictor):
    gated = Gated(predictor, fail_on_black=True)
    app = create_app(gated)
    good = [png_bytes(demo_image(i, 65)) for i in range(3)]
    black = png_bytes(np.zeros((65, 65, 3), np.uint8))

    async def scenario():
        async with _client(app) as client:
            running = asyncio.create_task(_post(client, good[0]))
            await _until(gated.started.is_set)
            waiting = [asyncio.create_task(_post(client, data)) for data in (good[1], black, good[2])]
            await _until(lambda: app.state.queue.waiting == 3)
            gated.release.set()
            responses = await asyncio.gather(running, *waiting)
            return responses, await client.get("/health"), await _post(client, good[1])

    (first, second, failed, third), health, again = asyncio.run(scenario())
    assert failed.status_code == 500
    assert failed.json() == {"detail": "internal error: RuntimeError: the model cannot take a blank image"}
    for data, response in ((good[0], first), (good[1], second), (good[2], third), (good[1], again)):
        _assert_predict_mask(_mask(response), predictor, data)
    assert health.status_code == 200
    assert gated.batches == [1, 3, 1, 1, 1, 1]  # the batch of three failed and was retried image by image


def test_a_full_queue_answers_503_and_the_rest_complete(predictor):
    gated = Gated(predictor)
    app = create_app(gated, settings=ServeSettings(max_queue=2))
    data = png_bytes(demo_image(0, 65))

    async def scenario():
        async with _client(app) as client:
            running = asyncio.create_task(_post(client, data))
            await _until(gated.started.is_set)
            waiting = [asyncio.create_task(_post(client, data)) for _ in range(2)]
            await _until(lambda: app.state.queue.waiting == 2)
            refused = await _post(client, data)
            gated.release.set()
            return refused, await asyncio.gather(running, *waiting)

    refused, accepted = asyncio.run(scenario())
    assert refused.status_code == 503 and "2 requests are already waiting" in refused.json()["detail"]
    assert [response.status_code for response in accepted] == [200, 200, 200]


def test_sixteen_concurrent_clients_on_a_real_server_get_their_own_masks(loaded):
    sizes = [65, (65, 81), 81, (73, 65)]
    uploads = [png_bytes(demo_image(i, sizes[i % 4])) for i in range(16)]
    app = create_app(*loaded)
    with running_server(app) as url:
        barrier = threading.Barrier(16)

        def one_client(index: int) -> tuple[int, httpx.Response]:
            with httpx.Client(base_url=url, timeout=120) as client:
                barrier.wait()  # all sixteen send at once
                kind = ("json", "png")[index % 2]
                files = {"file": (f"image{index}.png", uploads[index], "image/png")}
                response = client.post("/predict", params={"format": kind}, files=files)
                if kind == "json" and response.status_code == 200:
                    response = client.get(response.json()["links"]["mask"])
                return index, response

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one_client, range(16)))
        with httpx.Client(base_url=url) as client:
            assert client.get("/health").json()["status"] == "ok"
    for index, response in results:
        _assert_predict_mask(_mask(response), loaded[0], uploads[index], f"request {index} got another mask")
    assert app.state.queue.images_run == 16  # each image ran exactly once, however they were batched
