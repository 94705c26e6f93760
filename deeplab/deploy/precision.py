"""The precision table: every arithmetic the package names, its dtype, where it runs, and the CPU features it needs.

One table for the CLI's choices, the Predictor's autocast, training's AMP and the exporter.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Precision:
    """One arithmetic.

    Attributes:
        name: what users type (``--precision``, ``train.amp``).
        dtype: the compute dtype (autocast's for ``bf16``/``fp16``); ``None`` for int8, which only exports carry.
        eager: an eager PyTorch model can run at it (through autocast, except fp32).
        exports: the export formats that bake it into the file.
    """

    name: str
    dtype: torch.dtype | None
    eager: bool
    exports: tuple[str, ...]


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", torch.float32, eager=True, exports=("onnx", "torchscript")),
    "bf16": Precision("bf16", torch.bfloat16, eager=True, exports=("torchscript",)),
    "fp16": Precision("fp16", torch.float16, eager=True, exports=()),
    "int8": Precision("int8", None, eager=False, exports=("onnx",)),
}
EAGER_PRECISIONS = tuple(name for name, p in PRECISIONS.items() if p.eager)
AUTO = "auto"  # predict/serve's default: the fastest reduced precision that passes the real-image check, else fp32
PRECISION_CHOICES = (AUTO, *EAGER_PRECISIONS)  # what --precision of predict, eval and serve takes
EXPORT_PRECISIONS = tuple(name for name, p in PRECISIONS.items() if p.exports)
AMP_CHOICES = ("off", "bf16", "fp16")  # train.amp: the reduced eager precisions, or off


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs ``precision`` at; ``None`` for fp32 (no autocast)."""
    entry = precision_entry(precision)
    return None if entry.name == "fp32" else entry.dtype


def precision_entry(precision: str) -> Precision:
    """The table's row for ``precision``; an unknown name is a ``ValueError`` listing the valid ones."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


@functools.cache
def _cpuinfo_lines() -> tuple[str, ...]:
    """/proc/cpuinfo's lines (empty where it does not exist)."""
    try:
        return tuple(Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return ()


def _cpuinfo_field(*keys: str) -> str | None:
    for line in _cpuinfo_lines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keys:
            return value.strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    return frozenset((_cpuinfo_field("flags", "Features") or "").split())


def cpu_model_name() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` where /proc/cpuinfo has none)."""
    return _cpuinfo_field("model name", "Model name", "Hardware") or platform.processor() or "unknown CPU"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one, else all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# The instruction sets that decide which kernels run fast: label -> the /proc/cpuinfo flags that give it.
ISA_FLAGS = {"AVX2": ("avx2",), "AVX-512": ("avx512f",), "AVX512-VNNI": ("avx512_vnni",),
             "AVX-VNNI": ("avx_vnni",), "AVX512-BF16": ("avx512_bf16",), "AMX": ("amx_tile", "amx_bf16", "amx_int8")}


def cpu_kind() -> str:
    """One line naming this CPU for benchmark reports: model, usable cores, torch threads, the instruction
    sets of :data:`ISA_FLAGS` it has and lacks, and the kernel level torch dispatches to."""
    flags = cpu_flags()
    has = [label for label, names in ISA_FLAGS.items() if flags & set(names)]
    lacks = [label for label in ISA_FLAGS if label not in has]
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    isa = " ".join(has) if has else "none of " + "/".join(ISA_FLAGS)
    if has and lacks:
        isa += f" (no {', '.join(lacks)})"
    return (f"CPU: {cpu_model_name()}, {usable_cores()} cores, {torch.get_num_threads()} torch threads; {isa}; "
            f"torch CPU capability {capability}")


def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), so bf16 autocast is a speed-up."""
    flags = cpu_flags()
    if flags:
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def cpu_has_vnni() -> bool:
    """True where the CPU has an 8-bit dot-product instruction (AVX512-VNNI or AVX-VNNI)."""
    flags = cpu_flags()
    if flags:
        return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


# 8-bit integer multiply-add in hardware: 8-bit dot products (VNNI, AMX), AVX2's 8-bit multiply-add (the int8
# export then keeps weights to 7 bits so its 16-bit sums cannot saturate), ARM's dot-product and matrix extensions.
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "avx2", "asimddp", "i8mm"})
INT8_REFUSAL = ("int8 needs a CPU with 8-bit integer multiply-add instructions (AVX2, AVX512-VNNI, AVX-VNNI or AMX "
                "on x86; the dot-product extension on ARM), which this one lacks: int8 would be emulated and slower "
                "than fp32. Use fp32 (the default)")


def cpu_has_int8() -> bool:
    """True where ONNX Runtime's and OpenVINO's int8 kernels run on 8-bit integer instructions (:data:`INT8_FLAGS`)
    rather than emulating them."""
    flags = cpu_flags()
    if flags:
        return bool(flags & INT8_FLAGS)
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")()
    return capability in ("AVX2", "AVX512") or platform.machine().lower() in ("arm64", "aarch64")


def check_int8() -> None:
    """Raises ``ValueError`` (:data:`INT8_REFUSAL`) where the CPU has no 8-bit integer instructions."""
    if not cpu_has_int8():
        raise ValueError(INT8_REFUSAL)


def check_precision(precision: str, device: str | torch.device) -> str:
    """Validates an eager-model precision for ``device``; returns it.

    ``fp32`` runs anywhere; ``bf16`` on a GPU that supports it or a CPU with native bf16 (elsewhere it
    would be emulated, slower than fp32, so it is refused); ``fp16`` on a GPU only. ``int8`` belongs
    to exports (``deeplab export --precision int8``).
    """
    device = torch.device(device)
    if precision == AUTO:
        raise ValueError("precision auto is chosen when a model is opened (Predictor.from_file / from_runner, "
                         "deeplab.deploy.runtimes.open_with_runtime); pass fp32, bf16 or fp16 here")
    entry = precision_entry(precision)
    if not entry.eager:
        raise ValueError("int8 inference runs from an export: `deeplab export --precision int8 --out model.onnx`, "
                         "then predict/eval with --model model.onnx")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"fp16 needs a CUDA device (got {device}); on a CPU use bf16 where supported, or an "
                         "int8 export")
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"bf16 is not supported by this GPU ({torch.cuda.get_device_name(device)}); use fp16")
        if device.type == "cpu" and not cpu_has_bf16():
            raise ValueError("bf16 needs a CPU with AVX512-BF16 or AMX, which this one lacks: bf16 would be "
                             "emulated and slower than fp32. Use fp32 (the default), or an int8 export "
                             "(deeplab export --precision int8)")
    return precision
