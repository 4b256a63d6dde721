"""Protocol names are defined once, in ``loops_runner.wire``, for the client and the servers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import loops_runner
from loops_runner.wire import headers

PACKAGE = Path(loops_runner.__file__).parent
HEADER_NAMES = {value.lower() for name, value in vars(headers).items()
                if name.endswith("_HEADER")}


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_header_names_are_spelled_only_in_wire_headers() -> None:
    spelled_elsewhere = [
        f"{path.relative_to(PACKAGE)}:{line} {value!r}"
        for path in PACKAGE.rglob("*.py") if path != Path(headers.__file__)
        for line, value in _string_constants(path) if value.lower() in HEADER_NAMES
    ]
    assert spelled_elsewhere == []


def test_the_bt_path_grammar_round_trips() -> None:
    from loops_runner.storage import layout
    from loops_runner.wire.paths import bt_path, parse_bt_path, parse_checkpoint_path

    path = bt_path("run-1", "sampler_weights", "step-3")
    assert path == "bt://loops:run-1/sampler_weights/step-3"
    assert str(parse_bt_path(path + "/")) == path
    # The servers resolve the same grammar.
    assert layout.parse_checkpoint_path is parse_checkpoint_path
    assert str(parse_checkpoint_path(path)) == path
    with pytest.raises(ValueError, match="not a weights or sampler_weights checkpoint"):
        parse_checkpoint_path("bt://loops:run-1/sequences/step-3")


def test_each_class_name_has_one_definition() -> None:
    seen: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                seen.setdefault(node.name, []).append(str(path.relative_to(PACKAGE)))
    shared = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert shared == {}
