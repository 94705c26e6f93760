"""torchrun that ends in one line when it is stopped: ``deeplab-torchrun`` (or ``python -m deeplab.launch``) takes
torchrun's own arguments and runs torchrun's own launcher in this process, e.g.
``deeplab-torchrun --nproc-per-node 2 -m deeplab predict images/ --model run/best.pt --out masks/``.

A SIGINT or SIGTERM to torchrun (Ctrl-C in a terminal signals it with its workers) makes torchrun stop its workers
and then raise the signal again as an exception, which Python prints as a traceback; a signal to one worker makes
every deeplab process stop with the signal's exit status, which torchrun reports as a failure, with a traceback
too. deeplab's processes have said by then what they kept and how to continue, so in both cases this launcher
ends with one line and the exit status a shell gives for the signal (130 for SIGINT, 143 for SIGTERM).
Everything else (arguments, environment, restarts, the report of a worker that failed) is torchrun's.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from .constants import LAUNCHER_ENV

NAME = "deeplab-torchrun"
# the exit statuses of deeplab processes that stopped on a signal and kept their work (deeplab.engine.stops)
STOP_STATUSES = frozenset({128 + signal.SIGINT, 128 + signal.SIGTERM})


def main(argv: Sequence[str] | None = None) -> int:
    """Runs torchrun with ``argv`` (default: this process's arguments); its exit status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    os.environ[LAUNCHER_ENV] = NAME  # inherited by the workers, whose stop line then names this launcher
    try:
        torchrun(None if argv is None else list(argv))
    except SignalException as err:
        print(f"{NAME}: stopped by {err.sigval.name}; the processes have said above what they kept",
              file=sys.stderr)
        return 128 + err.sigval.value
    except ChildFailedError as err:
        statuses = {failure.exitcode for failure in err.failures.values()}
        if not statuses <= STOP_STATUSES:  # a worker failed: torchrun's report of it, as torchrun gives it
            raise
        status = max(statuses)  # SIGTERM's wins, as deeplab's processes agree
        print(f"{NAME}: the processes stopped on {signal.Signals(status - 128).name} (exit status {status}); they "
              "have said above what they kept", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
