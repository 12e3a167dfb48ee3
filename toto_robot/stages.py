"""Resumable pipeline stages: a stage's directory holds `stage.json` with the settings it ran with and
its results; re-running with the same settings reuses it, other settings redo it."""

from __future__ import annotations

import json
from pathlib import Path

from toto_robot.atomic import atomic_write_text

STAGE_FILE = "stage.json"


def finished(stage_dir: Path, settings: dict) -> dict | None:
    """The stored results if this stage already ran with exactly `settings`, else None."""
    f = Path(stage_dir) / STAGE_FILE
    if not f.is_file():
        return None
    record = json.loads(f.read_text())
    return record["results"] if record["settings"] == json.loads(json.dumps(settings)) else None


def mark_finished(stage_dir: Path, settings: dict, results: dict) -> dict:
    """Record completion last, atomically, so an interrupted stage is redone rather than trusted."""
    atomic_write_text(Path(stage_dir) / STAGE_FILE,
                      json.dumps({"settings": settings, "results": results}, indent=2, sort_keys=True) + "\n")
    return results
