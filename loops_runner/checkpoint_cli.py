"""``loops-runner export`` and ``loops-runner checkpoints list|download``.

Both work on any backend: the local one (the data home's control-plane daemon,
started if needed) or a remote control plane such as Baseten's
(``--base-url https://api.baseten.co`` with the key in ``$BASETEN_API_KEY``),
always through the SDK. A checkpoint is named the way ``init_from`` names it:
``bt://`` path, run dir (``@name`` for one of its checkpoints) or folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from loops_runner.home import loops_home


def add_commands(commands: Any, add_home: Any) -> None:
    """Register ``export`` and ``checkpoints`` on the CLI's sub-command parser."""
    export = commands.add_parser(
        "export", help="write a checkpoint as a PEFT adapter folder (or --merge: a full model)")
    export.add_argument("checkpoint", help="bt:// path, run dir (its latest checkpoint; "
                                           "DIR@NAME for a named one) or checkpoint folder")
    export.add_argument("--to", required=True, help="destination folder (new or empty)")
    export.add_argument("--merge", action="store_true",
                        help="merge the adapter into the base weights: a Hugging Face model "
                             "folder with tokenizer and chat template")
    add_backend(export, add_home)

    serve = commands.add_parser(
        "serve-checkpoint", help="serve a checkpoint through the sampler's OpenAI routes")
    serve.add_argument("checkpoint", help="bt:// path, run dir (DIR@NAME) or checkpoint folder")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    add_backend(serve, add_home)

    checkpoints = commands.add_parser("checkpoints", help="list or download checkpoints")
    actions = checkpoints.add_subparsers(dest="checkpoints_command", required=True)
    listing = actions.add_parser("list", help="checkpoints of a run")
    listing.add_argument("run", help="run id, or a run dir (its run.json names the run)")
    add_backend(listing, add_home)
    download = actions.add_parser("download", help="fetch a checkpoint's files (progress bar)")
    download.add_argument("checkpoint", help="bt:// path, run dir (DIR@NAME) or checkpoint id")
    download.add_argument("--to", required=True, help="destination folder (new or empty)")
    add_backend(download, add_home)


def add_backend(parser: argparse.ArgumentParser, add_home: Any) -> None:
    add_home(parser)
    parser.add_argument("--base-url", default=None,
                        help="a remote control plane, e.g. https://api.baseten.co (default: "
                             "the local backend of the data home)")
    parser.add_argument("--api-key-env", default="BASETEN_API_KEY",
                        help="environment variable holding the remote API key")


def _service(args: argparse.Namespace) -> Any:
    from loops_runner.sdk import ServiceClient

    if args.base_url:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise SystemExit(f"loops-runner: --base-url needs an API key in ${args.api_key_env}")
        return ServiceClient(api_key=api_key, base_url=args.base_url)
    from loops_runner.runner.local_daemon import ensure_control_plane

    daemon = ensure_control_plane(loops_home(args.home), 1800.0)
    return ServiceClient(api_key=daemon.api_key, base_url=daemon.url)


def run_id_of(run: str) -> str:
    from loops_runner.runner.run_record import RunRecord

    folder = Path(run).expanduser()
    if folder.is_dir():
        record = RunRecord.load(folder)
        if record is None or record.run_id is None:
            raise SystemExit(f"loops-runner: {folder} is not a run dir with a run id")
        return record.run_id
    return run


def checkpoints_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    run_id = run_id_of(args.run)
    listed = _service(args).list_checkpoints(run_id)
    table = Table(title=f"checkpoints of run {run_id}")
    for column in ("path", "step", "target", "base model", "rank", "size", "created"):
        table.add_column(column)
    for item in sorted(listed, key=lambda c: (c.created_at, c.checkpoint_id)):
        table.add_row(item.path or item.id, str(item.step), str(item.target), item.base_model,
                      str(item.lora_adapter_config.rank), f"{item.size_bytes / 1e6:.2f} MB",
                      item.created_at.isoformat(timespec="seconds"))
    # Piped output (scripts, grep) gets whole paths, not a table cut to 80 columns.
    Console(width=None if sys.stdout.isatty() else 240).print(table)
    return 0


