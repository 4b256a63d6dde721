"""One runner job: validate, resolve, (resume,) provision, run the recipe, record.

Called by the Hydra app in ``loops_runner.__main__`` once per job (once for a
single run, once per sweep point for ``-m``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import shutil
import signal
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from loops_runner.runner.backends import (
    backend_of,
    provision_options,
    provisioning_turn,
    remember_session,
)
from loops_runner.runner.budget import Budget, BudgetReached
from loops_runner.runner.checkpoint_refs import (
    CheckpointInfo,
    CheckpointRefError,
    check_matches,
    describe,
)
from loops_runner.runner.config import (
    ConfigError,
    RunnerConfig,
    validate_config,
    validate_section,
)
from loops_runner.runner.context import RunContext
from loops_runner.runner.end_hooks import write_reports
from loops_runner.runner.lifecycle import (
    ServiceUse,
    keeps_warm,
    print_use,
    record_use,
    release,
)
from loops_runner.runner.metrics import (
    METRICS_FILE,
    MetricsLogger,
    latest_values,
    truncate_after,
)
from loops_runner.runner.recipes import Recipe, builtin_recipe_names, load_recipe
from loops_runner.runner.run_dirs import CLAIM_FILE, claim_run_dir
from loops_runner.runner.run_files import RESOLVED_CONFIG_FILE
from loops_runner.runner.run_record import (
    CheckpointRecord,
    RunRecord,
    config_hash,
    git_sha,
    package_versions,
)
from loops_runner.runner.summary import changes_table, headline_changes
from loops_runner.runner.sweep import current_sweep_dir


def _no_recipe_message() -> str:
    names = ", ".join(builtin_recipe_names())
    return (f"no recipe chosen. Pick one with +recipe=<name>; built-in recipes: {names}. "
            "Example: python -m loops_runner +recipe=sft")


def prepare(cfg: DictConfig) -> tuple[RunnerConfig, Recipe, Any, dict[str, Any]]:
    """Validate the composed config, load the recipe, validate its section."""
    raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    if "recipe" not in raw or not raw["recipe"]:
        raise ConfigError(_no_recipe_message())
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError("missing required config values: " + ", ".join(missing))
    config = validate_config(raw)
    recipe_section = dict(config.recipe)
    target = str(recipe_section.pop("_target_", ""))
    recipe = load_recipe(target)
    schema = recipe.config_schema
    recipe_cfg: Any = validate_section(schema, recipe_section, "recipe.") if schema else \
        OmegaConf.create(recipe_section)
    return config, recipe, recipe_cfg, raw


def _print_plan(config: RunnerConfig, recipe: Recipe, recipe_cfg: Any, console: Console) -> None:
    from loops_runner.models.registry import resolve_model

    resolved = resolve_model(config.model.base_model, backend_of(config).model_home())
    table = Table(title="dry run: plan", show_header=False)
    table.add_row("recipe", recipe.target)
    table.add_row("backend", config.backend.kind)
    table.add_row("base model", f"{config.model.base_model} -> {resolved.load_path}")
    table.add_row("LoRA rank", str(config.model.rank))
    table.add_row("seed", str(config.seed))
    for key, value in config.service.model_dump(mode="json").items():
        table.add_row(f"service.{key}", str(value))
    table.add_row("run name (service)", config.run_name or "(the run dir's name)")
    table.add_row("wandb.client_run", str(config.wandb.client_run))
    table.add_row("when it ends", "keep trainers warm" if keeps_warm(config)
                  else "stop its trainers and samplers")
    if recipe.plan is not None:
        tokenizer = None
        try:
            from loops_runner.sdk.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(resolved.load_path)
        except Exception as error:
            table.add_row("tokenizer", f"unavailable offline ({type(error).__name__})")
        plan = recipe.plan(recipe_cfg, tokenizer, Budget(config.max_steps, config.time_budget_s))
        for key, value in plan.items():
            table.add_row(key, str(value))
    console.print(table)


def _resume_point(run_dir: Path, config: RunnerConfig, digest: str,
                  data_digest: str | None) -> RunRecord | None:
    """The earlier record of this run dir, if it can and should be resumed."""
    record = RunRecord.load(run_dir)
    if record is None or config.resume.fork:
        return record
    if record.config_hash != digest:
        raise ConfigError(
            f"the config changed since the run in {run_dir} was started, so it cannot be "
            "resumed as is. Pass resume.fork=true to continue it with the new config, "
            "resume.restart=true to start this run dir over, or choose another run dir "
            "(e.g. a different override or hydra.run.dir=...)."
        )
    if record.data_digest is not None and data_digest != record.data_digest:
        raise ConfigError(
            f"the data changed since the run in {run_dir} was started (same command, other "
            "rows), so its results and checkpoints are not this data's. Start over with "
            "resume.restart=true (the earlier files move to previous-<n>/), or pass "
            "resume.fork=true to continue the earlier run on the new data."
        )
    return record


def _init_from(config: RunnerConfig, service: Any) -> CheckpointInfo | None:
    if not config.init_from:
        return None
    home = backend_of(config).data_home
    try:
        info = describe(config.init_from, home=home, service=service)
        if home is not None:
            check_matches(info, config.model.base_model, config.model.rank, home)
        else:  # the base model is compared once the service has named it
            check_matches(dataclasses.replace(info, base_model=None), "", config.model.rank,
                          None)
    except CheckpointRefError as error:
        raise ConfigError(f"init_from: {error}") from None
    return info


def _check_init_model(init: CheckpointInfo, training: Any, config: RunnerConfig) -> None:
    """A remote service names the model its own way (a local name may come back as a
    directory), so its answer, known once the trainer exists, is what is compared."""
    try:
        check_matches(init, training.base_model, config.model.rank, None)
    except CheckpointRefError as error:
        raise ConfigError(f"init_from: {error}") from None


def _load_weights(training: Any, path: str) -> None:
    try:
        training.load_state(path).result()
    except BaseException:
        close = getattr(training, "close", None)
        if close is not None:
            close()
        raise


def run_job(cfg: DictConfig, run_dir: Path, console: Console | None = None) -> dict[str, Any]:
    """Run one job; after a service failure, run it again from its last checkpoint.

    A retry is an ordinary resume (the next attempt reads ``run.json``): a
    fresh trainer loads the last checkpoint with its optimizer, and the data
    cursor and RNG come back from the checkpoint record, so the result matches
    an uninterrupted run. ``resume.auto_retries`` bounds the retries.
    """
    from loops_runner.runner.recovery import RETRY_PAUSE_S, describe, is_recoverable

    console = console or Console()
    retries_left = prepare(cfg)[0].resume.auto_retries  # a bad config is refused right here
    first_attempt = True
    while True:
        try:
            # resume.restart sets aside what was there before this command, once: a retry
            # continues this command's own run.
            return _run_job_once(cfg, run_dir, console, restart=first_attempt)
        except Exception as error:
            if retries_left <= 0 or not is_recoverable(error):
                raise
            first_attempt = False
            retries_left -= 1
            console.print(f"[yellow]The run failed: {describe(error)}[/yellow]\n"
                          f"Retrying from its last checkpoint ({retries_left} automatic "
                          "retries left after this one; resume.auto_retries)")
            time.sleep(RETRY_PAUSE_S)


def _run_job_once(cfg: DictConfig, run_dir: Path, console: Console | None = None,
                  restart: bool = True) -> dict[str, Any]:
    console = console or Console()
    config, recipe, recipe_cfg, raw = prepare(cfg)
    # Bad data must stop the run before any server is provisioned or file written.
    data = recipe.prepare_data(recipe_cfg, config.seed) if recipe.prepare_data else None
    summary = getattr(data, "summary", None)
    for line in summary.lines() if summary is not None else ():
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if config.dry_run:
        _print_plan(config, recipe, recipe_cfg, console)
        return {}
    if config.resume.from_dir:
        run_dir = Path(config.resume.from_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    with claim_run_dir(run_dir):
        if config.resume.restart and restart:
            _set_aside(run_dir, console)
        return _run_in_claimed_dir(config, recipe, recipe_cfg, raw, run_dir, console, data)


# What stays in a run dir that starts over: Hydra's record of this very command and the
# claim this process holds.
_KEEP_ON_RESTART = (".hydra", CLAIM_FILE)


def _set_aside(run_dir: Path, console: Console) -> None:
    """Move an earlier run's files to ``previous-<n>/`` (nothing saved is ever deleted)."""
    earlier = [p for p in run_dir.iterdir()
               if p.name not in _KEEP_ON_RESTART and not p.name.startswith("previous-")]
    if not earlier:
        return
    number = 1 + sum(1 for p in run_dir.iterdir() if p.name.startswith("previous-"))
    target = run_dir / f"previous-{number}"
    target.mkdir()
    for path in earlier:
        path.rename(target / path.name)
    console.print(f"Starting over: the earlier run's files are in {target}")


