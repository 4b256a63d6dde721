#!/usr/bin/env bash
# Set up .venv if needed, then run the linter and the whole test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/foundation -x`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
