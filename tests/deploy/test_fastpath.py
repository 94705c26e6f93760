"""The fast eager path: BatchNorm folding keeps a model's outputs, leaves the caller's model alone, and folds only
the (conv, BN) pairs where nothing else reads the conv's output."""

import pytest
import torch
from torch import nn

from deeplab import create_model
from deeplab.deploy.fastpath import conv_bn_pairs, fast_copy, fold_pairs
from tests.fixtures import with_random_statistics


def _relative_difference(output, reference) -> float:
    return ((output - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize("name", ["deeplabv3plus_mobilenetv2", "deeplabv3_resnet50", "deeplabv3plus_xception41"])
def test_folding_keeps_the_outputs(name):
    torch.manual_seed(0)
    model = with_random_statistics(create_model(name, num_classes=3)).eval()
    x = torch.randn(2, 3, 65, 65, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
    fast = fast_copy(model, channels_last=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())  # all folded (timm's BatchNormAct2d too)
    with torch.no_grad():
        assert _relative_difference(fast(x), reference) < 1e-5


def test_an_msc_model_folds_every_batchnorm_without_a_warning(recwarn):
    # v2's multi-scale fusion runs one backbone at three scales: each BN is called three times, always on its
    # conv's output, so every pair folds (issue 24 reported a folding warning for such a model)
    torch.manual_seed(0)
    model = with_random_statistics(create_model("deeplabv3_mobilenetv2", num_classes=3,
                                                msc_scales=[1.0, 0.75, 0.5])).eval()
    x = torch.randn(1, 3, 71, 57, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
    fast = fast_copy(model, channels_last=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert not [w for w in recwarn if "BatchNorm folding" in str(w.message)]
    with torch.no_grad():
        assert _relative_difference(fast(x), reference) < 1e-5


def test_xceptions_batchnormact_keeps_its_activation_after_folding():
    model = with_random_statistics(create_model("deeplabv3plus_xception41", num_classes=3)).eval()
    acts = {name: m.act for name, m in model.named_modules() if type(m).__name__ == "BatchNormAct2d"}
    pairs, _ = conv_bn_pairs(model, torch.randn(1, 3, 65, 65))
    folded = set(acts) & {bn for _, bn in pairs}
    assert folded  # timm's BN + activation in one module: the case fold_pairs treats specially
    assert any(not isinstance(act, nn.Identity) for name, act in acts.items() if name in folded)
    fold_pairs(model, pairs)
    modules = dict(model.named_modules())
    for name in folded:  # the BN is gone, its own activation (the same module) stays in its place
        assert isinstance(modules[name], nn.Sequential) and modules[name][-1] is acts[name]


def test_the_callers_model_is_untouched():
    model = with_random_statistics(create_model("deeplabv3plus_mobilenetv2", num_classes=3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = fast_copy(model)
    assert model.training and all(m.training for m in model.modules())
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous()  # not turned channels-last


def test_channels_last_copy():
    model = with_random_statistics(create_model("deeplabv3plus_mobilenetv2", num_classes=3)).eval()
    weights = [m.weight for m in fast_copy(model).modules() if isinstance(m, nn.Conv2d)]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    plain = [m.weight for m in fast_copy(model, channels_last=False).modules() if isinstance(m, nn.Conv2d)]
    assert any(not w.is_contiguous(memory_format=torch.channels_last) for w in plain if w.shape[-1] > 1)


class _Net(nn.Module):
    """conv_a -> bn_a (foldable); conv_b -> bn_b, but conv_b's output is also read by `side` (not foldable);
    bn_c normalises the sum of two tensors (no conv feeds it directly)."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.side = nn.Conv2d(4, 4, 1)
        self.bn_c = nn.BatchNorm2d(4)

    def forward(self, x):
        a = torch.relu(self.bn_a(self.conv_a(x)))
        b = self.conv_b(a)
        return self.bn_c(self.bn_b(b) + self.side(b))


def test_conv_bn_pairs_finds_only_the_pairs_whose_conv_output_goes_to_the_bn_alone():
    net = with_random_statistics(_Net()).eval()
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    pairs, output = conv_bn_pairs(net, x)
    assert pairs == [("conv_a", "bn_a")]
    with torch.no_grad():
        reference = net(x)
    assert torch.equal(output, reference)
    fold_pairs(net, pairs)
    assert isinstance(net.bn_a, nn.Identity) and isinstance(net.bn_b, nn.BatchNorm2d)
    with torch.no_grad():
        assert _relative_difference(net(x), reference) < 1e-5