def _completed_message(run_dir: Path, record: RunRecord) -> str:
    """The final metrics of a completed run, one per line, and how to start it over."""
    width = max((len(k) for k in record.final_metrics), default=0)
    lines = [f"  {key:<{width}}  {value:.3f}" if isinstance(value, float) else
             f"  {key:<{width}}  {value}" for key, value in record.final_metrics.items()]
    return "\n".join([f"Run in {run_dir} already completed; its final metrics:", *lines,
                      "Re-running the same command shows this again. To train again from "
                      "scratch add resume.restart=true (the earlier files move to "
                      f"{run_dir}/previous-<n>/)."])


def _provision(config: RunnerConfig, checkpoint: CheckpointRecord | None, run_name: str,
               console: Console) -> tuple[Any, Any, CheckpointInfo | None]:
    """The service client, a training client (fresh, restored from ``checkpoint``, or
    initialised from ``init_from``) and the init_from checkpoint when one was loaded.

    Every path passes the same service options (``provision_options``). When
    anything fails after the session exists, what it provisioned is released
    as at the end of a run, so no trainer is left billing.
    """
    init = None
    options = provision_options(config, run_name)
    backend = backend_of(config)
    with provisioning_turn(backend):
        service = backend.service_client()
        try:
            if checkpoint is None:
                # Refused here, before a trainer is provisioned or a step is taken.
                init = _init_from(config, service)
                training = service.create_lora_training_client(
                    config.model.base_model, rank=config.model.rank,
                    replicas=config.service.replicas, **options)
                if init is not None:
                    if backend.data_home is None:
                        _check_init_model(init, training, config)
                    console.print(f"Initialising from {init.reference} ({init.path}); "
                                  "fresh optimizer")
                    _load_weights(training, init.path)
            else:
                console.print(f"Resuming from step {checkpoint.step} ({checkpoint.path})")
                training = service.create_training_client_from_state_with_optimizer(
                    checkpoint.path, replicas=config.service.replicas, **options)
        except BaseException:
            release(config, service, console, current_sweep_dir())
            raise
        remember_session(backend, service.session_id)
    return service, training, init


