"""deeplab.deploy.runners: the optional runtimes' runners leave the process as they found it."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install -e '.[openvino]'")

# Two runners made and released in that order, then a SIGTERM handled in Python: with a Core per runner OpenVINO's
# CPU plugin left the main thread's alternate signal stack on freed memory and the signal killed the process.
_TWO_RUNNERS_THEN_SIGTERM = textwrap.dedent("""
    import gc, signal, sys
    from deeplab.deploy.runners import OpenVinoRunner
    first = OpenVinoRunner(sys.argv[1])
    second = OpenVinoRunner(sys.argv[1])
    del first
    gc.collect()
    del second
    gc.collect()
    caught = []
    signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    signal.raise_signal(signal.SIGTERM)
    print("caught", caught)
""")


def test_released_openvino_runners_leave_signal_delivery_working(tmp_path):
    path = tmp_path / "conv.onnx"
    torch.onnx.export(nn.Conv2d(3, 2, 1), (torch.zeros(1, 3, 4, 4),), str(path), dynamo=False)
    done = subprocess.run([sys.executable, "-c", _TWO_RUNNERS_THEN_SIGTERM, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip() == "caught [15]"
