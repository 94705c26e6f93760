"""The FastAPI app: ``GET /`` (the page), ``POST /predict``, ``GET /results/...``, ``GET /info``, ``GET /health``.

``create_app`` takes any object with the ``deeplab.Predictor`` interface (``predict``, ``classes``,
``palette``, ``num_classes``; ``predict_batch`` for batching) and never builds one:
``deeplab.serve.load_predictor`` does that.
"""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .batching import PredictionQueue, QueueFull
from .loading import ModelInfo
from .results import RENDERINGS, Prediction, ResultStore, render_png
from .uploads import SUPPORTED_FORMATS, decode_image, read_upload

STATIC_DIR = Path(__file__).with_name("static")
_FORMATS = {"png": "mask", "overlay": "overlay", "color": "color"}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/*": _BINARY,
    "application/octet-stream": _BINARY,
}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"description": "upload larger than the byte limit, or an image side longer than the limit"},
    415: {"description": "not an image, or an image format / Content-Type that is not taken"},
    422: {"description": "empty, truncated or undecodable image; bad query parameter"},
    503: {"description": "too many requests waiting"},
}


@dataclass
class ServeSettings:
    """Limits of a server. Uploads past ``max_upload_bytes`` or ``max_side`` get 413."""

    max_upload_bytes: int = 20 * 2**20
    max_side: int = 4096
    max_batch: int = 8
    max_queue: int = 64
    max_results: int = 32
    max_result_bytes: int = 256 * 2**20


def create_app(predictor: Any, info: ModelInfo | None = None, settings: ServeSettings | None = None) -> FastAPI:
    """The web app serving ``predictor``: the page, the JSON/PNG API and its OpenAPI docs (``/docs``).

    A binary model's maps hold 0 (background) and 1 (foreground, its sigmoid above the predictor's threshold).
    A multilabel model's answer gives each class's area (the pixels that hold it) and its mask packs the classes
    as bits (see :func:`~deeplab.serve.results.render_png`).
    """
    if getattr(predictor, "in_channels", 3) != 3:
        raise ValueError(f"deeplab serve decodes uploads as RGB images; this model reads {predictor.in_channels} "
                         "channels: use deeplab predict with .npy or multi-band TIFF files")
    info = info or ModelInfo()
    settings = settings or ServeSettings()
    queue = PredictionQueue(predictor, max_batch=settings.max_batch, max_queue=settings.max_queue)
    store = ResultStore(settings.max_results, settings.max_result_bytes)
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    icon = (STATIC_DIR / "favicon.svg").read_bytes()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await queue.close()

    app = FastAPI(title="deeplab serve", version=__version__, lifespan=lifespan,
                  description=f"Semantic segmentation with {info.name}: POST an image to /predict.")
    app.state.queue, app.state.results = queue, store
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:  # browsers and bookmarks ask for it whatever the page links
        return Response(icon, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/health", summary="Liveness (answers while a prediction runs), queue length, images and batches run")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "waiting": queue.waiting, "busy": queue.busy, "images": queue.images_run,
                "batches": queue.batches_run}

    @app.get("/info", summary="The served model: name, classes, palette, output stride, limits")
    async def model_info() -> dict[str, Any]:
        classes = [{"id": i, "name": name, "color": list(colour)}
                   for i, (name, colour) in enumerate(zip(predictor.classes, predictor.palette, strict=False))]
        return {"model": info.name, "output_stride": info.output_stride, "source": info.source,
                "device": info.device, "precision": info.precision, "num_classes": predictor.num_classes,
                "task": getattr(predictor, "task", "multiclass"), "classes": classes,
                "palette": [list(colour) for colour in predictor.palette[: len(predictor.classes)]],
                "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_side": settings.max_side,
                           "formats": list(SUPPORTED_FORMATS)},
                "batching": {"max_batch": settings.max_batch, "max_queue": settings.max_queue}}

    @app.post("/predict", summary="Segment an image (multipart 'file' field or raw bytes)",
              openapi_extra=_UPLOAD_BODY, responses={200: {"content": {"image/png": {}}}, **_ERRORS})
    async def predict(
        request: Request,
        format: Literal["json", "png", "overlay", "color"] = Query(
            "json", description="json: class areas + links; png: index mask (palette PNG); overlay; color"),
        alpha: float = Query(0.5, ge=0.0, le=1.0, description="overlay opacity of the class colours"),
    ) -> Any:
        upload = await read_upload(request, settings.max_upload_bytes)
        image = await run_in_threadpool(decode_image, upload.data, settings.max_side)
        try:
            mask = await queue.predict(image)
        except QueueFull as err:
            raise HTTPException(503, str(err)) from err
        prediction = Prediction(image, mask, upload.filename)
        if format != "json":
            data = await run_in_threadpool(_render, prediction, _FORMATS[format], predictor.palette, alpha)
            return _png(data, prediction, _FORMATS[format])
        areas = await run_in_threadpool(_areas, mask, predictor)
        result_id = store.add(prediction)
        links = {kind: str(request.url_for("result", result_id=result_id, kind=kind)) for kind in RENDERINGS}
        return {"id": result_id, "filename": upload.filename, "width": int(mask.shape[-1]),
                "height": int(mask.shape[-2]), "model": info.name, "classes": areas, "links": links}

    @app.get("/results/{result_id}/{kind}.png", name="result", responses={200: {"content": {"image/png": {}}}},
             summary="A recent prediction (links of a JSON answer): mask, color, overlay or image")
    async def result(
        result_id: str,
        kind: Literal["mask", "color", "overlay", "image"],
        alpha: float = Query(0.5, ge=0.0, le=1.0, description="overlay opacity of the class colours"),
    ) -> Response:
        prediction = store.get(result_id)
        if prediction is None:
            raise HTTPException(404, f"no result {result_id!r}: results are kept for the last "
                                     f"{settings.max_results} predictions only; predict again")
        data = await run_in_threadpool(_render, prediction, kind, predictor.palette, alpha)
        return _png(data, prediction, kind)

    return app


def _render(prediction: Prediction, kind: str, palette: Any, alpha: float) -> bytes:
    """:func:`render_png`, with what it cannot draw (a multilabel mask of more than 8 classes) as a 422."""
    try:
        return render_png(prediction, kind, palette, alpha)
    except ValueError as err:
        raise HTTPException(422, str(err)) from err


def _areas(mask: torch.Tensor, predictor: Any) -> list[dict[str, Any]]:
    """The classes present in ``mask``, largest first: id, name, colour, pixel count and area fraction."""
    if mask.ndim == 3:  # multilabel: the pixels that hold each class
        counts, pixels = mask.flatten(1).long().sum(1).tolist(), mask[0].numel()
    else:
        counts, pixels = torch.bincount(mask.flatten(), minlength=len(predictor.classes)).tolist(), mask.numel()
    present = sorted((i for i, count in enumerate(counts) if count), key=lambda i: -counts[i])
    return [{"id": i, "name": predictor.classes[i], "color": list(predictor.palette[i]), "pixels": counts[i],
             "fraction": round(counts[i] / pixels, 6)} for i in present]


def _png(data: bytes, prediction: Prediction, kind: str) -> Response:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(prediction.filename or "image").stem) or "image"
    return Response(data, media_type="image/png",
                    headers={"Content-Disposition": f'inline; filename="{stem}_{kind}.png"'})


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 for bad parameters, as one sentence like every other error here."""
    assert isinstance(exc, RequestValidationError)
    problems = [f"{' '.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()]
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)