def _run_in_claimed_dir(config: RunnerConfig, recipe: Recipe, recipe_cfg: Any,
                        raw: dict[str, Any], run_dir: Path, console: Console,
                        data: Any = None) -> dict[str, Any]:
    (run_dir / RESOLVED_CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(raw)))

    digest = config_hash(raw)
    data_digest = getattr(data, "digest", None)
    previous = _resume_point(run_dir, config, digest, data_digest)
    if previous is not None and previous.status == "completed" and not config.resume.fork:
        console.print(_completed_message(run_dir, previous), markup=False, highlight=False)
        return previous.final_metrics
    checkpoint = previous.latest_checkpoint() if previous else None
    run_name = config.run_name or run_dir.name or "run"
    record = previous or RunRecord(
        config_hash=digest, seed=config.seed, run_name=run_name, recipe=recipe.target,
        backend=config.backend.kind, base_model=config.model.base_model,
    )
    record.config_hash = digest
    record.data_digest = data_digest
    record.status = "running"
    record.attempts += 1
    record.error = None
    record.package_versions = package_versions()
    record.git_sha = git_sha(Path.cwd())
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.exists():
        # Never lose what an earlier attempt logged: keep a copy, then start
        # fresh (no checkpoint) or from the checkpoint's step.
        shutil.copyfile(metrics_path, run_dir / f"{METRICS_FILE}.attempt-{record.attempts - 1}")
    if checkpoint is None:
        record.checkpoints = []
        metrics_path.unlink(missing_ok=True)
    else:
        truncate_after(metrics_path, checkpoint.step)

    use = ServiceUse(config.service.replicas)
    service, training, init = _provision(config, checkpoint, run_name, console)
    record.session_id = service.session_id
    if init is not None:
        record.init_from = init.path
    if training.run_id:
        record.run_ids.append(training.run_id)
    record.save(run_dir)

    try:
        metrics = MetricsLogger(run_dir, config.wandb, run_name=run_name, config=raw,
                                wandb_id=record.wandb_id, console=console,
                                prices=config.prices)
    except BaseException:  # e.g. W&B refused: the trainer must not be left billing
        training.close()
        release(config, service, console, current_sweep_dir())
        raise
    record.wandb_id = metrics.wandb_id
    ctx = RunContext(
        config=config, service_client=service, training_client=training, run_dir=run_dir,
        metrics=metrics, record=record, budget=Budget(config.max_steps, config.time_budget_s),
        start_step=checkpoint.step if checkpoint else 0,
        cursor=dict(checkpoint.cursor) if checkpoint else {}, data=data,
        remove_checkpoint=backend_of(config).checkpoint_remover(),
        no_delete_note=f"the {config.backend.kind} service offers no checkpoint delete",
    )
    try:
        try:
            final = _call_recipe(recipe, ctx, recipe_cfg)
        except BudgetReached:  # a bare recipe stopped by the runner's guard
            metrics.stop_progress()
            final = {k: v for k, v in latest_values(run_dir / METRICS_FILE).items()
                     if not k.startswith(("time/", "tokens/"))}
            final["steps"] = ctx.record.latest_checkpoint().step  # type: ignore[union-attr]
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        if interrupted:
            _exit_on_second_interrupt()
        record.status = "stopped" if interrupted else "failed"
        record.stop_reason = "interrupted" if interrupted else None
        record.error = "".join(traceback.format_exception_only(error)).strip()
        record.finished_at = time.time()
        _end_attempt(config, service, training, metrics, record, use, run_dir, console)
        # A failed run's report shows how far it got; Ctrl-C means "stop now".
        if config.report and not interrupted:
            write_reports(run_dir, console)
        if interrupted:
            console.print(_interrupted_message(metrics.last_step, record), markup=False,
                          highlight=False)
            raise InterruptReported() from error
        raise
    record.status = "stopped" if ctx.stop_reason else "completed"
    record.stop_reason = ctx.stop_reason
    record.final_metrics = final
    record.finished_at = time.time()
    changes = headline_changes(run_dir / METRICS_FILE)
    if changes:
        console.print(changes_table(changes))
    _end_attempt(config, service, training, metrics, record, use, run_dir, console)
    if config.report:
        write_reports(run_dir, console)
    console.print(f"[green]Done.[/green] Run dir: {run_dir}")
    return final


