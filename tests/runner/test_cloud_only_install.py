"""The cloud-only install: the wheel without extras, in a clean virtualenv, on a hosted backend.

What a Baseten user does (docs/baseten.md): install the package without
extras (no torch, no local servers), set the key, run recipes with
``backend=baseten``. The wheel is built from this checkout and installed
into a fresh virtualenv with no access to the repository (the commands run
from a folder outside it, with no PYTHONPATH), so top-level ``conf``/
``recipes`` folders cannot mask a broken wheel. Our control plane, started
from the project environment, stands in for Baseten's. Every command that
docs/baseten.md and the README's "Backends" section show is run here, with
the stand-in's URL for Baseten's, the built-in tiny model for Qwen and a few
steps each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runner.hosted import StandIn, stand_in_control_plane

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BASETEN_URL = "https://api.baseten.co"
DOC_COMMAND = re.compile(r"^(pip install|python -m loops_runner|loops-runner) ")
# Keep each documented run short; the commands themselves are as documented.
QUICK = {"sft": ["recipe.dataset.num_examples=64", "recipe.dataset.eval_examples=8",
                 "recipe.eval_every=0", "recipe.num_final_samples=2", "recipe.evaluators=[]"],
         "rl": ["recipe.groups_per_batch=2", "recipe.group_size=2"],
         "dpo": ["recipe.dataset.num_pairs=32", "recipe.dataset.eval_pairs=8",
                 "recipe.batch_size=8", "recipe.eval_every=0",
                 "recipe.evaluators=[{kind: sampling, num_prompts: 2, max_tokens: 4}]"]}


def documented_commands() -> list[str]:
    """The shell commands of docs/baseten.md and the README's "Backends" section."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Backends", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for text in ((REPO / "docs" / "baseten.md").read_text(), section):
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.splitlines():
                line = line.split("  #", 1)[0].strip()
                if DOC_COMMAND.match(line) and line not in commands:
                    commands.append(line)
    return commands


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    with stand_in_control_plane(tmp_path_factory.mktemp("cloud_stand_in")) as server:
        yield server


