#!/usr/bin/env bash
# Create .venv at the repo root with loops-runner, its local stack, the sweep
# launchers (the tests run sweeps through them) and the test tools.
# Idempotent: when nothing changed since the last run it returns at once.
#
# scripts/constraints.txt pins the few libraries whose versions decide the bytes
# of the built-in tiny model, so every checkout on the same CPU class rebuilds it
# bit for bit (docs/tiny-model.md, "Reproducible where").
#
# torch: the CPU build (torch==2.13.0) is installed unless .venv already has a
# torch. GPU users install their CUDA build into .venv first (see README);
# LOOPS_TORCH_SPEC overrides the spec used here.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
torch_spec="${LOOPS_TORCH_SPEC:-torch==2.13.0}"
stamp=".venv/.loops-bootstrap"
want="$(cat pyproject.toml scripts/bootstrap.sh scripts/constraints.txt | sha256sum | cut -d' ' -f1) ${torch_spec}"

if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

if [ ! -x .venv/bin/python ]; then
    "$python" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"loops-runner needs Python 3.11 or newer; found {sys.version.split()[0]}")
PY
    echo "Creating .venv ..." >&2
    "$python" -m venv .venv
fi

pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    echo "Installing ${torch_spec} ..." >&2
    "${pip[@]}" install "$torch_spec"
fi
echo "Installing loops-runner (editable, with the local stack, sweep launchers, eval frameworks and test tools) ..." >&2
# The constraints pin the libraries the tiny build's bytes depend on (see the file).
spec=(-c scripts/constraints.txt -e ".[local,sweeps,dev,eval-frameworks]")
# uv installs the same resolution several times faster than pip (pip spends ~2
# CPU-minutes here unpacking and compiling on one core; uv uses every core),
# which is most of a fresh CI run's set-up. torch stays with pip above: pip's
# configuration (find-links, constraints) is what picks the CPU build. Any uv
# failure (no uv wheel reachable, a private index only pip is configured for)
# falls back to pip; LOOPS_BOOTSTRAP_INSTALLER=pip skips uv altogether.
if [ "${LOOPS_BOOTSTRAP_INSTALLER:-uv}" = "uv" ] \
        && "${pip[@]}" install uv >/dev/null 2>&1 \
        && .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python "${spec[@]}"; then
    :
else
    echo "Installing with pip ..." >&2
    "${pip[@]}" install "${spec[@]}"
fi
echo "$want" > "$stamp"
