"""inspect-ai and lm-eval against ``loops-runner serve-checkpoint`` (the optional extra).

Each framework runs a small task built here from the task registry's held-out
split (no downloads) against the sampler's OpenAI routes serving a checkpoint.
Skipped only when the ``eval-frameworks`` extra is not installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loops_runner.storage import atomic, manifests
from loops_runner.tasks import sample_rows
from tests.sampler import helpers

QUESTIONS = 4


@pytest.fixture(scope="module")
def served(loops_home: Path, tiny_model_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``loops-runner serve-checkpoint`` on an adapter; yields the printed base URL."""
    adapter = helpers.make_adapter(tiny_model_dir, seed=5, scale=0.05)
    folder = adapter.save(loops_home, "frameworks-src", "ckpt", step=2)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "loops_runner.cli", "serve-checkpoint", str(folder),
             "--home", str(loops_home)], stdout=handle, stderr=subprocess.STDOUT,
            env={**os.environ, "LOOPS_SAMPLER_THREADS": "1"})
    try:
        url = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"base URL: (\S+)", log.read_text())
            if found:
                url = found.group(1)
                try:
                    if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        assert url is not None and process.poll() is None, log.read_text()[-2000:]
        assert "model: default" in log.read_text()
        served_ids = [m["id"] for m in httpx.get(f"{url}/models").json()["data"]]
        assert "default" in served_ids
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        atomic.read_json(folder / manifests.MANIFEST_FILE)  # the source is left as it was


def _rows() -> list[dict]:
    return sample_rows(QUESTIONS, split="heldout", unique=True, families=["addition"])


def test_inspect_ai_runs_a_local_task_against_the_served_checkpoint(
        served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("inspect_ai", reason="the eval-frameworks extra is not installed")
    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.scorer import exact
    from inspect_ai.solver import generate

    monkeypatch.setenv("LOOPS_API_KEY", "unused")  # inspect's openai-api/<name> wants a key
    task = Task(dataset=[Sample(input=row["prompt"], target=row["answer"]) for row in _rows()],
                solver=generate(), scorer=exact())
    logs = eval(task, model="openai-api/loops/default", model_base_url=served,
                log_dir=str(tmp_path / "logs"), display="none", max_tokens=8, temperature=0.0)
    assert logs[0].status == "success", logs[0].error
    samples = logs[0].samples or []
    assert len(samples) == QUESTIONS
    assert all(s.output.completion is not None for s in samples)
    assert logs[0].results is not None and logs[0].results.scores


def test_lm_eval_runs_a_local_task_against_the_served_checkpoint(served: str,
                                                                  tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="the eval-frameworks extra is not installed")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = tasks / "heldout.jsonl"
    data.write_text("".join(json.dumps({"question": r["prompt"], "answer": r["answer"]}) + "\n"
                            for r in _rows()))
    (tasks / "loops_heldout.yaml").write_text(f"""
task: loops_heldout
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
""")
    output = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "local-chat-completions",
         "--apply_chat_template", "--model_args",
         f"model=default,base_url={served}/chat/completions,tokenized_requests=False,"
         "num_concurrent=4", "--tasks", "loops_heldout", "--include_path", str(tasks),
         "--output_path", str(output)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OPENAI_API_KEY": "unused", "HF_DATASETS_OFFLINE": "1",
             "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = list(output.rglob("results_*.json"))
    assert files, result.stdout[-2000:]
    report = json.loads(files[0].read_text())
    assert 0.0 <= report["results"]["loops_heldout"]["exact_match,none"] <= 1.0
    assert report["n-samples"]["loops_heldout"]["effective"] == QUESTIONS
