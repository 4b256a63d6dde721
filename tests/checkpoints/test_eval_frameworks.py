"""``loops-runner serve-checkpoint`` and the outside frameworks of docs/eval.md.

The server is the real CLI on a checkpoint; the inspect-ai and lm-eval commands
are read from docs/eval.md and run as written (in a folder holding small tasks
built here from the task registry's held-out split, no downloads), so the docs
cannot drift from what works. The frameworks come with the ``eval-frameworks``
extra, which bootstrap (and so CI) installs; without it those tests skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from loops_runner.storage import atomic, manifests
from loops_runner.tasks import sample_rows
from tests.sampler import helpers

QUESTIONS = 4
ROOT = Path(__file__).resolve().parents[2]
SOURCE_RUN, SOURCE_NAME = "frameworks-src", "ckpt"
MODEL = f"{SOURCE_RUN}/{SOURCE_NAME}"


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    log: Path
    url: str  # the printed base URL (ends in /v1)
    folder: Path


def _wait_for_url(process: subprocess.Popen[bytes], log: Path) -> str:
    """The printed base URL; the server must accept connections the moment it is printed."""
    import time

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        found = re.search(r"base URL: (\S+)", log.read_text())
        if found:
            url = found.group(1)
            # No retry here: printing the URL promises the server already listens.
            assert httpx.get(f"{url}/models", timeout=10).status_code == 200
            return url
        time.sleep(0.05)
    raise AssertionError(log.read_text()[-3000:])


@pytest.fixture(scope="module")
def served(loops_home: Path, tiny_model_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``loops-runner serve-checkpoint`` on an adapter saved as ``frameworks-src/ckpt``."""
    adapter = helpers.make_adapter(tiny_model_dir, seed=5, scale=0.05)
    folder = adapter.save(loops_home, SOURCE_RUN, SOURCE_NAME, step=2)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "loops_runner.cli", "serve-checkpoint", str(folder),
             "--home", str(loops_home)], stdout=handle, stderr=subprocess.STDOUT,
            env={**os.environ, "LOOPS_SAMPLER_THREADS": "1"})
    try:
        yield Served(process, log, _wait_for_url(process, log), folder)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        atomic.read_json(folder / manifests.MANIFEST_FILE)  # the source is left as it was


def test_the_served_checkpoint_has_a_readable_id_and_its_paths_still_work(
        served: Served) -> None:
    assert f"model: {MODEL}" in served.log.read_text()
    client = openai.OpenAI(base_url=served.url, api_key="unused")
    assert [m.id for m in client.models.list()] == ["tiny", MODEL]
    for name in (MODEL, "default", str(served.folder)):
        assert client.models.retrieve(name).id == MODEL

    def scores(name: str) -> tuple[float, ...]:
        completion = client.completions.create(model=name, prompt="2+2=", max_tokens=4,
                                               temperature=0, logprobs=0)
        return tuple(completion.choices[0].logprobs.token_logprobs)  # type: ignore[union-attr]

    # Every name of the checkpoint serves the adapter (the base scores differently).
    answers = {scores(name) for name in (MODEL, "default", str(served.folder))}
    assert len(answers) == 1 and scores("tiny") not in answers


# -- the docs' commands --------------------------------------------------------------


def _docs_commands() -> dict[str, str]:
    """The bash blocks of docs/eval.md's "Outside evaluation frameworks", by framework."""
    text = (ROOT / "docs" / "eval.md").read_text()
    section = text[text.index("## Outside evaluation frameworks"):]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = {}
    for block in blocks:
        command = block.strip()
        for name, marker in (("inspect", "inspect eval"),
                             ("lm_eval_chat", "local-chat-completions"),
                             ("lm_eval_loglikelihood", "local-completions")):
            if marker in command:
                commands[name] = command
    assert set(commands) == {"inspect", "lm_eval_chat", "lm_eval_loglikelihood"}, blocks
    return commands


def _rows() -> list[dict]:
    return sample_rows(QUESTIONS, split="heldout", unique=True, families=["addition"])


