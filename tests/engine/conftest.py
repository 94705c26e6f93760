import pytest

# A tiny, fast run on the embedded demo set: 65 px images, a few steps, no worker processes.
TINY = [
    "model.name=deeplabv3plus_mobilenetv2", "data.name=demo", "data.image_size=65", "data.num_images=4",
    "data.crop_size=65", "data.num_workers=0", "train.batch_size=2", "train.iterations=4", "train.eval_every=2",
    "train.progress=false", "train.lr=0.01",
]


@pytest.fixture
def tiny(tmp_path):
    def overrides(*extra: str, run: str = "run") -> list[str]:
        return [*TINY, f"train.run_dir={tmp_path / run}", *extra]

    return overrides
