#!/usr/bin/env bash
# Set up .venv if needed, then run the SFT recipe on the built-in default model.
# Extra arguments are Hydra overrides (e.g. `bash scripts/sft.sh recipe.max_steps=50`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
exec .venv/bin/python -m loops_runner +recipe=sft "$@"
