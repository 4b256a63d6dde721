"""Checkpoint listing, file URLs and downloads through the control plane (spec 7.4)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loops_runner.sdk.control_plane import ControlPlaneClient
from loops_runner.sdk.errors import RequestRejectedError
from loops_runner.sdk.http import make_client, raise_for_status
from loops_runner.sdk.types import CheckpointDownload
from loops_runner.wire import (
    Checkpoint,
    CheckpointFile,
    CheckpointFilesResponse,
    CheckpointTarget,
    VolumeCheckpointSource,
)

NOT_PRESIGNABLE = "NOT_PRESIGNABLE"
DOWNLOAD_TIMEOUT = 600.0
PAGE_SIZE = 1000


def resolve_name(name: str, candidates: list[Checkpoint],
                 target: CheckpointTarget | str | None = None) -> str:
    """The id of the one checkpoint saved under ``name`` (and ``target``, if given)."""
    wanted = CheckpointTarget(target) if target is not None else None
    in_target = [c for c in candidates if wanted is None or c.target == wanted]
    matches = [c for c in in_target if c.checkpoint_id == name]
    if len(matches) == 1:
        return matches[0].id
    if matches:
        listed = ", ".join(sorted(f"{c.id} ({c.target})" for c in matches))
        raise ValueError(f"{len(matches)} checkpoints of this run are named {name!r}; pass "
                         f"target='trainer' or 'sampler' to choose one: {listed}")
    scope = "" if wanted is None else f" with target {wanted.value!r}"
    known = ", ".join(sorted({c.checkpoint_id for c in in_target})) or "none"
    raise ValueError(f"no checkpoint named {name!r}{scope} in this run (known: {known})")


def resolve_id(control_plane: ControlPlaneClient, checkpoint_id: str | None, name: str | None,
               run_id: str | None, target: CheckpointTarget | str | None) -> str:
    if name is not None:
        if checkpoint_id is not None:
            raise ValueError("pass either checkpoint_id or name, not both")
        if run_id is None:
            raise ValueError(f"name={name!r} needs run_id (or pass checkpoint_id)")
        return resolve_name(name, control_plane.list_checkpoints(run_id), target)
    if checkpoint_id is None:
        raise ValueError("pass checkpoint_id, or name with run_id")
    if target is not None:
        raise ValueError("target selects among names; it does not apply to checkpoint_id")
    return checkpoint_id


def files_page(control_plane: ControlPlaneClient, checkpoint_id: str, page_size: int,
               page_token: int) -> CheckpointFilesResponse:
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    if page_token < 0:
        raise ValueError(f"page_token must be >= 0, got {page_token}")
    try:
        return control_plane.checkpoint_files(checkpoint_id, page_size, page_token)
    except RequestRejectedError as exc:
        if exc.reason == NOT_PRESIGNABLE:
            raise ValueError(f"checkpoint {checkpoint_id} cannot be fetched by URL; use "
                             "download_checkpoint() to write its files locally") from exc
        raise


def all_files(control_plane: ControlPlaneClient, checkpoint_id: str) -> list[CheckpointFile]:
    files: list[CheckpointFile] = []
    token: int | None = 0
    while token is not None:
        page = files_page(control_plane, checkpoint_id, PAGE_SIZE, token)
        files.extend(page.presigned_urls)
        if page.next_page_token is not None and page.next_page_token <= token:
            raise ValueError(f"the file listing of {checkpoint_id} does not advance "
                             f"(page token {token} -> {page.next_page_token})")
        token = page.next_page_token
    return files


def _check_empty(dest: Path) -> None:
    """Refuse a destination that already holds files rather than mixing two checkpoints."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise NotADirectoryError(f"cannot download into {dest}: not a directory")
    if any(dest.iterdir()):
        raise FileExistsError(f"cannot download into {dest}: it already has files; use an "
                              "empty directory")


def download(control_plane: ControlPlaneClient, checkpoint_id: str, dest_dir: str | Path,
             progress: Callable[[int, int], None] | None = None) -> CheckpointDownload:
    """Fetch every file of a checkpoint into ``dest_dir`` (which must be empty).

    ``progress(bytes_so_far, total_bytes)`` is called as blocks arrive.
    """
    source = control_plane.checkpoint_source(checkpoint_id).source
    if isinstance(source, VolumeCheckpointSource):
        raise NotImplementedError(
            f"checkpoint {checkpoint_id} lives in a Baseten volume ({source.volume_ref}); "
            "volume pulls need Baseten's volume client, which loops-runner does not bundle")
    dest = Path(dest_dir).expanduser()
    _check_empty(dest)
    files = all_files(control_plane, checkpoint_id)
    if not files:
        raise ValueError(f"checkpoint {checkpoint_id} has no files to download")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written = 0
    total = sum(entry.size_bytes for entry in files)
    # Signed URLs carry their own authorisation: no client headers at all.
    with make_client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as client:
        for entry in files:
            target = (root / entry.relative_file_name).resolve()
            if not target.is_relative_to(root):
                raise ValueError(f"refusing file {entry.relative_file_name!r}: outside "
                                 f"{root}")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            with client.stream("GET", entry.url) as response:
                if response.is_error:
                    response.read()
                    raise_for_status(response, operation="download_checkpoint")
                with open(partial, "wb") as handle:
                    for block in response.iter_bytes():
                        written += handle.write(block)
                        if progress is not None:
                            progress(written, total)
            partial.replace(target)
    return CheckpointDownload(dest_dir=dest, file_count=len(files), bytes_written=written)
