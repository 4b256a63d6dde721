"""The divergent-token table reaches divergence.jsonl and W&B (offline) at its own step."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from loops_runner.rl.reporting import DIVERGENCE_FILE, log_divergent_tokens
from loops_runner.runner.config import WandbSection
from loops_runner.runner.metrics import MetricsLogger
from tests.sdk.test_sdk_wandb import read_history

ROW = {"token": " 7", "context": "What is 3 + 4?", "sequence": 2, "position": 11,
       "sampler_logprob": -0.5, "trainer_logprob": -3.0, "diff": -2.5, "advantage": 0.25}


def test_each_steps_table_sits_beside_that_steps_metrics(tmp_path: Path,
                                                         monkeypatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = MetricsLogger(tmp_path, WandbSection(mode="offline", project="rl-tests"),
                           run_name="divergence", config={}, console=Console(quiet=True))
    try:
        for step in (1, 2):
            log_divergent_tokens(tmp_path, logger, step, [ROW] if step == 1 else [])
            logger.log(step, {"kl/sample_train_k3": 0.1 * step})
    finally:
        logger.close()
        # wandb keeps process-wide settings (its directory among them) from its first
        # init; tear them down so later tests in this process read their own WANDB_DIR.
        import wandb

        wandb.teardown()

    [line] = [json.loads(x) for x in (tmp_path / DIVERGENCE_FILE).read_text().splitlines()]
    assert line == {"step": 1, "tokens": [ROW]}  # a step with nothing trained writes none
    [log] = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    deadline = time.monotonic() + 20
    while len(rows := read_history(log)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [row["_step"] for row in rows] == [1, 2]  # no step pushed back or dropped
    assert rows[0]["kl/sample_train_k3"] == 0.1 and rows[1]["kl/sample_train_k3"] == 0.2
    assert rows[0]["diag/divergent_tokens/_type"] == "table-file"
    assert rows[0]["diag/divergent_tokens/nrows"] == 1
    assert rows[0]["diag/divergent_tokens/ncols"] == 8
    assert not any(key.startswith("diag/divergent_tokens") for key in rows[1])
