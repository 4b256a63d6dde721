"""Weight sync between a trainer and its paired sampler (docs/weight-sync.md).

Both sides need these files, so they live here:

* the trainer writes ``runs/<run>/sampler_weights/<name>/`` atomically, then
  replaces ``runs/<run>/LIVE.json`` = ``{"version", "name"}`` atomically
  (version 0 / name null = serve the base model);
* a paired sampler registers its URL in ``runs/<run>/paired_sampler.json``; the
  trainer then notifies it (``POST /internal/live``) and completes the publish
  only after the sampler acknowledged the swap. Without a registered sampler,
  or if the notify fails, the sampler still picks ``LIVE.json`` up by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loops_runner.storage.atomic import atomic_write_json, read_json
from loops_runner.storage.layout import checkpoint_dir, run_dir

LIVE_FILE = "LIVE.json"
PAIRED_SAMPLER_FILE = "paired_sampler.json"

@dataclass(frozen=True)
class LivePointer:
    version: int
    name: str | None  # None: serve the base model

    def adapter_dir(self, home: Path, run_id: str) -> Path | None:
        if self.name is None:
            return None
        return checkpoint_dir(home, run_id, "sampler_weights", self.name)


def write_live(home: Path, run_id: str, version: int, name: str | None) -> None:
    atomic_write_json(run_dir(home, run_id) / LIVE_FILE, {"version": version, "name": name})


def read_live(home: Path, run_id: str) -> LivePointer:
    payload = read_json(run_dir(home, run_id) / LIVE_FILE)
    if not isinstance(payload, dict):
        return LivePointer(0, None)
    return LivePointer(int(payload.get("version", 0)), payload.get("name"))


def register_paired_sampler(home: Path, run_id: str, url: str) -> None:
    atomic_write_json(run_dir(home, run_id) / PAIRED_SAMPLER_FILE, {"url": url})


def paired_sampler_url(home: Path, run_id: str) -> str | None:
    payload = read_json(run_dir(home, run_id) / PAIRED_SAMPLER_FILE)
    return payload.get("url") if isinstance(payload, dict) else None


