"""The HTTP API against a real checkpoint: every endpoint, the masks, and what bad uploads get."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from deeplab.data.demo import DEMO_CLASSES, DEMO_PALETTE
from deeplab.imageio import overlay, read_image
from deeplab.serve import ServeSettings, create_app

from .conftest import demo_image, write_demo_png


def png_bytes(array: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def client(loaded):
    settings = ServeSettings(max_upload_bytes=200_000, max_side=300)
    with TestClient(create_app(*loaded, settings=settings), raise_server_exceptions=False) as test_client:
        yield test_client


def expected_mask(predictor, data: bytes) -> np.ndarray:
    return predictor.predict(read_image(io.BytesIO(data))).numpy()


def test_health_and_info(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["waiting"] == 0 and health["busy"] is False
    info = client.get("/info").json()
    assert info["model"] == "deeplabv3plus_mobilenetv2"
    assert info["output_stride"] == 16
    assert [c["name"] for c in info["classes"]] == list(DEMO_CLASSES)
    assert info["palette"] == [list(colour) for colour in DEMO_PALETTE]
    assert info["num_classes"] == 7 and info["precision"] == "fp32"
    assert info["limits"]["max_upload_bytes"] == 200_000 and info["limits"]["max_side"] == 300


def test_page_static_files_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and 'src="static/app.js"' in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert "http://" not in response.text and "https://" not in response.text  # works offline: no CDN
    assert "http" not in page.text
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/info", "/health", "/results/{result_id}/{kind}.png"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]


def test_predict_json_areas_and_links(client, predictor):
    data = png_bytes(demo_image(0, (81, 113)))
    response = client.post("/predict", files={"file": ("scene.png", data, "image/png")})
    assert response.status_code == 200
    answer = response.json()
    mask = expected_mask(predictor, data)
    counts = np.bincount(mask.ravel(), minlength=7)
    assert (answer["width"], answer["height"], answer["filename"]) == (113, 81, "scene.png")
    assert len(answer["classes"]) >= 3, "the test model should predict several classes"
    assert {c["id"]: c["pixels"] for c in answer["classes"]} == {i: int(n) for i, n in enumerate(counts) if n}
    assert [c["pixels"] for c in answer["classes"]] == sorted((c["pixels"] for c in answer["classes"]), reverse=True)
    assert sum(c["fraction"] for c in answer["classes"]) == pytest.approx(1.0, abs=1e-5)
    assert all(c["name"] == DEMO_CLASSES[c["id"]] and c["color"] == list(DEMO_PALETTE[c["id"]])
               for c in answer["classes"])

    index = client.get(answer["links"]["mask"])
    assert index.status_code == 200 and index.headers["content-type"] == "image/png"
    assert 'filename="scene_mask.png"' in index.headers["content-disposition"]
    index_image = Image.open(io.BytesIO(index.content))
    assert index_image.mode == "P" and np.array_equal(np.asarray(index_image), mask)
    image = read_image(io.BytesIO(data))
    half = client.get(answer["links"]["overlay"], params={"alpha": 0.25})
    assert np.array_equal(decoded(half.content), overlay(image, torch.from_numpy(mask), DEMO_PALETTE, 0.25).numpy())
    assert np.array_equal(decoded(client.get(answer["links"]["image"]).content), image.permute(1, 2, 0).numpy())
    colour = decoded(client.get(answer["links"]["color"]).content)
    assert np.array_equal(colour, np.asarray(DEMO_PALETTE, dtype=np.uint8)[mask])


def test_predict_png_and_overlay_from_raw_bytes(client, predictor):
    data = png_bytes(demo_image(1, 65))
    mask = expected_mask(predictor, data)
    for content_type in ("image/png", "application/octet-stream", "application/x-www-form-urlencoded"):
        response = client.post("/predict", params={"format": "png"}, content=data,
                               headers={"content-type": content_type})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        index_image = Image.open(io.BytesIO(response.content))
        assert index_image.mode == "P" and np.array_equal(np.asarray(index_image), mask)
    response = client.post("/predict?format=overlay&alpha=0.8", content=data, headers={"content-type": "image/png"})
    expected = overlay(read_image(io.BytesIO(data)), torch.from_numpy(mask), DEMO_PALETTE, 0.8)
    assert np.array_equal(decoded(response.content), expected.numpy())


def test_unknown_or_evicted_result_is_a_clear_404(loaded):
    with TestClient(create_app(*loaded, settings=ServeSettings(max_results=2))) as client:
        data = png_bytes(demo_image(2, 65))
        links = [client.post("/predict", content=data, headers={"content-type": "image/png"}).json()["links"]
                 for _ in range(3)]
        assert client.get(links[2]["mask"]).status_code == 200
        assert client.get(links[1]["overlay"]).status_code == 200
        gone = client.get(links[0]["mask"])
        assert gone.status_code == 404 and "last 2 predictions" in gone.json()["detail"]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _forged_png_header(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width x height`` RGB pixels, followed by almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _ico() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(demo_image(0, 32)).save(buffer, format="ICO")
    return buffer.getvalue()


GOOD = png_bytes(demo_image(3, 65))
BAD_UPLOADS = {
    "not an image": (b"just some text, certainly not pixels", "image/png", 415, "is not an image"),
    "json body": (b'{"image": "x"}', "application/json", 415, "unsupported Content-Type 'application/json'"),
    "unsupported format": (_ico(), "image/x-icon", 415, "unsupported image format ICO"),
    "empty": (b"", "image/png", 422, "empty"),
    "truncated pixels": (GOOD[: len(GOOD) // 2], "image/png", 422, "cannot decode the PNG image"),
    "truncated header": (GOOD[:20], "image/png", 422, "corrupt or truncated PNG"),
    "too many bytes": (b"\0" * 200_001, "image/png", 413, "upload too large: the limit is 200000 bytes"),
    "side over the limit": (png_bytes(np.zeros((8, 301, 3), np.uint8)), "image/png", 413, "301x8 pixels"),
    "decompression bomb": (_forged_png_header(100_000, 100_000), "image/png", 413, "image too large"),
    "huge side, no pixels": (_forged_png_header(20_000, 10), "image/png", 413, "20000x10 pixels"),
}


# A multipart file part has no Content-Type of its own for the server to refuse, so "json body" is raw only.
@pytest.mark.parametrize(("case", "multipart"), [(case, False) for case in BAD_UPLOADS] +
                         [(case, True) for case in BAD_UPLOADS if case != "json body"])
def test_bad_upload_gets_4xx_naming_the_problem_and_the_server_keeps_answering(client, case, multipart):
    body, content_type, status, message = BAD_UPLOADS[case]
    if multipart:
        response = client.post("/predict", files={"file": ("upload.bin", body, content_type)})
    else:
        response = client.post("/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["detail"]
    assert client.get("/health").status_code == 200
    assert client.post("/predict", content=GOOD, headers={"content-type": "image/png"}).status_code == 200


@pytest.mark.parametrize("multipart", [False, True], ids=["raw", "multipart"])
def test_body_over_the_limit_is_refused_while_streaming(loaded, multipart):
    """Without a Content-Length to go by, the limit holds as the body arrives: reading stops at the limit."""
    app = create_app(*loaded, settings=ServeSettings(max_upload_bytes=50_000))
    head = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n' if multipart else b""
    content_type = b"multipart/form-data; boundary=XyZ" if multipart else b"image/png"
    pulled, sent = 0, []

    async def receive():
        nonlocal pulled
        pulled += 1
        body = (head if pulled == 1 else b"") + b"\0" * 10_000
        return {"type": "http.request", "body": body, "more_body": pulled < 100}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", content_type), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert "50000 bytes" in json.loads(sent[1]["body"])["detail"]
    # Read up to the chunk that takes the total past 50,000 bytes (the form's part header counts too), no further.
    assert pulled == (5 if multipart else 6), "the body should be read only until it passes the limit"


def test_form_without_a_file_and_bad_parameters_are_422(client):
    response = client.post("/predict", files={"note": (None, "no file here")})  # a multipart text field
    assert response.status_code == 422 and "no file part" in response.json()["detail"]
    response = client.post("/predict?format=jpeg&alpha=2", content=GOOD, headers={"content-type": "image/png"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "format" in detail and "alpha" in detail


def test_upload_modes_decode_like_deeplab_predict(client, predictor):
    """Grayscale, 16-bit, RGBA and EXIF-rotated uploads give the mask of the image deeplab's reader sees."""
    rgb = demo_image(4, (72, 96))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG", exif=exif, quality=95)
    uploads = {
        "gray": png_bytes(rgb[..., 1]),
        "16-bit": png_bytes((rgb[..., 0].astype(np.uint16) * 257).astype(np.uint16)),
        "rgba": png_bytes(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
        "exif": jpeg.getvalue(),
    }
    for name, data in uploads.items():
        response = client.post("/predict?format=png", files={"file": (name, data)})
        assert response.status_code == 200, (name, response.text)
        mask = np.asarray(Image.open(io.BytesIO(response.content)))
        assert np.array_equal(mask, expected_mask(predictor, data)), name
    assert np.asarray(Image.open(io.BytesIO(response.content))).shape == (96, 72)  # EXIF rotation applied


def test_same_masks_as_deeplab_predict_command(checkpoint, tmp_path):
    """The contract: the same image and options give the same index PNG as ``deeplab predict``."""
    from deeplab.cli import main
    from deeplab.serve import load_predictor

    inputs = [write_demo_png(tmp_path / f"in{i}.png", i, size) for i, size in enumerate([65, (90, 77), 129])]
    options = ["--scales", "0.75", "1", "--flip"]
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, inputs), "--out", str(tmp_path / "out"),
                 "--device", "cpu", *options]) == 0
    served = load_predictor(checkpoint, device="cpu", scales=(0.75, 1.0), flip=True)
    with TestClient(create_app(*served)) as client:
        for path in inputs:
            response = client.post("/predict?format=png", files={"file": (path.name, path.read_bytes())})
            assert response.content == (tmp_path / "out" / path.name).read_bytes(), path.name


def test_favicon_is_served_and_linked_from_the_page(client):
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.content.startswith(b"<svg") and icon.content.rstrip().endswith(b"</svg>")
    assert '<link rel="icon" href="static/favicon.svg"' in client.get("/").text
    linked = client.get("/static/favicon.svg")
    assert linked.status_code == 200 and linked.content == icon.content
    assert "/favicon.ico" not in client.get("/openapi.json").json()["paths"]
