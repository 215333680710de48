"""The supervisor's record of its worker processes (``<data_dir>/supervisor/workers.json``,
written by pool/supervisor.py at every start and exit of a worker) and its /metrics families,
served by the lead worker's API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pool.api.metrics import Metric, counter, gauge, sample

STATE_DIR = "supervisor"
STATUS_FILE = "workers.json"


def status_path(data_dir: Path) -> Path:
    return data_dir / STATE_DIR / STATUS_FILE


def read_status(data_dir: Path) -> list[dict[str, Any]]:
    """The workers as the supervisor last wrote them ([] without a supervisor)."""
    try:
        data = json.loads(status_path(data_dir).read_text())
    except (OSError, ValueError):
        return []
    workers = data.get("workers") if isinstance(data, dict) else None
    return [w for w in workers if isinstance(w, dict)] if isinstance(workers, list) else []


def process_metrics(app: Any, prefix: str) -> list[Metric]:
    """Per worker process: up, and restarts after it died (only when there are several)."""
    if getattr(app, "role", None) is None:
        return []
    workers = read_status(Path(app.data_dir))
    if not workers:
        return []

    def label(w: dict[str, Any]) -> dict[str, str]:
        return {"worker": str(w.get("journal_id", w.get("index", "")))}

    return [
        gauge(
            prefix + "worker_process_up",
            "1 while the Stratum worker process runs (server.processes > 1).",
            [sample(int(bool(w.get("running"))), label(w)) for w in workers],
        ),
        counter(
            prefix + "worker_process_restarts_total",
            "Stratum worker processes started again after they exited or were killed.",
            [sample(int(w.get("restarts") or 0), label(w)) for w in workers],
        ),
    ]
