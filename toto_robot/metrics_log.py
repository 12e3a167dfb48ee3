"""The training logs: one JSON row of scalars per step in `<out>/metrics.jsonl`, the same scalars in
TensorBoard under `<out>/tb`. Used by the pretraining trainer and the tokenizer's training; `read_metrics`
reads the rows back (the demo's loss curves)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Self

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """`log({"step": 12, "loss": 0.5, ...})` appends the row; `start_step` keeps the rows up to that step
    (0: a fresh log), so a resumed run's log reads as one run. None values are skipped in TensorBoard;
    `prefix` names its scalars (`tokenizer/` -> tokenizer/psnr)."""

    def __init__(self, out: str | os.PathLike, *, start_step: int = 0, tensorboard: bool = True,
                 prefix: str = ""):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / METRICS_FILE
        self.prefix = prefix
        rows = self.path.read_text().splitlines() if self.path.is_file() else []
        self.path.write_text("".join(r + "\n" for r in rows if r and json.loads(r)["step"] <= start_step))
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard only when used

            self.writer = SummaryWriter(str(out / "tb"))

    def log(self, row: dict) -> None:
        with open(self.path, "a") as f:  # a line per call: a killed run keeps every finished step
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and v is not None:
                    self.writer.add_scalar(self.prefix + k, v, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(out: str | os.PathLike) -> list[dict]:
    """The rows a `MetricsLog` wrote to `<out>/metrics.jsonl`, in order."""
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"training log: expected {path}, found no such file")
    return [json.loads(r) for r in path.read_text().splitlines() if r]