class InterruptReported(KeyboardInterrupt):
    """A Ctrl-C the run has answered (stopped, recorded, said how to resume)."""


def _call_recipe(recipe: Recipe, ctx: RunContext, recipe_cfg: Any) -> dict[str, Any]:
    """Run the recipe; an ``async def run`` gets one event loop for the whole run."""
    if inspect.iscoroutinefunction(recipe.run):
        return asyncio.run(recipe.run(ctx, recipe_cfg)) or {}
    return recipe.run(ctx, recipe_cfg) or {}


def _exit_on_second_interrupt() -> None:
    """While the first Ctrl-C winds the run down, a second one exits at once."""

    def exit_now(signum: int, frame: Any) -> None:
        os.write(2, b"\ninterrupted again: exiting now\n")
        os._exit(130)

    signal.signal(signal.SIGINT, exit_now)


def _interrupted_message(last_step: int | None, record: RunRecord) -> str:
    checkpoint = record.latest_checkpoint()
    resume_from = checkpoint.step if checkpoint else 0
    where = f"at step {last_step}" if last_step is not None else "before the first step"
    return (f"interrupted {where}; re-run the same command to resume from step "
            f"{resume_from}" + ("" if checkpoint else " (no checkpoint yet: from the start)"))


def _end_attempt(config: RunnerConfig, service: Any, training: Any, metrics: MetricsLogger,
                 record: RunRecord, use: ServiceUse, run_dir: Path, console: Console) -> None:
    """Close the clients, stop (or keep) what the attempt provisioned, record what it used."""
    try:
        metrics.close()
        close = getattr(training, "close", None)
        if close is not None:
            close()
    finally:
        try:
            release(config, service, console, current_sweep_dir())
        finally:
            record_use(record, use)
            record.save(run_dir)
            print_use(record, console, config.prices)


def sweep_value(cfg: DictConfig, final: dict[str, Any]) -> Any:
    """What the job returns to Hydra: one number when ``objective`` names a metric.

    Optimising sweepers (Optuna) need a float; the basic sweeper takes the dict.
    """
    objective = cfg.get("objective")
    if not objective:
        return final
    if objective not in final:
        raise ConfigError(f"objective {objective!r} is not among the final metrics: "
                          f"{', '.join(sorted(final)) or '(none)'}")
    return float(final[objective])
