"""Options the trainer benchmarks share: a data home and the torch thread count."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=None, help="data home (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); 1 is steadier on a "
                             "busy shared CPU, where thread barriers stall")


def apply_common_options(args: argparse.Namespace) -> Path:
    """Set the thread count (here and for trainer subprocesses); return a home with tiny built."""
    import torch

    from loops_runner.models import tiny

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the trainer subprocess too
    home = Path(args.home or tempfile.mkdtemp(prefix="loops-bench-"))
    tiny.prepare(home)
    return home
