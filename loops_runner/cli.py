"""``loops-runner``: model preparation, the local servers and run reports.

The training runner itself is ``python -m loops_runner`` (a Hydra app); this
console script holds the operational commands around it. Heavy imports (torch,
the engines) happen inside each command, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from loops_runner.home import loops_home
from loops_runner.wire.placement import DEFAULT_RUNS_PER_TRAINER


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=None,
                        help="data home (default: $LOOPS_HOME or the user data directory)")


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", required=True,
                        help="registry name (e.g. tiny), local model directory or HF id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    _add_home(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loops-runner", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list or prepare base models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    prepare = model_commands.add_parser("prepare",
                                        help="install or locate a model; print its dir")
    prepare.add_argument("name", help="registry name, directory or HF id")
    _add_home(prepare)
    listing = model_commands.add_parser("list", help="show known models")
    _add_home(listing)
    build = model_commands.add_parser(
        "build", help="pretrain tiny from scratch into the data home (minutes on a CPU)")
    build.add_argument("name", choices=["tiny"], help="the built-in model to build")
    _add_home(build)
    info = model_commands.add_parser("info", help="how a model was built and what it can do")
    info.add_argument("name", help="registry name, directory or HF id")
    _add_home(info)

    daemon = commands.add_parser("daemon", help="the local backend's control-plane daemon")
    daemon.add_argument("action", choices=["status", "stop"])
    _add_home(daemon)

    report = commands.add_parser(
        "report", help="write report.html (and PNGs) for a run, a sweep or several runs")
    report.add_argument("paths", nargs="+", metavar="DIR",
                        help="a run dir, a sweep dir, or several run dirs to compare")
    report.add_argument("--out", default=None,
                        help="folder for report.html and report_plots/ (default: the run or "
                             "sweep dir; required for several run dirs)")
    report.add_argument("--no-png", action="store_true", help="write the HTML page only")

    from loops_runner import checkpoint_cli

    checkpoint_cli.add_commands(commands, _add_home)

    from loops_runner import runs_cli

    runs_cli.add_commands(commands, lambda parser: checkpoint_cli.add_backend(parser, _add_home))

    serve = commands.add_parser("serve", help="run a local Loops server")
    servers = serve.add_subparsers(dest="server", required=True)
    trainer = servers.add_parser("trainer", help="LoRA trainer (PyTorch + PEFT)")
    _add_engine_options(trainer)
    sampler = servers.add_parser("sampler", help="batched sampler with adapter hot-swap")
    _add_engine_options(sampler)
    sampler.add_argument("--run-id", default=None,
                         help="follow this run's published weights (paired sampler)")
    sampler.add_argument("--floor-wait", type=float, default=None,
                         help="seconds to hold a request behind X-Min-Policy-Version before "
                              "answering 408 (default $LOOPS_SAMPLER_FLOOR_WAIT_S or 25)")
    sampler.add_argument("--default-max-tokens", type=int, default=None,
                         help="max_tokens when a request omits it (default 16)")
    sampler.add_argument("--max-batch-rows", type=int, default=None,
                         help="sequences decoded together (default 64 on CPU, 256 on GPU)")
    sampler.add_argument("--threads", type=int, default=None,
                         help="CPU threads of the engine (default: 1 for small models)")
    sampler.add_argument("--stream-interval", type=float, default=None,
                         help="seconds between a stream's chunks at least (default "
                              "$LOOPS_SAMPLER_STREAM_INTERVAL_S or 0.1; 0 = every step)")
    sampler.add_argument("--stream-events-per-s", type=float, default=None,
                         help="chunks a second for all open streams together: more streams "
                              "stretch the interval (default $LOOPS_SAMPLER_STREAM_EVENTS_PER_S "
                              "or 100; 0 = no budget)")
    control = servers.add_parser("control-plane", help="sessions, runs, samplers, checkpoints")
    control.add_argument("--host", default=None,
                         help="bind address (default 127.0.0.1; setting it explicitly "
                              "allows non-loopback clients)")
    control.add_argument("--port", type=int, default=0, help="0 picks a free port")
    _add_home(control)
    # The key is read from a file or the environment, never taken as an argument:
    # a command line is readable by every local user (ps).
    control.add_argument("--api-key-file", default=None, metavar="PATH",
                         help="require the key in this file (mode 0600) on every route "
                              "(default: $LOOPS_CONTROL_PLANE_API_KEY; neither = no key)")
    control.add_argument("--idle-timeout", type=float, default=1800.0,
                         help="stop servers idle this many seconds (default 1800)")
    control.add_argument("--runs-per-trainer", type=int, default=DEFAULT_RUNS_PER_TRAINER,
                         help="open runs of one base model that share a trainer process "
                              f"before another starts (default {DEFAULT_RUNS_PER_TRAINER}; "
                              "1 = a process per run)")
    return parser


def _models_prepare(name: str, home: str | None) -> int:
    from loops_runner.models.registry import resolve_model

    resolved = resolve_model(name, loops_home(home))
    print(resolved.load_path)
    return 0


def _models_build(home: str | None) -> int:
    from loops_runner.tiny_build.builder import build_into_home

    # A build of the current recipe version already in the home is kept (it is
    # what a build would write again on this machine class).
    print(build_into_home(loops_home(home)))
    return 0


def _models_info(name: str, home: str | None) -> int:
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from loops_runner.models import tiny
    from loops_runner.models.machine import recorded_machine
    from loops_runner.models.registry import resolve_model

    resolved = resolve_model(name, loops_home(home))
    console = Console()
    console.print(f"{name}: {resolved.load_path}")
    build_file = Path(resolved.load_path) / tiny.BUILD_INFO
    if not build_file.is_file():
        config_file = Path(resolved.load_path) / "config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text())
            console.print({k: config.get(k) for k in ("model_type", "hidden_size",
                                                      "num_hidden_layers", "vocab_size")})
        else:
            console.print("no local build information (a Hugging Face id is loaded on use)")
        return 0
    info = json.loads(build_file.read_text())
    pretrain = info.get("pretrain", {})
    console.print(f"parameters {info['parameters']:,}; recipe version {info['recipe_version']}; "
                  f"built in {info['build_seconds']} s "
                  f"(pretraining {pretrain.get('steps')} steps in {pretrain.get('seconds')} s, "
                  f"loss {pretrain.get('first_loss')} -> {pretrain.get('final_loss')})")
    built_on = recorded_machine(info)
    if built_on is not None:
        # Rebuilds reproduce the bytes only on this CPU class (docs/tiny-model.md).
        console.print(f"built on {built_on.describe()}", highlight=False, soft_wrap=True)
    table = Table(title=f"greedy held-out accuracy ({info.get('heldout_sample')} questions)")
    table.add_column("family")
    table.add_column("accuracy", justify="right")
    labels = {"all": "all families", "default_mix": "default task mix"}
    for family, value in info.get("heldout_accuracy", {}).items():
        table.add_row(labels.get(family, family), f"{value:.0%}")
    console.print(table)
    return 0


def _models_list(home: str | None) -> int:
    from rich.console import Console
    from rich.table import Table

    from loops_runner.models import tiny
    from loops_runner.models.registry import REGISTRY

    data_home = loops_home(home)
    table = Table(title=f"Known models (data home {data_home})")
    for column in ("name", "source", "max context", "location", "notes"):
        table.add_column(column)
    for entry in REGISTRY.values():
        if entry.source == "builtin":
            directory = tiny.model_dir(data_home)
            location = str(directory) if tiny.is_built(directory) else "(not built yet)"
        else:
            location = entry.hf_id or ""
        table.add_row(entry.name, entry.source, str(entry.max_context_length), location,
                      entry.description)
    Console().print(table)
    print("Any Hugging Face id or local model directory is accepted as a base model too.")
    return 0


def _daemon(action: str, home: str | None) -> int:
    from loops_runner.runner.local_daemon import find_control_plane, stop_control_plane

    data_home = loops_home(home)
    running = find_control_plane(data_home)
    if action == "status":
        if running is None:
            print(f"no control-plane daemon is running for {data_home}")
            return 1
        print(f"control-plane daemon pid {running.pid} at {running.url} (data home {data_home})")
        return 0
    if stop_control_plane(data_home):
        print(f"stopped the control-plane daemon of {data_home} (and its servers)")
    else:
        print(f"no control-plane daemon is running for {data_home}")
    return 0


def _report(paths: list[str], out: str | None, pngs: bool) -> int:
    from pathlib import Path

    from loops_runner.report import ReportError, write_report

    try:
        result = write_report([Path(p) for p in paths], Path(out) if out else None, pngs=pngs)
    except ReportError as error:
        print(f"loops-runner report: {error}", file=sys.stderr)
        return 2
    print(f"{result.html} ({result.kind} report, {result.size_bytes / 1e6:.1f} MB, "
          f"{len(result.pngs)} PNGs, {result.seconds:.1f} s)")
    return 0


_SERVER_MODULES = {
    "trainer": "loops_runner.servers.trainer.server",
    "sampler": "loops_runner.servers.sampler.server",
    "control-plane": "loops_runner.servers.control_plane.server",
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run_command(argv)
    except KeyboardInterrupt:
        # Ctrl-C. Servers have shut down gracefully by now (uvicorn re-raises the
        # signal after its shutdown); a traceback would only look like a crash.
        return 130


def _run_command(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "models":
        if args.models_command == "prepare":
            return _models_prepare(args.name, args.home)
        if args.models_command == "info":
            return _models_info(args.name, args.home)
        if args.models_command == "build":
            return _models_build(args.home)
        return _models_list(args.home)
    if args.command == "daemon":
        return _daemon(args.action, args.home)
    if args.command == "report":
        return _report(args.paths, args.out, not args.no_png)
    if args.command == "runs":
        from loops_runner import runs_cli

        return runs_cli.main(args)
    if args.command in ("export", "checkpoints", "serve-checkpoint"):
        from loops_runner import checkpoint_cli

        return checkpoint_cli.main(args)
    module = importlib.import_module(_SERVER_MODULES[args.server])
    module.serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
