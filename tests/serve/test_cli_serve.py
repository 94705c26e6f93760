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


@pytest.mark.parametrize(("options", "message"), [
    (["--model", "model.onnx"], "--model model.onnx: serving an exported model file needs the deploy work"),
    (["--precision", "bf16"], "--precision bf16: only fp32 is available until the deploy work"),
], ids=["model", "precision"])
def test_options_waiting_for_the_deploy_work_are_refused(checkpoint, capsys, options, message):
    assert main(["serve", "--checkpoint", str(checkpoint), *options]) == 2
    assert message in capsys.readouterr().err


def test_missing_or_bad_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["serve"]) == 2
    assert "give the model to serve: --checkpoint PATH" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_predictor(tmp_path / "nope.pt")
