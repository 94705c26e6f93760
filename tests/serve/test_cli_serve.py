"""``deeplab serve`` from the command line: a real server process, and clear refusals."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from deeplab.cli import main
from deeplab.imageio import read_image
from deeplab.serve import load_predictor

from .conftest import demo_image, free_port
from .test_api import png_bytes

REPO = Path(__file__).resolve().parents[2]


def test_deeplab_serve_runs_a_server_until_stopped(checkpoint, predictor):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "deeplab.cli", "serve", "--checkpoint", str(checkpoint), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--max-side", "100"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the server did not come up in 2 minutes"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        data = png_bytes(demo_image(0, 65))
        response = httpx.post(f"{url}/predict", params={"format": "png"}, files={"file": ("a.png", data)}, timeout=60)
        assert response.status_code == 200
        mask = np.asarray(Image.open(io.BytesIO(response.content)))
        assert np.array_equal(mask, predictor.predict(read_image(io.BytesIO(data))).numpy())
        too_big = httpx.post(f"{url}/predict", content=png_bytes(demo_image(1, 101)),
                             headers={"content-type": "image/png"}, timeout=60)
        assert too_big.status_code == 413 and "longest side allowed is 100" in too_big.json()["detail"]
        assert httpx.get(f"{url}/info", timeout=10).json()["source"] == str(checkpoint)
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert f"serving deeplabv3plus_mobilenetv2 ({checkpoint}) on http://127.0.0.1:{port}/" in output


def test_an_onnx_export_serves_the_checkpoints_masks(checkpoint, predictor, tmp_path):
    pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install -e '.[deploy]'")
    from deeplab.deploy.export import export_model

    onnx_file = tmp_path / "model.onnx"
    export_model(checkpoint, onnx_file, format="onnx")
    served, info = load_predictor(model=onnx_file)
    assert (info.name, info.output_stride, info.source) == ("deeplabv3plus_mobilenetv2", 16, str(onnx_file))
    assert served.classes == predictor.classes and served.palette == predictor.palette
    for index, side in ((0, 65), (1, 81)):
        image = read_image(io.BytesIO(png_bytes(demo_image(index, side))))
        agree = (served.predict(image) == predictor.predict(image)).float().mean()
        assert agree > 0.999, f"{side} px: ONNX and checkpoint masks agree on only {agree:.4%} of pixels"


def test_precision_reaches_the_served_model(checkpoint, capsys, monkeypatch):
    from deeplab.deploy import precision as runtime

    # Native bf16 is faked (AVX512-BF16): only the precision's way to the served model is under test here; the
    # bf16 numbers themselves are checked in tests/test_inference.py where the CPU has it.
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    _, info = load_predictor(checkpoint, precision="bf16")
    assert info.precision == "bf16"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512f"}))
    assert main(["serve", "--checkpoint", str(checkpoint), "--precision", "bf16", "--device", "cpu"]) == 2
    assert "bf16 needs a CPU with AVX512-BF16 or AMX" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(checkpoint), "--precision", "fp16", "--device", "cpu"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


def test_missing_or_bad_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["serve"])
    assert "one of the arguments --checkpoint --model is required" in capsys.readouterr().err
    with pytest.raises(ValueError, match="give exactly one model to serve"):
        load_predictor()
    assert main(["serve", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "model file not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_predictor(tmp_path / "nope.pt")
