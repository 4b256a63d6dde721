"""The layer order of ``loops_runner``, enforced on every import (lazy ones included).

Bottom to top (docs/architecture.md, "Layers"):

    errors (and the package root) -> plugins / home -> wire -> sdk / storage -> optim
    -> tasks -> data -> eval / models -> tiny_build -> servers
    -> runner / checkpoint_export -> rl / report -> recipes / cli

A module may import its own unit (package or top-level module) and any unit
of a lower layer; never a unit beside it or above it. The graph is read with
``ast`` from the source, so an import inside a function counts the same as one
at the top of a file: a lazy import delays the cost, not the dependency.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

# The checkout's source, whichever copy of the package an import would find.
REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO / "loops_runner"

# Each entry is one layer, lowest first; the names are units: a subpackage of
# loops_runner, a top-level module, or ``recipes`` (shipped as loops_runner.recipes).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "errors"),  # the package root (__version__); config and data errors
    ("plugins", "home"),  # the user-callable loader; where the data home is
    ("wire",),
    ("sdk", "storage"),
    ("optim",),  # optimizer settings (sdk's AdamParams) that data checks read
    ("tasks",),
    ("data",),
    ("eval", "models"),
    ("tiny_build",),  # pretraining tiny on the task corpus, apart from the registry
    ("servers",),
    ("runner", "checkpoint_export"),
    ("rl", "report"),
    ("recipes", "cli", "__main__"),
)
# The console script is one unit written in three modules.
SAME_UNIT = {"runs_cli": "cli", "checkpoint_cli": "cli"}

# Imports that still climb, each in a file that issue #26 is rewriting; the lead
# empties this list. One entry per (importing module, imported module).
# Every climb is a defect to mend, not a rule to keep: none is left.
ALLOWED_CLIMBS: frozenset[tuple[str, str]] = frozenset()

UNIT_LAYER: dict[str, int] = {unit: index for index, layer in enumerate(LAYERS) for unit in layer}


@dataclass(frozen=True)
class Edge:
    source: str  # dotted module name of the importing file
    target: str  # dotted module name imported
    where: str  # path:line, for the failure message


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] == "recipes":  # shipped as loops_runner.recipes (a symlink)
        parts = ["loops_runner", *parts]
    if parts[-1] == "__init__" and len(parts) > 2:
        parts = parts[:-1]
    return ".".join(parts)


def _source_files() -> list[Path]:
    files = [p for p in PACKAGE_DIR.rglob("*.py") if "conf" not in p.relative_to(PACKAGE_DIR).parts
             and "recipes" not in p.relative_to(PACKAGE_DIR).parts]
    # loops_runner/recipes is a symlink to the repository's recipes/.
    return sorted(files) + sorted((REPO / "recipes").glob("*.py"))


def _imports(path: Path, module: str | None = None) -> list[Edge]:
    module = module or _module_name(path)
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    edges = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from loops_runner import tasks`` imports the unit ``tasks``.
            # (``from loops_runner import __version__`` imports the package root).
            names = [f"{prefix}.{alias.name}" if prefix == "loops_runner"
                     and alias.name in UNIT_LAYER else prefix for alias in node.names]
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}" \
            if path.is_relative_to(REPO) else f"{path}:{getattr(node, 'lineno', 0)}"
        edges += [Edge(module, name, where) for name in names
                  if name == "loops_runner" or name.startswith("loops_runner.")]
    return edges


def _unit(module: str) -> str:
    parts = module.split(".")
    unit = parts[1] if len(parts) > 1 else "__init__"
    return SAME_UNIT.get(unit, unit)


def _covering_allowance(edge: Edge) -> tuple[str, str] | None:
    for source, target in ALLOWED_CLIMBS:
        if edge.source == source and (edge.target == target
                                      or edge.target.startswith(target + ".")):
            return source, target
    return None


def _climbs() -> tuple[list[Edge], set[tuple[str, str]]]:
    climbs, used = [], set()
    for path in _source_files():
        for edge in _imports(path):
            source, target = _unit(edge.source), _unit(edge.target)
            if source == target:
                continue
            if UNIT_LAYER[target] < UNIT_LAYER[source]:
                continue
            allowance = _covering_allowance(edge)
            if allowance is not None:
                used.add(allowance)
            else:
                climbs.append(edge)
    return climbs, used


def test_every_unit_has_a_layer() -> None:
    units = {_unit(_module_name(path)) for path in _source_files()}
    assert units - set(UNIT_LAYER) == set(), "give each new package or module a layer"


def test_no_import_climbs_a_layer() -> None:
    climbs, _ = _climbs()
    assert climbs == [], "imports that climb or cross a layer:\n" + "\n".join(
        f"  {e.where}: {e.source} ({_unit(e.source)}, layer {UNIT_LAYER[_unit(e.source)]}) "
        f"imports {e.target} ({_unit(e.target)}, layer {UNIT_LAYER[_unit(e.target)]})"
        for e in climbs)


def test_the_allowlist_holds_no_stale_entry() -> None:
    _, used = _climbs()
    assert ALLOWED_CLIMBS - used == set(), "these climbs are gone: delete their entries"


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The reader finds an upward import hidden in a function and a relative one."""
    probe = tmp_path / "probe.py"
    probe.write_text("import json\n\n\ndef f():\n    from loops_runner.runner import config\n"
                     "    from ..report import build\n    return config, build, json\n")
    edges = _imports(probe, module="loops_runner.wire.probe")
    assert {edge.target for edge in edges} == {"loops_runner.runner", "loops_runner.report"}
    assert all(UNIT_LAYER[_unit(e.target)] > UNIT_LAYER["wire"] for e in edges)
