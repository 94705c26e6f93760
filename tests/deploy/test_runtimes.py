"""deeplab.deploy.runtimes: every runtime verified against fp32 at load; `auto` times them once, keeps the fastest."""

import importlib.util

import pytest
import torch

import deeplab.deploy.runtimes as runtimes
from deeplab.cli import main
from deeplab.imageio import read_image, save_rgb_png
from deeplab.inference import Predictor
from tests.fixtures import three_class_checkpoint

pytest.importorskip("onnxruntime", reason="the deploy extra is not installed: pip install -e '.[deploy]'")

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="the openvino extra is not installed: "
                                                             "pip install -e '.[openvino]'")
# Without OpenVINO, ONNX Runtime stands in where a test needs a runtime other than torch.
OTHER = "openvino" if HAS_OPENVINO else "onnxruntime"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return three_class_checkpoint(tmp_path_factory.mktemp("runtimes"))


def _logits(predictor: Predictor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(1, 3, 65, 81, generator=torch.Generator().manual_seed(5))
    return predictor.logits_for_batch(x), x


@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_an_explicit_runtime_runs_the_checkpoint_as_torch_does(checkpoint, runtime):
    path, model = checkpoint
    predictor = Predictor.from_file(path, runtime=runtime)
    assert predictor.runtime.runtime == runtime and "as asked, verified against fp32" in predictor.runtime.describe()
    got, x = _logits(predictor)
    with torch.no_grad():
        expected = model(x)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_auto_times_the_verified_runtimes_once_and_keeps_the_fastest(checkpoint, monkeypatch):
    path, _ = checkpoint
    monkeypatch.delenv("DEEPLAB_RUNTIME")  # the default: auto
    first = Predictor.from_file(path)
    choice = first.runtime
    assert set(choice.seconds) == {"torch", "onnxruntime"} | ({"openvino"} if HAS_OPENVINO else set())
    assert not choice.cached
    assert choice.runtime == min(choice.seconds, key=choice.seconds.get)
    assert f"runtime: {choice.runtime} fp32 (fastest verified at 1x3x513x513" in choice.describe()

    def no_timing(*args, **kwargs):
        raise AssertionError("the cached choice must not be timed again")

    monkeypatch.setattr(runtimes, "_time", no_timing)
    again = Predictor.from_file(path)
    assert again.runtime.cached and again.runtime.runtime == choice.runtime and "cached choice" in \
        again.runtime.describe()


@needs_openvino
def test_a_runtime_that_disagrees_is_refused(checkpoint, monkeypatch):
    path, _ = checkpoint
    real = runtimes.OpenVinoRunner.__call__
    monkeypatch.setattr(runtimes.OpenVinoRunner, "__call__", lambda self, x: real(self, x) * 1.01)
    with pytest.raises(ValueError, match=r"--runtime openvino disagrees with the fp32 reference on this model "
                                         r"\(max \|d logits\| = 1\.0e-02 of the largest"):
        Predictor.from_file(path, runtime="openvino")
    monkeypatch.delenv("DEEPLAB_RUNTIME")
    chosen = Predictor.from_file(path).runtime
    assert chosen.runtime != "openvino" and chosen.refused["openvino"].startswith("disagrees with fp32")
    assert "not used: openvino: disagrees" in chosen.describe()


@needs_openvino
def test_what_a_runtime_cannot_run_is_a_clear_error(checkpoint, tmp_path, monkeypatch):
    path, model = checkpoint
    from deeplab.deploy.export import export_model

    export_model(model, tmp_path / "m.ts", format="torchscript", progress=False)
    with pytest.raises(ValueError, match="--runtime onnxruntime: a TorchScript export runs on torch only"):
        Predictor.from_file(tmp_path / "m.ts", runtime="onnxruntime")
    export_model(model, tmp_path / "m.onnx", progress=False)
    with pytest.raises(ValueError, match="--runtime torch: an ONNX export runs on onnxruntime or openvino"):
        Predictor.from_file(tmp_path / "m.onnx", runtime="torch")
    assert Predictor.from_file(tmp_path / "m.onnx", runtime="openvino").runtime.runtime == "openvino"
    monkeypatch.setattr(runtimes, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="--runtime openvino: bf16 needs a CPU with AVX512-BF16 or AMX"):
        Predictor.from_file(path, runtime="openvino", precision="bf16")
    monkeypatch.setenv("DEEPLAB_RUNTIME", "tensorrt")
    with pytest.raises(ValueError, match="DEEPLAB_RUNTIME='tensorrt'; valid choices: auto, torch, onnxruntime"):
        Predictor.from_file(path)


def test_predict_says_which_runtime_it_used_and_writes_the_same_masks(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    save_rgb_png(image.permute(1, 2, 0), tmp_path / "x.png")
    masks = {}
    for runtime in ("torch", OTHER):
        out = tmp_path / runtime
        assert main(["predict", "--checkpoint", str(path), str(tmp_path / "x.png"), "--out", str(out),
                     "--runtime", runtime]) == 0
        assert f"runtime: {runtime} fp32" in capsys.readouterr().err
        masks[runtime] = read_image(out / "x_color.png")
    agreement = (masks["torch"] == masks[OTHER]).all(dim=0).float().mean().item()
    assert agreement >= 0.999


def test_a_model_onnx_cannot_take_is_refused_with_its_reason_never_a_traceback(checkpoint, monkeypatch, tmp_path,
                                                                                 capsys):
    path, _ = checkpoint

    def fail(*args, **kwargs):
        raise RuntimeError("forced: this exporter cannot trace the model")

    monkeypatch.setattr(runtimes, "write_onnx", fail)
    monkeypatch.delenv("DEEPLAB_RUNTIME")
    choice = Predictor.from_file(path, precision="fp32").runtime
    assert choice.runtime == "torch"
    reason = "the model cannot be written as ONNX (RuntimeError: forced: this exporter cannot trace the model)"
    assert choice.refused["onnxruntime"] == reason
    if HAS_OPENVINO:  # written once: the reason is given for both ONNX runtimes
        assert choice.refused["openvino"] == reason
    assert f"not used: onnxruntime: {reason}" in choice.describe()
    with pytest.raises(ValueError, match=r"--runtime onnxruntime: the model cannot be written as ONNX \(RuntimeError"):
        Predictor.from_file(path, runtime="onnxruntime")
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    save_rgb_png(image.permute(1, 2, 0), tmp_path / "x.png")
    assert main(["predict", "--checkpoint", str(path), str(tmp_path / "x.png"), "--out", str(tmp_path / "out"),
                 "--runtime", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert "error: --runtime onnxruntime: the model cannot be written as ONNX" in err and "Traceback" not in err


def _torchrun_env(monkeypatch, store, rank: int) -> None:
    """What torchrun's agent gives a worker of a 2-process job: its rank and the address of the agent's store."""
    for key, value in {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": 2, "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": store.port, "TORCHELASTIC_USE_AGENT_STORE": "True",
                       "TORCHELASTIC_RESTART_COUNT": 0}.items():
        monkeypatch.setenv(key, str(value))


def test_under_torchrun_process_0_decides_and_the_others_follow_its_choice(checkpoint, monkeypatch):
    from datetime import timedelta

    from torch.distributed import TCPStore

    path, _ = checkpoint
    monkeypatch.delenv("DEEPLAB_RUNTIME")
    monkeypatch.setattr(runtimes, "PROBE_SIZE", 65)  # the choice, not its timing, is the subject
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
    _torchrun_env(monkeypatch, store, rank=0)
    first = Predictor.from_file(path, precision="fp32").runtime
    assert not first.decided_by and len(first.seconds) >= 2  # process 0 timed the runtimes
    # process 1 reads the choice from torchrun's store (not from the cache): it neither checks nor times anything
    _torchrun_env(monkeypatch, store, rank=1)

    def must_not_run(*args, **kwargs):
        raise AssertionError("process 1 must follow process 0's choice, not make its own")

    monkeypatch.setattr(runtimes, "_time", must_not_run)
    monkeypatch.setattr(runtimes._Opening, "check", must_not_run)
    second = Predictor.from_file(path, precision="fp32")
    assert (second.runtime.runtime, second.runtime.seconds) == (first.runtime, first.seconds)
    assert "chosen by process 0" in second.runtime.describe()
    x = torch.randn(1, 3, 33, 41, generator=torch.Generator().manual_seed(3))
    assert second.logits_for_batch(x).shape == (1, 3, 33, 41)


def test_under_torchrun_a_failure_of_process_0_reaches_the_others(checkpoint, monkeypatch):
    from datetime import timedelta

    from torch.distributed import TCPStore

    path, _ = checkpoint
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))

    def fail(self, precision):
        raise ValueError("no runtime agrees (forced)")

    monkeypatch.setattr(runtimes._Opening, "fastest", fail)
    for rank, message in ((0, r"^no runtime agrees \(forced\)"),
                          (1, r"process 0 could not open the model: ValueError: no runtime agrees \(forced\)")):
        _torchrun_env(monkeypatch, store, rank)
        with pytest.raises(ValueError, match=message):
            Predictor.from_file(path, runtime="auto", precision="fp32")
