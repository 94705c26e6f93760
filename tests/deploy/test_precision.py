"""The CPU description benchmark reports carry: read from /proc/cpuinfo, instruction sets named and missing."""

import pytest
import torch

from deeplab.deploy import precision

SAPPHIRE_RAPIDS = frozenset({"sse4_2", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                             "amx_int8"})


@pytest.fixture
def machine(monkeypatch):
    monkeypatch.setattr(precision, "cpu_model_name", lambda: "Test CPU 9000")
    monkeypatch.setattr(precision, "usable_cores", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    return lambda flags: monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))


def test_cpu_kind_names_model_cores_threads_instruction_sets_and_torch_capability(machine):
    machine(SAPPHIRE_RAPIDS)
    assert precision.cpu_kind() == ("CPU: Test CPU 9000, 8 cores, 4 torch threads; AVX2 AVX-512 AVX512-VNNI "
                                    "AVX512-BF16 AMX (no AVX-VNNI); torch CPU capability AVX512")


@pytest.mark.parametrize(("flags", "isa"), [
    ({"avx2", "avx_vnni"}, "AVX2 AVX-VNNI (no AVX-512, AVX512-VNNI, AVX512-BF16, AMX)"),
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "AVX2 AVX-512 AVX512-VNNI AVX512-BF16 (no AVX-VNNI, AMX)"),
    ({"fp", "asimd"}, "none of AVX2/AVX-512/AVX512-VNNI/AVX-VNNI/AVX512-BF16/AMX"),
])
def test_cpu_kind_says_which_instruction_sets_are_missing(machine, flags, isa):
    machine(flags)
    assert f"; {isa}; " in precision.cpu_kind()


def test_model_name_and_flags_come_from_cpuinfo(monkeypatch):
    x86 = ("processor\t: 0", "model name\t: AMD EPYC 9654 96-Core Processor", "flags\t\t: fpu avx2 avx512f")
    monkeypatch.setattr(precision, "_cpuinfo_lines", lambda: x86)
    assert precision.cpu_model_name() == "AMD EPYC 9654 96-Core Processor"
    assert precision.cpu_flags() == {"fpu", "avx2", "avx512f"}
    arm = ("processor\t: 0", "Features\t: fp asimd sve", "CPU part\t: 0xd40")
    monkeypatch.setattr(precision, "_cpuinfo_lines", lambda: arm)
    monkeypatch.setattr(precision.platform, "processor", lambda: "aarch64")
    assert precision.cpu_model_name() == "aarch64" and precision.cpu_flags() == {"fp", "asimd", "sve"}
    monkeypatch.setattr(precision, "_cpuinfo_lines", lambda: ())
    monkeypatch.setattr(precision.platform, "processor", lambda: "")
    assert precision.cpu_model_name() == "unknown CPU" and precision.cpu_flags() == frozenset()


@pytest.mark.parametrize(("flags", "has"), [
    (SAPPHIRE_RAPIDS, True),
    ({"sse4_2", "avx", "avx2", "fma"}, True),  # AVX2's 8-bit multiply-add (7-bit weights)
    ({"avx2", "avx_vnni"}, True),
    ({"fp", "asimd", "asimddp"}, True),  # ARM's dot product
    ({"sse4_2", "avx", "fma"}, False),
    ({"fp", "asimd"}, False),
])
def test_int8_needs_8_bit_integer_instructions(machine, flags, has):
    machine(flags)
    assert precision.cpu_has_int8() is has
    if has:
        precision.check_int8()
    else:
        with pytest.raises(ValueError, match=r"int8 needs a CPU with 8-bit integer multiply-add instructions "
                                             r"\(AVX2, AVX512-VNNI, AVX-VNNI or AMX on x86.*emulated"):
            precision.check_int8()


@pytest.mark.parametrize(("capability", "machine_name", "has"), [
    ("AVX2", "x86_64", True), ("AVX512", "x86_64", True), ("DEFAULT", "x86_64", False), ("DEFAULT", "arm64", True)])
def test_int8_without_cpuinfo_goes_by_torchs_capability_and_the_machine(monkeypatch, capability, machine_name, has):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())  # no /proc/cpuinfo (macOS, Windows)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(precision.platform, "machine", lambda: machine_name)
    assert precision.cpu_has_int8() is has
