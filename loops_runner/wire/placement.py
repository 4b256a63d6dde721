"""How many open runs share one local trainer process: the default and the limit.

One number read on both sides of the local daemon's launch arguments: the
runner's config (``backend.runs_per_trainer``) and ``loops-runner
control-plane --runs-per-trainer`` validate against it, and the control
plane's placement applies it. It lives here, below both, so the runner's
config schema never imports a control-plane module.
"""

from __future__ import annotations

DEFAULT_RUNS_PER_TRAINER = 8
# The largest cap accepted: more runs than this on one process would mostly
# evict each other's state (see the trainer's max resident runs).
MAX_RUNS_PER_TRAINER = 1024
