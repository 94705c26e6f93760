import os

import pytest

from deeplab import constants, postprocess
from deeplab.data import verify


def test_default_workers_is_the_cpus_this_process_may_use():
    assert constants.default_workers() == len(os.sched_getaffinity(0))
    # one definition: the file checks and the CRF pools size themselves alike
    assert verify.default_workers is postprocess.default_workers is constants.default_workers


def test_default_workers_without_affinity_falls_back_to_the_cpu_count(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert constants.default_workers() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert constants.default_workers() == 6
