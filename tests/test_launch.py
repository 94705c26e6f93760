"""deeplab-torchrun (deeplab/launch.py): torchrun's own launcher, ending in one line when deeplab's processes stopped
on a signal, and torchrun's report when one failed. The SIGINT to the launcher itself is tested with a real
2-process predict in tests/test_predict_files.py."""

import pytest

from tests.engine.launch import run_processes, torchrun_command

WORKER = "import os, sys\nprint(os.environ['DEEPLAB_LAUNCHER'])\nsys.exit(int(sys.argv[1]))\n"


@pytest.mark.parametrize(("status", "stopped"), [(143, True), (1, False)])
def test_a_stopped_run_ends_in_one_line_and_a_failed_one_in_torchruns_report(tmp_path, status, stopped):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    result = run_processes(torchrun_command(str(worker), str(status), nproc=1, module="deeplab.launch"), timeout=60)
    assert result.stdout.strip() == "deeplab-torchrun"  # the workers know the launcher, for their resume lines
    if stopped:
        assert result.returncode == 143 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.splitlines()[-1] == ("deeplab-torchrun: the processes stopped on SIGTERM (exit status "
                                                  "143); they have said above what they kept")
    else:  # a failure is torchrun's to report, with its table of exit codes
        assert result.returncode == 1 and "ChildFailedError" in result.stderr and "exitcode  : 1" in result.stderr