def _uv() -> str | None:
    return shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv with the wheel of this checkout installed without extras."""
    root = tmp_path_factory.mktemp("cloud_only")
    python = root / "venv" / "bin" / "python"
    uv = _uv()
    # `pip install loops-runner` (docs/baseten.md), from the wheel built here;
    # uv when the environment has it (bootstrap installs it), else pip.
    if uv is not None:
        # sdist first, then the wheel from it (uv's default): what a release ships.
        _run([uv, "build", "--quiet", "--out-dir", str(root / "dist"), str(REPO)])
        _run([uv, "venv", "--quiet", "--python", sys.executable, str(root / "venv")])
        wheel = next((root / "dist").glob("loops_runner-*.whl"))
        _run([uv, "pip", "install", "--quiet", "--python", str(python), str(wheel)])
    else:
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
              str(root / "dist"), str(REPO)])
        _run([sys.executable, "-m", "venv", str(root / "venv")])
        wheel = next((root / "dist").glob("loops_runner-*.whl"))
        _run([str(python), "-m", "pip", "install", "--quiet", str(wheel)])
    return root / "venv"


def _user_env(venv: Path, home: Path) -> dict[str, str]:
    """A user's shell: the venv on PATH, no repository on PYTHONPATH, the key set."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("LOOPS_", "PYTHON", "BASETEN_", "VIRTUAL_ENV"))}
    return {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "LOOPS_HOME": str(home), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def test_the_wheel_installs_only_loops_runner_and_no_torch(venv: Path) -> None:
    site = next((venv / "lib").glob("python3*/site-packages"))
    record = next(site.glob("loops_runner-*.dist-info/RECORD")).read_text()
    tops = {line.split(",", 1)[0].split("/", 1)[0] for line in record.splitlines()}
    assert {top for top in tops if not top.endswith(".dist-info") and top != ".."} \
        == {"loops_runner"}
    assert not (site / "conf").exists() and not (site / "recipes").exists()
    assert (site / "loops_runner" / "conf" / "recipe" / "sft.yaml").is_file()
    assert (site / "loops_runner" / "recipes" / "sft.py").is_file()
    probe = _run([str(venv / "bin" / "python"), "-c",
                  "import importlib.util as u; print([m for m in ('torch', 'peft', 'fastapi', "
                  "'uvicorn') if u.find_spec(m)])"])
    assert probe.stdout.strip() == "[]"


def test_every_documented_command_runs_from_the_wheel(venv: Path, stand_in: StandIn,
                                                      tmp_path: Path) -> None:
    workdir = tmp_path / "my_project"
    workdir.mkdir()
    env = {**_user_env(venv, tmp_path / "home"), **stand_in.env()}
    commands = documented_commands()
    assert "python -m loops_runner +recipe=dpo backend=baseten model=qwen3_0_6b" in commands
    places = {}  # filled from the runs, for <run dir>, <session>, <bt path>
    outputs = []
    for command in commands:
        if command.startswith("pip install"):
            continue  # done by the fixture: the same install, from the wheel built here
        line = command.replace("model=qwen3_0_6b", "model=tiny").replace(BASETEN_URL,
                                                                          stand_in.url)
        for placeholder, value in places.items():
            line = line.replace(placeholder, value)
        args = line.split()
        if args[0] == "python":
            recipe = next(a.split("=", 1)[1] for a in args if a.startswith("+recipe="))
            args = [*args, f"backend.base_url={stand_in.url}", "max_steps=2", "report=false",
                    *QUICK[recipe]]
        result = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True,
                                timeout=600)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{line}\n{output[-4000:]}"
        assert "PyTorch was not found" not in output, line
        outputs.append(output)
        multirun = "loops_runner -m " in line
        if "+recipe=sft" in line and not multirun and "dry_run=true" not in line:
            run_dir = next((workdir / "outputs" / "sft").glob("*/run.json")).parent
            record = json.loads((run_dir / "run.json").read_text())
            places.update({"<run dir>": str(run_dir), "<session>": record["session_id"],
                           "<bt path>": record["checkpoints"][-1]["path"]})
    assert places, "no sft run among the documented commands"

    # Every run of every recipe was stopped when its command ended.
    run_records = [json.loads(path.read_text())
                   for path in [*workdir.glob("outputs/*/*/run.json"),
                                *workdir.glob("multirun/*/*/run.json")]]
    assert {record["recipe"].rsplit(".", 2)[-2] for record in run_records} == {"sft", "rl",
                                                                                "dpo"}
    for record in run_records:
        assert record["status"] == "completed"
        for run_id in record["run_ids"]:
            assert stand_in.run(run_id)["status"] == "STOPPED", run_id
    assert (workdir / "checkpoint" / "checkpoint.json").is_file()
    assert any("service.replicas" in output for output in outputs)  # the dry run's plan


def test_user_configs_and_old_target_names_work_from_the_wheel(venv: Path,
                                                               tmp_path: Path) -> None:
    (tmp_path / "configs" / "recipe").mkdir(parents=True)
    (tmp_path / "configs" / "recipe" / "my_sft.yaml").write_text(
        "defaults:\n  - sft\n  - _self_\nlearning_rate: 1e-4\n")
    (tmp_path / "configs" / "recipe" / "old_name.yaml").write_text(
        "defaults:\n  - sft\n  - _self_\n_target_: recipes.sft.run\n")
    env = _user_env(venv, tmp_path / "home")
    python = str(venv / "bin" / "python")
    mine = _run([python, "-m", "loops_runner", "--config-dir", "configs", "+recipe=my_sft",
                 "dry_run=true"], cwd=tmp_path, env=env)
    assert "loops_runner.recipes.sft.run" in mine.stdout
    old = _run([python, "-m", "loops_runner", "--config-dir", "configs", "+recipe=old_name",
                "dry_run=true"], cwd=tmp_path, env=env)
    assert "loops_runner.recipes now" in old.stderr