def _run_docs_command(name: str, served: Served, cwd: Path, extra: str = "") -> str:
    env = {**os.environ, "BASE_URL": served.url, "MODEL": MODEL,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("OPENAI_API_KEY", None)  # the docs' commands set what they need
    result = subprocess.run(["bash", "-c", _docs_commands()[name] + extra], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_inspect_ai_command_of_the_docs(served: Served, tmp_path: Path) -> None:
    pytest.importorskip("inspect_ai", reason="the eval-frameworks extra is not installed")
    from inspect_ai.log import list_eval_logs, read_eval_log

    samples = ",\n".join(f"    Sample(input={row['prompt']!r}, target={row['answer']!r})"
                         for row in _rows())
    (tmp_path / "my_task.py").write_text(f"""
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import exact
from inspect_ai.solver import generate


@task
def my_task():
    return Task(dataset=[
{samples}
    ], solver=generate(), scorer=exact(), config=GenerateConfig(max_tokens=8, temperature=0.0))
""")
    _run_docs_command("inspect", served, tmp_path)
    logs = list_eval_logs(str(tmp_path / "logs"))
    assert len(logs) == 1
    log = read_eval_log(logs[0])
    assert log.status == "success", log.error
    assert len(log.samples or []) == QUESTIONS
    assert all(s.output.completion is not None for s in log.samples or [])
    assert log.results is not None and log.results.scores


def test_inspect_openai_provider_fails_at_once_naming_openai_api(
        served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """inspect's ``openai/`` provider calls /v1/responses: a 404 it does not retry."""
    pytest.importorskip("inspect_ai", reason="the eval-frameworks extra is not installed")
    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.scorer import exact
    from inspect_ai.solver import generate

    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    task = Task(dataset=[Sample(input="2+2=", target="4")], solver=generate(), scorer=exact())
    failed = eval(task, model=f"openai/{MODEL}", model_base_url=served.url,
                  log_dir=str(tmp_path / "logs"), display="none", max_tokens=4)
    assert failed[0].status == "error"
    assert failed[0].error is not None and "openai-api/" in failed[0].error.message
    # The other way out the message names: chat completions through openai/.
    works = eval(task, model=f"openai/{MODEL}", model_base_url=served.url,
                 model_args={"responses_api": False}, log_dir=str(tmp_path / "logs"),
                 display="none", max_tokens=4)
    assert works[0].status == "success", works[0].error


def _write_lm_eval_tasks(folder: Path) -> None:
    folder.mkdir()
    rows = _rows()
    generate = folder / "heldout.jsonl"
    generate.write_text("".join(json.dumps({"question": r["prompt"], "answer": r["answer"]})
                                + "\n" for r in rows))
    choices = folder / "choices.jsonl"
    choices.write_text("".join(json.dumps({
        "question": r["prompt"], "choices": [r["answer"], f"{r['answer']}0", "no"],
        "label": 0}) + "\n" for r in rows))
    common = """
test_split: test
dataset_path: json
doc_to_text: "{{question}}"
"""
    (folder / "my_task.yaml").write_text(f"""task: my_task
dataset_kwargs:
  data_files:
    test: {generate}
output_type: generate_until
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
{common}""")
    (folder / "my_choice_task.yaml").write_text(f"""task: my_choice_task
dataset_kwargs:
  data_files:
    test: {choices}
output_type: multiple_choice
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
{common}""")


def _lm_eval_report(folder: Path, task: str) -> dict:
    files = list(folder.rglob("results_*.json"))
    assert len(files) == 1, files
    report = json.loads(files[0].read_text())
    assert report["n-samples"][task]["effective"] == QUESTIONS
    return report["results"][task]


def test_lm_eval_commands_of_the_docs(served: Served, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="the eval-frameworks extra is not installed")
    _write_lm_eval_tasks(tmp_path / "my_tasks")
    # Only --output_path is added to the docs' commands, to read the results back.
    _run_docs_command("lm_eval_chat", served, tmp_path, " --output_path chat")
    assert 0.0 <= _lm_eval_report(tmp_path / "chat", "my_task")["exact_match,none"] <= 1.0
    _run_docs_command("lm_eval_loglikelihood", served, tmp_path, " --output_path choice")
    assert 0.0 <= _lm_eval_report(tmp_path / "choice", "my_choice_task")["acc,none"] <= 1.0


def test_ctrl_c_stops_serve_checkpoint_without_a_traceback(served: Served) -> None:
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=60) == 130
    log = served.log.read_text()
    assert "Traceback" not in log, log[-3000:]
