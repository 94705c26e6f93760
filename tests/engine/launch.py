"""Starting several training processes the way users do: torchrun (``python -m torch.distributed.run``)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(*args: str, nproc: int = 2, launcher: tuple[str, ...] | None = None,
                     module: str = "torch.distributed.run") -> list[str]:
    """``python -m torch.distributed.run`` (torchrun) on this machine only, ``nproc`` processes (``module``
    ``deeplab.launch``: deeplab-torchrun, which takes the same arguments)."""
    launcher = launcher or ("--standalone",)
    return [sys.executable, "-m", module, *launcher, "--nproc-per-node", str(nproc), *args]


def process_env() -> dict[str, str]:
    """One thread per process (two processes on two cores would thrash), this checkout first on the path."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def run_processes(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs the launcher in a session of its own; past ``timeout`` it and its workers (torchrun starts each in a
    session of its own) are killed with their process groups: subprocess's own timeout kills the launcher alone,
    and workers waiting in a collective would be left running."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=process_env(),
                          cwd=REPO, start_new_session=True) as launcher:
        try:
            stdout, stderr = launcher.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for group in (*(worker_pids(launcher.pid) or {}).values(), launcher.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
            launcher.communicate()
            raise
    return subprocess.CompletedProcess(command, launcher.returncode, stdout, stderr)


def worker_pids(launcher_pid: int) -> dict[int, int] | None:
    """The training processes a torchrun launcher started, by rank (read from Linux's /proc);
    None where /proc does not list a process's children."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children")
    if not children.is_file():
        return None
    pids = {}
    for pid in map(int, children.read_text().split()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        pids.update({int(item[5:]): pid for item in environ if item.startswith(b"RANK=")})
    return pids
