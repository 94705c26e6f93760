"""``python -m deeplab``: the ``deeplab`` command (what ``torchrun -m deeplab train ...`` starts in every process)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
