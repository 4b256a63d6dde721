"""Pretrain the built-in ``tiny`` from scratch and write the folder the package ships.

    .venv/bin/python scripts/pretrain_tiny.py                      # refresh the shipped copy
    .venv/bin/python scripts/pretrain_tiny.py --out /tmp/tiny      # build elsewhere (to compare)

Deterministic: a machine of the same CPU class with the same library versions
produces the same bytes (fixed steps, seeds and thread count; see
loops_runner/tiny_build/pretrain.py); another CPU class gives other weights with
about the same loss (docs/tiny-model.md, "Reproducible where"). Takes 7-15
minutes on 2 CPU cores; the build info it writes records the figures (loss,
time, held-out accuracy per family) and the CPU class (`machine`) that
`loops-runner models info tiny` prints.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from loops_runner.models import tiny
from loops_runner.tiny_build import builder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=tiny.SHIPPED_DIR,
                        help=f"destination folder (default: the shipped {tiny.SHIPPED_DIR})")
    args = parser.parse_args()
    staging = Path(tempfile.mkdtemp(prefix="tiny-pretrain-"))
    try:
        builder.build(staging)
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(staging, args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    info = tiny.build_info(args.out)
    print(json.dumps({k: info[k] for k in ("parameters", "pretrain", "heldout_accuracy",
                                           "build_seconds", "machine")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