def _download(service: Any, path: str, dest: Path) -> Path:
    """Download ``path`` (bt:// or checkpoint id) into ``dest`` with a progress bar."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    checkpoint_id = service.get_checkpoint_by_path(path).id if path.startswith("bt://") else path
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn()) as progress:
        task = progress.add_task(f"downloading {path}", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        service.download_checkpoint(checkpoint_id, dest_dir=str(dest), progress=advance)
    return dest


def checkpoints_download(args: argparse.Namespace) -> int:
    from loops_runner.runner.checkpoint_refs import CheckpointRefError, resolve_path

    reference = args.checkpoint
    try:
        path = resolve_path(reference) if reference.startswith("bt://") or \
            Path(reference.partition("@")[0]).expanduser().exists() else reference
    except CheckpointRefError as error:
        raise SystemExit(f"loops-runner: {error}") from None
    result = _download(_service(args), path, Path(args.to).expanduser())
    print(f"downloaded {path} to {result}")
    return 0


def _local_copy(args: argparse.Namespace, path: str, scratch: Path) -> Path:
    """The checkpoint's folder on this machine: in the data home, or downloaded to scratch."""
    from loops_runner.runner.checkpoint_refs import local_folder

    folder = None if args.base_url else local_folder(path, loops_home(args.home))
    if folder is not None and folder.is_dir():
        return folder
    return _download(_service(args), path, scratch / "checkpoint")


def serve_checkpoint(args: argparse.Namespace) -> int:
    from loops_runner.checkpoint_export import ExportError, stage_for_serving
    from loops_runner.models.registry import readable_model_id
    from loops_runner.runner.checkpoint_refs import CheckpointRefError, resolve_path
    from loops_runner.servers.sampler import server

    home = loops_home(args.home)
    try:
        path = resolve_path(args.checkpoint)
        with tempfile.TemporaryDirectory(prefix="loops-serve-") as scratch:
            staged = stage_for_serving(_local_copy(args, path, Path(scratch)), home)
    except (CheckpointRefError, ExportError) as error:
        raise SystemExit(f"loops-runner: {error}") from None
    base = readable_model_id(staged.base_model, home)
    print(f"serving {path} (base {base}, step {staged.version}); loading the model...",
          flush=True)

    def announce(url: str) -> None:
        # Only now: the sampler accepts connections (the model is loaded).
        print(f"base URL: {url}/v1", flush=True)
        print(f"model: {staged.model_name}", flush=True)

    server.serve(argparse.Namespace(
        base_model=base, host=args.host, port=args.port, home=str(home),
        device=args.device, dtype="auto", run_id=staged.run_id, floor_wait=None,
        default_max_tokens=None, max_batch_rows=None, threads=None,
        live_names=(staged.model_name, path, args.checkpoint)), announce=announce)
    return 0


def export(args: argparse.Namespace) -> int:
    from loops_runner.checkpoint_export import ExportError, check_destination, export_folder
    from loops_runner.runner.checkpoint_refs import CheckpointRefError, resolve_path

    home = loops_home(args.home)
    dest = Path(args.to).expanduser()
    try:
        check_destination(dest)
        path = resolve_path(args.checkpoint)
        with tempfile.TemporaryDirectory(prefix="loops-download-") as scratch:
            result = export_folder(_local_copy(args, path, Path(scratch)), dest,
                                   merge=args.merge, home=home)
    except (CheckpointRefError, ExportError) as error:
        raise SystemExit(f"loops-runner: {error}") from None
    kind = "merged model" if result.merged else "PEFT adapter"
    print(f"exported {path} ({kind}, base {result.base_model}, rank {result.rank}) to "
          f"{result.dest}: {', '.join(result.files)}")
    return 0


def main(args: argparse.Namespace) -> int:
    if args.command == "export":
        return export(args)
    if args.command == "serve-checkpoint":
        return serve_checkpoint(args)
    if args.checkpoints_command == "list":
        return checkpoints_list(args)
    return checkpoints_download(args)
