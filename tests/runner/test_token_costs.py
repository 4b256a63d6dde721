"""Tokens and their cost on every metrics line, from the process's token counters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from loops_runner.runner.config import ConfigError, PricesSection, WandbSection, validate_config
from loops_runner.runner.lifecycle import print_use
from loops_runner.runner.metrics import MetricsLogger
from loops_runner.runner.run_record import RunRecord
from loops_runner.sdk.usage import add_tokens


def _logger(run_dir: Path, prices: PricesSection | None) -> MetricsLogger:
    return MetricsLogger(run_dir, WandbSection(), run_name="t", config={}, prices=prices,
                         console=Console(file=None, quiet=True))


def test_each_line_prices_its_tokens_and_the_running_total(tmp_path: Path) -> None:
    prices = PricesSection(trained=3.0, prompt=1.0, sampled=None)  # sampled: not priced
    logger = _logger(tmp_path, prices)
    add_tokens(trained=1000, prompt=2000, sampled=500)
    logger.log(1, {})
    add_tokens(prompt=1_000_000, sampled=7)
    logger.log(2, {})
    first, second = (json.loads(line) for line in (tmp_path / "metrics.jsonl").open())
    assert (first["tokens/trained"], first["tokens/prompt"], first["tokens/sampled"]) == \
        (1000, 2000, 500)
    assert first["cost/usd"] == pytest.approx((3 * 1000 + 2000) / 1e6)
    assert second["cost/usd"] == pytest.approx(1.0)
    assert second["tokens/prompt_total"] == 1_002_000
    assert second["cost/usd_total"] == pytest.approx(first["cost/usd"] + second["cost/usd"])
    # A resumed run's totals go on from its kept lines.
    again = _logger(tmp_path, prices)
    add_tokens(trained=1_000_000)
    again.log(3, {})
    third = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert third["cost/usd_total"] == pytest.approx(second["cost/usd_total"] + 3.0)


def test_without_prices_there_is_no_cost_metric(tmp_path: Path) -> None:
    logger = _logger(tmp_path, None)
    add_tokens(sampled=3)
    logger.log(1, {})
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["tokens/sampled"] == 3 and not any(k.startswith("cost/") for k in line)


def test_the_summary_states_the_cost_at_your_prices() -> None:
    record = RunRecord(config_hash="h", seed=0, run_name="t", recipe="rl", backend="local",
                       base_model="tiny", tokens={"trained": 2_000_000, "prompt": 0,
                                                  "sampled": 1_000_000})
    console = Console(record=True, width=400)
    print_use(record, console, PricesSection(trained=0.5, sampled=2.0))
    assert "tokens trained 2000000, prompt 0, sampled 1000000; $3.0000 at your prices.*" in \
        console.export_text()


def test_a_negative_price_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"prices\.sampled"):
        validate_config({"model": {"base_model": "tiny"}, "recipe": {},
                     "prices": {"sampled": -1.0}})
