"""Distributed helpers: the torchrun environment, devices, and BatchNorm over the global batch on CPU."""

import textwrap

import pytest
import torch
from torch import nn

from deeplab import create_model
from deeplab.devices import resolve_device
from deeplab.engine.dist import CPUSyncBatchNorm, DistEnv, convert_sync_batchnorm, env_from_torchrun

from .launch import run_processes, torchrun_command


def test_environment_from_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert env_from_torchrun() == DistEnv(0, 1, 0) and env_from_torchrun().is_main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = env_from_torchrun()
    assert (env.rank, env.world_size, env.local_rank, env.is_main, env.distributed) == (3, 4, 1, False, True)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(RuntimeError, match="RANK=4 is not within WORLD_SIZE=4"):
        env_from_torchrun()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="--device=.cuda. but CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_conversion_keeps_weights_statistics_and_state_dict_names():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3)
    model.backbone.features[0][1].running_var.fill_(2.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    synced = convert_sync_batchnorm(model, torch.device("cpu"))
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    assert any(isinstance(m, CPUSyncBatchNorm) for m in synced.modules())
    after = synced.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_timms_batchnorm_with_activation_keeps_its_activation():
    """timm's encoders (and Xception) fuse norm and activation in BatchNormAct2d: synced, the model still
    computes the same (a plain synced BatchNorm in its place would drop the activation)."""
    torch.manual_seed(0)
    model = create_model("deeplabv3_tu-test_efficientnet", num_classes=3).eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        expected = model(x)
        synced = convert_sync_batchnorm(model, torch.device("cpu"))
        assert any(hasattr(m, "act") and isinstance(m, CPUSyncBatchNorm) for m in synced.modules())
        assert torch.equal(synced(x), expected)


def test_in_one_process_it_is_plain_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6) * 3 + 1
    plain = nn.BatchNorm2d(4)
    synced = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4)), torch.device("cpu"))[0]
    assert torch.equal(synced(x), plain(x)) and torch.equal(synced.running_var, plain.running_var)


WORKER = """
import sys, torch, torch.distributed as dist
from torch import nn
from deeplab.engine.dist import convert_sync_batchnorm
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
x, g = torch.randn(6, 3, 5, 4) * 2 + 1, torch.randn(6, 3, 5, 4)
net = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.ReLU(inplace=True),
                                           nn.Conv2d(3, 3, 1)), torch.device("cpu"))
part = slice(3 * rank, 3 * rank + 3)
mine = x[part].clone().requires_grad_()
y = net(mine)
(y * g[part]).sum().backward()
grads = [p.grad for p in net.parameters()]
for grad in grads:
    dist.all_reduce(grad)
out = {"y": y.detach(), "dx": mine.grad, "grads": grads, "running_var": net[1].running_var}
torch.save(out, sys.argv[1] + str(rank))
dist.destroy_process_group()
"""


def test_two_processes_normalise_and_backpropagate_like_one_batch(tmp_path):
    (tmp_path / "worker.py").write_text(textwrap.dedent(WORKER))
    result = run_processes(torchrun_command(str(tmp_path / "worker.py"), str(tmp_path / "out")), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    parts = [torch.load(tmp_path / f"out{r}") for r in range(2)]
    torch.manual_seed(0)
    x, g = torch.randn(6, 3, 5, 4) * 2 + 1, torch.randn(6, 3, 5, 4)
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.ReLU(inplace=True), nn.Conv2d(3, 3, 1))
    x.requires_grad_()
    y = net(x)
    (y * g).sum().backward()
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([p["dx"] for p in parts]), x.grad, atol=1e-5, rtol=1e-5)
    for ours, param in zip(parts[0]["grads"], net.parameters(), strict=True):
        torch.testing.assert_close(ours, param.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts[0]["running_var"], net[1].running_var)
    assert torch.equal(parts[0]["running_var"], parts[1]["running_var"])
