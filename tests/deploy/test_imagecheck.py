"""precision auto: bf16 where the CPU has bf16 units and it passes the check on real images (the shipped sample
images or the user's), else fp32; the runtime: line says which and why."""

import pytest
import torch

import deeplab.deploy.precision as precision
import deeplab.deploy.runtimes as runtimes
from deeplab.deploy.imagecheck import SHIPPED_DIR, check_image_paths, check_images, compare_on_images
from deeplab.imageio import read_image, save_rgb_png
from deeplab.inference import Predictor
from tests.fixtures import three_class_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return three_class_checkpoint(tmp_path_factory.mktemp("imagecheck"))


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with bf16 units (this test's subject is the check, not the CPU that runs it); the torch runtime."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(runtimes, "cpu_has_bf16", lambda: True)
    monkeypatch.delenv("DEEPLAB_PRECISION")


def test_the_shipped_images_are_small_natural_pictures_with_their_licence():
    paths, source = check_image_paths()
    assert [path.stem for path in paths] == ["astronaut", "chelsea", "coffee", "rocket"]
    assert source == "sample images shipped with deeplab"
    for path in paths:
        image = read_image(path)
        assert image.shape[0] == 3 and max(image.shape[1:]) == 160 and path.stat().st_size < 12_000
        assert image.float().std() > 20  # a picture, not a flat fill
    licence = (SHIPPED_DIR / "LICENSE.txt").read_text()
    assert all(name in licence for name in ("astronaut", "chelsea", "coffee", "rocket", "public domain", "CC0"))


def test_agreement_counts_pixels_and_miou_against_the_reference():
    images, source = check_images((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    def reference(x):  # class 1 where the red channel is bright, 2 where blue is, else 0
        return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0], x[:, 2]], dim=1)

    same = compare_on_images(reference, reference, images, source)
    assert (same.pixels, same.miou, same.images, same.passed) == (1.0, 1.0, 4, True)

    def off_by_a_band(x):  # the top 8 rows of every image get class 0
        logits = reference(x).clone()
        logits[:, 0, :8] = 100.0
        return logits

    worse = compare_on_images(reference, off_by_a_band, images, source)
    total = sum(image.shape[-2] * image.shape[-1] for image in images)
    assert worse.pixels < 1.0 and not worse.passed
    assert 1 - worse.pixels <= 8 * sum(image.shape[-1] for image in images) / total
    assert worse.describe().startswith(f"on 4 sample images shipped with deeplab: same class as fp32 on "
                                       f"{100 * worse.pixels:.2f}% of pixels (>= 99.5%), mIoU")


def test_a_class_on_few_pixels_is_left_out_of_the_miou_but_not_of_the_agreement():
    image = torch.zeros(1, 3, 100, 100)
    image[:, 0, :50] = 1.0  # class 1 on the top half, class 0 below
    image[:, 2, 60, :30] = 2.0  # class 2 on 30 pixels: 0.3% of the map

    def reference(x):
        return torch.stack([torch.full_like(x[:, 0], 0.5), x[:, 0], x[:, 2]], dim=1)

    def loses_the_small_class(x):  # 15 of the 30 pixels of class 2 become class 0: its IoU is 50%
        logits = reference(x).clone()
        logits[:, 2, 60, :15] = 0.0
        return logits

    result = compare_on_images(reference, loses_the_small_class, [image], "one image")
    # class 0 (4,970 pixels, 15 more predicted) and class 1 count; class 2's 50% would have made it 83.2
    assert result.pixels == pytest.approx(1 - 15 / 10_000)
    assert result.miou == pytest.approx((4970 / 4985 + 1) / 2) and result.passed
    assert "classes on >= 1% of its pixels" in result.describe()


def test_precision_auto_runs_bf16_when_it_passes_the_check_on_real_images(checkpoint, bf16_cpu):
    path, model = checkpoint
    predictor = Predictor.from_file(path, runtime="torch")  # precision: the default, auto
    line = predictor.runtime.describe()
    assert predictor.precision == "bf16" and predictor._autocast == torch.bfloat16
    assert line.startswith("runtime: torch bf16 (") and "precision auto: bf16" in line
    assert "check passed: on 4 sample images shipped with deeplab: same class as fp32 on" in line
    assert Predictor.from_file(path, runtime="torch", precision="fp32").precision == "fp32"  # exact when asked


def test_precision_auto_keeps_fp32_when_bf16_fails_the_check(checkpoint, bf16_cpu, monkeypatch, tmp_path):
    path, _ = checkpoint
    for index in range(3):  # the user's images
        image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(index))
        save_rgb_png(image.permute(1, 2, 0), tmp_path / f"{index}.png")
    real = runtimes._as_used

    def bf16_that_flips_classes(candidate, runtime, precision_name):
        run = real(candidate, runtime, precision_name)
        if precision_name == "fp32":
            return run
        return lambda x: run(x).roll(1, dims=1)  # every pixel gets another class

    monkeypatch.setattr(runtimes, "_as_used", bf16_that_flips_classes)
    predictor = Predictor.from_file(path, runtime="torch", check_folder=tmp_path)
    line = predictor.runtime.describe()
    assert predictor.precision == "fp32" and predictor._autocast is None
    assert "precision auto: fp32 (bf16 not used: --runtime torch disagrees with the fp32 reference on this model " \
           f"at bf16 (on 3 images of {tmp_path}: same class as fp32 on 0.00% of pixels" in line


def test_precision_auto_is_fp32_on_a_cpu_without_bf16_units(checkpoint, monkeypatch):
    path, _ = checkpoint
    monkeypatch.delenv("DEEPLAB_PRECISION")
    monkeypatch.setattr(runtimes, "cpu_has_bf16", lambda: False)
    predictor = Predictor.from_file(path, runtime="torch")
    assert predictor.precision == "fp32"
    assert "precision auto: fp32 (this CPU has no bf16 units" in predictor.runtime.describe()
    monkeypatch.setenv("DEEPLAB_PRECISION", "fp16")
    with pytest.raises(ValueError, match="--runtime torch: fp16 needs a CUDA device"):
        Predictor.from_file(path, runtime="torch")
