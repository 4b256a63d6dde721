"""Tell a run's paired sampler which adapter is live (weight-sync contract).

The trainer replaces ``runs/<run>/LIVE.json`` atomically, then, when a paired
sampler registered its URL, posts ``{"run_id", "version", "name"}`` to its
``/internal/live`` and waits for the 200 the sampler sends after the swap
(spec Q5: the publish completes once the sampler serves the new weights).
A failed notify is only a warning: the sampler also watches ``LIVE.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from loops_runner.sdk.http import tls_context
from loops_runner.storage import weight_sync

logger = logging.getLogger(__name__)

NOTIFY_TIMEOUT_S = 60.0
LIVE_ROUTE = "/internal/live"


def set_live(home: Path, run_id: str, version: int, name: str | None,
             timeout: float = NOTIFY_TIMEOUT_S) -> bool:
    """Point the run's live adapter at ``name`` (None: base model); True if a sampler acked."""
    weight_sync.write_live(home, run_id, version, name)
    url = weight_sync.paired_sampler_url(home, run_id)
    if not url:
        return False
    payload = {"run_id": run_id, "version": version, "name": name}
    try:
        # The shared TLS context: building one per call was most of a publish.
        response = httpx.post(url.rstrip("/") + LIVE_ROUTE, json=payload, timeout=timeout,
                              verify=tls_context())
    except httpx.HTTPError as exc:
        logger.warning("paired sampler %s did not take live=%s for run %s: %s "
                       "(it will pick LIVE.json up itself)", url, version, run_id, exc)
        return False
    if response.status_code != 200:
        logger.warning("paired sampler %s answered %s to live=%s for run %s: %s",
                       url, response.status_code, version, run_id, response.text[:200])
        return False
    return True
