"""benchmarks/ablation_decoder.py runs end to end on a tiny budget and prints its table."""

import json

import pytest

from tests.fixtures import load_benchmark


@pytest.fixture(scope="module")
def ablation():
    return load_benchmark("ablation_decoder")


def test_the_two_models_share_the_encoder(ablation):
    from deeplab.config import load_config
    from deeplab.engine.checkpoint import model_from_config

    v3, v3plus, same = ablation.PAIRS["mobilenetv2"]
    plain = model_from_config(load_config(None, [f"model.name={v3}", *same]), num_classes=3)
    decoder = model_from_config(load_config(None, [f"model.name={v3plus}"]), num_classes=3)
    assert plain.backbone.state_dict().keys() == decoder.backbone.state_dict().keys()
    assert plain.head[0].state_dict().keys() == decoder.head.aspp.state_dict().keys()  # the same ASPP
    assert [b[0].dilation for b in plain.head[0].convs[1:-1]] == [b[0].dilation for b in decoder.head.aspp.convs[1:-1]]


def test_tiny_run_prints_the_table(ablation, tmp_path, capsys):
    out = tmp_path / "ablation.json"
    argv = ["--seeds", "3", "--iterations", "2", "--batch-size", "2", "--bands", "1", "3",
            "--set", "data.image_size=33", "data.num_images=2", "data.crop_size=33", "data.num_workers=0",
            "--run-dir", str(tmp_path / "runs"), "--json", str(out)]
    assert ablation.main(argv) == 0
    text = capsys.readouterr().out
    assert "| model | mIoU % | trimap 1 px % | trimap 3 px % |" in text
    assert "| v3, bilinear (deeplabv3_mobilenetv2) |" in text and "| v3+, decoder (deeplabv3plus_mobilenetv2) |" in text
    assert "| decoder gain (v3+ − v3) |" in text and "seeds 3; each run 2 iterations at batch 2, crop 33" in text
    results = json.loads(out.read_text())["results"]
    assert {len(runs) for runs in results.values()} == {1}
    for runs in results.values():
        for figures in runs:
            assert 0 <= figures["miou"] <= 1 and 0 <= figures["band_1"] <= 1
    assert (tmp_path / "runs" / "deeplabv3plus_mobilenetv2_seed3" / "last.pt").is_file()


def test_table_gives_mean_and_sample_std_over_seeds_and_the_gain(ablation):
    results = {"a": [{"miou": 0.50, "band_4": 0.30}, {"miou": 0.52, "band_4": 0.34}],
               "b": [{"miou": 0.55, "band_4": 0.40}, {"miou": 0.53, "band_4": 0.38}]}
    table = ablation.format_table(results, {"a": "v3", "b": "v3+"}, [4])
    assert "| v3 | 51.00 ± 1.41 | 32.00 ± 2.83 |" in table
    assert "| v3+ | 54.00 ± 1.41 | 39.00 ± 1.41 |" in table
    assert "| decoder gain (v3+ − v3) | +3.00 | +7.00 |" in table
