"""Figures and tables people look at: reconstructions, loss curves, markdown tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def save_reconstructions(path: Path, originals: np.ndarray, recons: np.ndarray, title: str = "") -> Path:
    """originals/recons: (N, H, W, 3) uint8; top row originals, bottom row reconstructions."""
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        for row, img in enumerate((originals[i], recons[i])):
            axes[row, i].imshow(img)
            axes[row, i].axis("off")
    axes[0, 0].set_title("input", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_curves(path: Path, curves: dict[str, tuple[list[float], str]]) -> Path:
    """curves: panel title -> (values per step, y label); one panel each."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.2), squeeze=False)
    for ax, (title, (values, ylabel)) in zip(axes[0], curves.items()):
        ax.plot(np.arange(len(values)), values, lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_lines(path: Path, panels: dict[str, dict[str, tuple[list, list]]], xlabel: str, ylabel: str) -> Path:
    """panels: panel title -> {line label: (xs, ys)}; one panel each, a legend per panel."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items()):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o", lw=1, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_intervals(path: Path, rows: list[tuple[str, float, tuple[float, float], list[float]]], xlabel: str,
                   title: str = "", highlight: set[str] | None = None) -> Path:
    """rows: (label, bar value, (low, high) interval, points); one horizontal bar each, its interval as a line with
    caps and its points as dots. Labels in `highlight` are drawn in blue, the rest in gray."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for i, (label, value, (lo, hi), points) in enumerate(rows):
        ax.barh(i, value, color="tab:blue" if label in (highlight or set()) else "tab:gray", alpha=0.6)
        ax.errorbar([lo, hi], [i, i], color="black", marker="|", markersize=8)
        ax.plot(points, [i] * len(points), "o", color="black", markersize=3)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=8)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
