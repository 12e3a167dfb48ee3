"""Learning-rate schedules as multipliers of the peak rate, for `torch.optim.lr_scheduler.LambdaLR`."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Linear warmup to 1 over `warmup` steps (step 0 -> 1/warmup), then cosine down to `min_ratio` at
    `total`, and `min_ratio` after. `warmup=0` is a plain cosine decay from 1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
