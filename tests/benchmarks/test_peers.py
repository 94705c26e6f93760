"""benchmarks/peers.py: torchvision's model shares our weights, the peer target is judged, smp is optional."""

import sys

import pytest
import torch

from deeplab.deploy.benchmark import BenchmarkResult, Timing, format_report
from tests.fixtures import load_benchmark


@pytest.fixture(scope="module")
def peers():
    yield load_benchmark("peers")
    del sys.modules["peers"]


def test_the_torchvision_peer_and_ours_compute_the_same_logits(peers):
    ours = peers.our_model("deeplabv3_resnet101")
    theirs = peers.peers("deeplabv3_resnet101", ours)["torchvision eager"]()
    x = torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert ours.spec.output_stride == 8 and (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_the_peer_targets_are_judged_in_the_report_from_per_round_ratios(peers):
    def row(path, seconds, agreement=1.0, noise=(1.0, 1.02, 0.98, 1.0, 1.01)):
        return Timing("deeplabv3_resnet101", path, [seconds * n for n in noise], agreement=agreement)

    rows = [row("eager fp32", 2.0), row("fast fp32", 1.5), row(peers.AUTO, 0.9, 0.9995), row("torchvision eager", 2.0)]
    report = format_report(BenchmarkResult(513, 1, 5, 2, rows, []), peers.torchvision_target)
    assert ("target: fast fp32 >= 1.25x torchvision eager (v3 ResNet-101, same weights), argmax >= 99.9% the same: "
            "1.33x (rounds 1.33-1.33x), 100.00% [met]") in report
    assert "target: auto (the default runtime) >= 2.0x torchvision eager (v3 ResNet-101, same weights), argmax >= " \
           "99.9% the same: 2.22x (rounds 2.22-2.22x), 99.95% [met]" in report
    short = [row("fast fp32", 1.9), row(peers.AUTO, 0.9, 0.998), row("torchvision eager", 2.0)]
    assert [line.rsplit(": ", 1)[1] for line in peers.torchvision_target(BenchmarkResult(513, 1, 5, 2, short, []))] \
        == ["1.05x (rounds 1.05-1.05x), 100.00% [NOT met]", "2.22x (rounds 2.22-2.22x), 99.80% [NOT met]"]
    # torchvision's rounds disturbed apart from ours: the range is wide, so no verdict either way
    noisy = [row("fast fp32", 1.5), row("torchvision eager", 2.0, noise=(1.0, 1.6, 1.0, 0.7, 1.0))]
    (line,) = peers.torchvision_target(BenchmarkResult(513, 1, 5, 2, noisy, []))
    assert line.endswith("1.33x (rounds 0.93-2.09x), 100.00% [not judged: spread 87% over 5 rounds, needs <= 25%]")
