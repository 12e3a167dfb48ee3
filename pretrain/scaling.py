"""Scaling laws: a sweep of model sizes at fixed token budgets, and the power law L(C) = a * C^b fitted
to the compute-efficient frontier of the final held-out losses. Compute is counted in multiply-
accumulates (training FLOPs / 2), the unit of the paper's L(C) = 7.32 * C^-0.0378."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pretrain.trainer import TrainConfig, pretrain

PAPER_EXPONENT = -0.0378
PAPER_COEFFICIENT = 7.32
GPT3_EXPONENT = -0.048


def frontier(compute: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the points no cheaper point beats (lower loss at lower compute), by increasing compute."""
    keep, best = [], math.inf
    for i in np.argsort(compute, kind="stable"):
        if loss[i] < best:
            keep.append(int(i))
            best = loss[i]
    return np.array(keep, dtype=int)


def fit_power_law(compute, loss) -> tuple[float, float]:
    """Least squares in log-log space: log L = log a + b log C. Returns (a, b)."""
    compute, loss = np.asarray(compute, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    if len(compute) < 2 or np.any(compute <= 0) or np.any(loss <= 0):
        raise ValueError(f"power-law fit: expected at least 2 points with positive compute and loss, "
                         f"got {len(compute)} points")
    b, log_a = np.polyfit(np.log(compute), np.log(loss), 1)
    return float(np.exp(log_a)), float(b)


def plot_fit(path: Path, runs: list[dict], a: float, b: float, used: np.ndarray) -> Path:
    c = np.array([r["compute_macs"] for r in runs])
    loss = np.array([r["held_out_loss"] for r in runs])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for d in sorted({r["d_model"] for r in runs}):
        m = np.array([r["d_model"] == d for r in runs])
        ax.scatter(c[m], loss[m], s=22, label=f"d_model {d}")
    ax.scatter(c[used], loss[used], s=70, facecolors="none", edgecolors="k", label="frontier (fitted)")
    grid = np.geomspace(c.min() / 1.5, c.max() * 1.5, 50)
    ax.plot(grid, a * grid**b, "k-", lw=1, label=f"fit: {a:.3g} C^{b:.4f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (multiply-accumulates)")
    ax.set_ylabel("held-out loss")
    ax.set_title(f"exponent {b:.4f} (paper {PAPER_EXPONENT}, GPT-3 {GPT3_EXPONENT})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_sweep(shards: str | Path, sizes: list[dict], token_budgets: list[int], base: TrainConfig,
              out_dir: str | Path) -> dict:
    """Train every size at every token budget (finished runs are reused), fit, write fit.json and scaling.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not sizes or not token_budgets:
        raise ValueError(f"scaling sweep: expected sizes and token_budgets, got {len(sizes)} and {len(token_budgets)}")
    runs = []
    tokens_per_step = None
    for size in sizes:
        for budget in token_budgets:
            name = "L{n_layers}-d{d_model}".format(**size) + f"-tok{budget}"
            if tokens_per_step is None:  # sequence length is the same for every run
                from pretrain.shards import TokenShards

                s = TokenShards(shards, held_out=base.held_out)
                tokens_per_step = base.batch_size * base.grad_accum * s.clip_frames * s.grid**2 + base.batch_size * base.grad_accum
            steps = max(1, math.ceil(budget / tokens_per_step))
            cfg = replace(base, steps=steps, warmup_steps=min(base.warmup_steps, max(1, steps // 10)))
            print(f"[scaling] {name}: {steps} steps")
            res = pretrain(shards, {"preset": "tiny", **size}, cfg, out / name)
            runs.append({"name": name, **size, "token_budget": budget, "steps": steps, "params": res["params"],
                         "tokens": res["tokens_seen"], "compute_flops": res["compute_flops"],
                         "compute_macs": res["compute_flops"] / 2, "held_out_loss": res["held_out_loss"],
                         "final_train_loss": res["final_loss"]})
    c = np.array([r["compute_macs"] for r in runs])
    loss = np.array([r["held_out_loss"] for r in runs])
    used = frontier(c, loss)
    if len(used) < 2:  # a degenerate frontier (the cheapest run is best): fit every point instead
        used = np.arange(len(runs))
    a, b = fit_power_law(c[used], loss[used])
    fit = {"law": "L(C) = a * C^b, C in multiply-accumulates", "a": a, "b": b, "fitted_runs": [runs[i]["name"] for i in used],
           "paper": {"a": PAPER_COEFFICIENT, "b": PAPER_EXPONENT}, "gpt3_b": GPT3_EXPONENT, "runs": runs}
    (out / "fit.json").write_text(json.dumps(fit, indent=2) + "\n")
    plot_fit(out / "scaling.png", runs, a, b, used)
    return fit
