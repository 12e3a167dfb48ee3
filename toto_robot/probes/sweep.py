"""Layer sweeps: every layer of every source through every probe, then the scores by relative depth.

A source's features come once per task from the feature cache (every requested layer in one pass); each
layer is then probed on its own. Relative depth is layer / L (0 = the token embedding, 1 = the last block),
so encoders of different depths share an axis; a source without depth (raw pixels) is a horizontal line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from toto_robot.probes.data import ClassificationData
from toto_robot.probes.features import FeatureCache
from toto_robot.probes.heads import SEEDED, HeadConfigs, head_accuracy
from toto_robot.probes.tracking import PropagationConfig, propagate, score_video, summarise
from toto_robot.report import plt


def relative_depth(layers, n_layers: int) -> list[float]:
    return [layer / n_layers if n_layers else 0.0 for layer in layers]


def _source_entry(source, layers) -> dict:
    return {"layers": list(layers), "relative_depth": relative_depth(layers, source.n_layers),
            "n_layers": source.n_layers, "note": source.note}


def classification_sweep(data: ClassificationData, sources, layers_of, heads, seeds, cfgs: HeadConfigs,
                         cache: FeatureCache, batch_size: int = 16, progress: bool = True, desc: str = "probes") -> dict:
    """{source: {layers, relative_depth, heads: {head: {mean, std, per_seed, seeds}}}}: held-out accuracy of
    each head at each layer. `layers_of(source)` gives the layers to probe; seeded heads run once per seed."""
    y, n_classes = data.labels, len(data.classes)
    train, test = torch.from_numpy(data.train), torch.from_numpy(data.test)
    out = {}
    for source in sources:
        layers = layers_of(source)
        feats = cache.features(source, data.clips, layers, None, batch_size, progress)  # (L', N, T, P, C)
        feats = feats.flatten(2, 3)  # (L', N, T*P, C): every token of every frame
        entry = _source_entry(source, layers) | {"heads": {}}
        jobs = [(h, i) for h in heads for i in range(len(layers))]
        scores: dict[str, list[list[float]]] = {h: [] for h in heads}
        for head, i in tqdm(jobs, desc=f"{desc}: {source.name}", disable=not progress, leave=False):
            head_seeds = list(seeds) if head in SEEDED else list(seeds[:1])
            scores[head].append([head_accuracy(head, feats[i][train], y[data.train], feats[i][test], y[data.test],
                                               n_classes, cfgs, seed) for seed in head_seeds])
        for head in heads:
            per_seed = np.asarray(scores[head])  # (layers, seeds)
            entry["heads"][head] = {"mean": per_seed.mean(1).tolist(), "std": per_seed.std(1).tolist(),
                                    "per_seed": per_seed.tolist(),
                                    "seeds": list(seeds) if head in SEEDED else "deterministic: no seed"}
        out[source.name] = entry
    return out


def tracking_sweep(videos, sources, layers_of, prop: PropagationConfig, cache: FeatureCache, image_size: int,
                   window: int = 1, batch_size: int = 16, progress: bool = True) -> dict:
    """{source: {layers, relative_depth, J, F, J&F (one per layer), per_video}}: label propagation with each
    layer's features. window 1: each frame encoded alone; more: the streaming encoder with that window."""
    per = {s.name: {i: {} for i in range(len(layers_of(s)))} for s in sources}
    for video in tqdm(videos, desc="tracking videos", disable=not progress):
        v = video.load(image_size)
        t = len(v.frames)
        for source in sources:
            layers = layers_of(source)
            if window == 1:
                feats = cache.features(source, v.frames[:, None], layers, None, batch_size)[:, :, 0]  # (L', T, P, C)
            else:
                feats = cache.features(source, v.frames[None], layers, window, batch_size)[:, 0]  # (L', T, P, C)
            g = source.grid
            feats = feats.reshape(len(layers), t, g, g, -1)  # (L', T, g, g, C)
            for i in range(len(layers)):
                per[source.name][i][v.name] = score_video(propagate(feats[i], v.masks[0], prop), v.masks)
    out = {}
    for source in sources:
        layers = layers_of(source)
        sums = [summarise(per[source.name][i]) for i in range(len(layers))]
        out[source.name] = _source_entry(source, layers) | {
            "J": [s["J"] for s in sums], "F": [s["F"] for s in sums], "J&F": [s["J&F"] for s in sums],
            "n_objects": sums[0]["n_objects"],
            "per_video": {str(layer): {name: {str(o): {"J": j, "F": f} for o, (j, f) in objects.items()}
                                       for name, objects in per[source.name][i].items()}
                          for i, layer in enumerate(layers)}}
    return out


# ---------------------------------------------------------------- figures and tables
def _panel(ax, results: dict, values, title: str, ylabel: str, chance: float | None = None):
    for name, r in results.items():
        mean, std = values(r)
        if r["n_layers"] == 0:  # no depth: a line across
            ax.axhline(mean[0], ls="--", lw=1, color="grey", label=name)
        else:
            ax.errorbar(r["relative_depth"], mean, yerr=std, marker="o", lw=1, capsize=2, label=name)
    if chance is not None:
        ax.axhline(chance, ls=":", lw=1, color="black", label="chance")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("relative depth (layer / L)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_classification(path: Path, results: dict, heads, title: str, chance: float) -> Path:
    """One panel per head, side by side: held-out accuracy against relative depth, a line per source."""
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads), 3.4), squeeze=False, sharey=True)
    for ax, head in zip(axes[0], heads):
        _panel(ax, results, lambda r, h=head: (r["heads"][h]["mean"], r["heads"][h]["std"]), head,
               "held-out accuracy", chance)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_tracking(path: Path, results: dict, title: str) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(12.6, 3.4), squeeze=False, sharey=True)
    for ax, metric in zip(axes[0], ("J&F", "J", "F")):
        _panel(ax, results, lambda r, m=metric: (r[m], [0.0] * len(r[m])), metric, "score")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _by_layer(r: dict, values: list[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in values) if r["n_layers"] else f"{values[0]:.3f} (no depth)"


def classification_rows(results: dict) -> list[dict]:
    rows = []
    for name, r in results.items():
        for head, s in r["heads"].items():
            best = int(np.argmax(s["mean"]))
            rows.append({"source": name, "probe": head, "best": f"{s['mean'][best]:.3f} ± {s['std'][best]:.3f}",
                         "best layer (depth)": f"{r['layers'][best]} ({r['relative_depth'][best]:.2f})",
                         "by layer": _by_layer(r, s["mean"])})
    return rows


def tracking_rows(results: dict) -> list[dict]:
    rows = []
    for name, r in results.items():
        best = int(np.argmax(r["J&F"]))
        rows.append({"source": name, "J&F": f"{r['J&F'][best]:.3f}", "J": f"{r['J'][best]:.3f}",
                     "F": f"{r['F'][best]:.3f}", "best layer (depth)": f"{r['layers'][best]} "
                     f"({r['relative_depth'][best]:.2f})", "J&F by layer": _by_layer(r, r["J&F"])})
    return rows
