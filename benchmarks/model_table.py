"""Prints every model's parameters and multiply-adds at 513x513 for OS 16 and OS 8, beside the papers'.

    python benchmarks/model_table.py [--size 513]
"""

import argparse

from deeplab.models.table import format_model_table, model_rows

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=513)
    args = parser.parse_args()
    print(format_model_table(model_rows(macs=True, size=args.size), size=args.size))
