"""How much of the scene's state a frozen encoder's features hold: a probe from features to positions.

Before spending rollouts on a read-out, layer, resolution or checkpoint, regress the privileged state that
collection stores (`object_pos`, the gripper's `robot0_eef_pos`, and their offset `object_to_eef`) from the
frozen features of one camera, on held-out episodes, and report R² per layer and per read-out:
- `mean`: ridge regression on the mean-pooled tokens;
- `flat`: ridge regression on the whole flattened token grid (position kept by construction);
- `attentive` / `attentive_pos` / `spatial_softmax`: the policy's own read-outs (`policies/readouts.py`)
  trained with a linear layer on top (AdamW, cosine, a few hundred steps), the same modules BC trains.
Features come from one streaming pass per episode with every layer at once (the probes' shared extraction,
`toto_robot.probes.features.all_layer_features` with the streaming window), the way the policy's feature
cache computes them; layer 0 is the token embedding table alone (the tokenizer's codes, no transformer block).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from policies.readouts import Readout
from toto_robot.encoder import TotoEncoder
from toto_robot.probes.features import all_layer_features
from toto_robot.sampler import split_episodes
from toto_robot.schedules import warmup_cosine
from toto_robot.store import TrajectoryStore

PROBE_READOUTS = ("mean", "flat", "attentive", "attentive_pos", "spatial_softmax")
TARGETS = ("object_pos", "robot0_eef_pos", "object_to_eef")


@dataclass
class ProbeConfig:
    camera: str = "agentview_image"
    window: int = 4  # streaming window, frames (the policy's encoder_window)
    stride: int = 2  # probe every stride-th step of each episode (all steps still stream)
    val_ratio: float = 0.2  # held-out episodes
    readouts: tuple[str, ...] = PROBE_READOUTS
    layers: tuple[int, ...] | None = None  # None: every layer 0..L
    train_steps: int = 300  # trained read-outs
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self):
        self.readouts = tuple(self.readouts)
        bad = [r for r in self.readouts if r not in PROBE_READOUTS]
        if bad:
            raise ValueError(f"ProbeConfig.readouts: expected names from {PROBE_READOUTS}, got {bad}")
        for name in ("window", "stride", "train_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProbeConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if not 0 < self.val_ratio < 1:
            raise ValueError(f"ProbeConfig.val_ratio: expected in (0, 1), got {self.val_ratio}")


def targets_of(ep: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"object_pos": ep["object_pos"], "robot0_eef_pos": ep["robot0_eef_pos"],
            "object_to_eef": ep["object_pos"] - ep["robot0_eef_pos"]}


@torch.no_grad()
def episode_features(encoder: TotoEncoder, store: TrajectoryStore, episodes, cfg: ProbeConfig,
                     progress: bool = True) -> tuple[torch.Tensor, dict[str, np.ndarray], np.ndarray]:
    """Every layer's features of `cfg.camera` at every stride-th step: (L+1, N, P, C) float16 (memory), the
    targets (N, 3) each, and the episode index of each row."""
    feats, targets, owner = [], {k: [] for k in TARGETS}, []
    for i in tqdm(episodes, desc="probe features", disable=not progress):
        ep = store.episode(int(i), [cfg.camera, "object_pos", "robot0_eef_pos"])
        layers = all_layer_features(encoder, ep[cfg.camera][None], window=cfg.window)  # (L+1, 1, T, P, C)
        feats.append(layers[:, 0, :: cfg.stride])  # (L+1, T', P, C)
        owner += [int(i)] * feats[-1].shape[1]
        for k, v in targets_of(ep).items():
            targets[k].append(v[:: cfg.stride])
    return torch.cat(feats, dim=1), {k: np.concatenate(v) for k, v in targets.items()}, np.asarray(owner)


def ridge_predict(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray) -> np.ndarray:
    """Held-out predictions of a ridge regression, its strength chosen by efficient leave-one-out on the
    training rows (scikit-learn's RidgeCV), on standardized features."""
    scaler = StandardScaler().fit(x_train)
    model = RidgeCV(alphas=np.logspace(-2, 4, 7)).fit(scaler.transform(x_train), y_train)
    return model.predict(scaler.transform(x_val))


def trained_predict(kind: str, f_train: torch.Tensor, y_train: np.ndarray, f_val: torch.Tensor,
                    cfg: ProbeConfig) -> np.ndarray:
    """Held-out predictions of a policy read-out + linear layer trained on (N, P, C) features."""
    torch.manual_seed(cfg.seed)
    n, p, c = f_train.shape
    readout_kind, pos = {"attentive": ("attentive", False), "attentive_pos": ("attentive", True),
                         "spatial_softmax": ("spatial_softmax", False)}[kind]
    readout = Readout(readout_kind, c, p, position_embedding=pos)
    head = torch.nn.Sequential(readout, torch.nn.Linear(readout.out_dim, y_train.shape[1]))
    mean, std = y_train.mean(0), y_train.std(0) + 1e-6
    yt = torch.as_tensor((y_train - mean) / std, dtype=torch.float32)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 0, cfg.train_steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.train_steps):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
        loss = torch.nn.functional.mse_loss(head(f_train[idx].float()), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        pred = torch.cat([head(f_val[j: j + 512].float()) for j in range(0, len(f_val), 512)]).numpy()
    return pred * std + mean


def run_probe(encoder: TotoEncoder, store_path: str | Path, cfg: ProbeConfig, progress: bool = True) -> dict:
    """R² table {readout: {target: [R² at each probed layer]}} on held-out episodes, and what it ran on."""
    store = TrajectoryStore.open(store_path)
    missing = [k for k in (cfg.camera, "object_pos", "robot0_eef_pos") if k not in store.keys]
    if missing:
        raise ValueError(f"probe: expected keys {[cfg.camera, 'object_pos', 'robot0_eef_pos']} in {store_path}, "
                         f"missing {missing} (object state is stored by collection since this version: re-collect)")
    n_layers = encoder.n_kept
    layers = tuple(range(n_layers + 1)) if cfg.layers is None else tuple(cfg.layers)
    bad = [layer for layer in layers if not 0 <= layer <= n_layers]
    if bad:
        raise ValueError(f"probe layers: expected 0..{n_layers} (0 = token embedding), got {bad}")
    train_ids, val_ids = split_episodes(store.n_episodes, cfg.val_ratio, cfg.seed)
    f_tr, y_tr, _ = episode_features(encoder, store, train_ids, cfg, progress)
    f_va, y_va, _ = episode_features(encoder, store, val_ids, cfg, progress)
    # one probe per read-out and layer regresses every target at once; R² is reported per target
    y_train = np.concatenate([y_tr[t] for t in TARGETS], 1)  # (N, 3 * targets)
    table: dict[str, dict[str, list[float]]] = {r: {t: [] for t in TARGETS} for r in cfg.readouts}
    jobs = [(r, layer) for r in cfg.readouts for layer in layers]
    for r, layer in tqdm(jobs, desc="probe read-outs", disable=not progress):
        a, b = f_tr[layer], f_va[layer]  # (N, P, C)
        if r == "mean":
            pred = ridge_predict(a.float().mean(1).numpy(), y_train, b.float().mean(1).numpy())
        elif r == "flat":
            pred = ridge_predict(a.float().flatten(1).numpy(), y_train, b.float().flatten(1).numpy())
        else:
            pred = trained_predict(r, a, y_train, b, cfg)
        for j, t in enumerate(TARGETS):
            table[r][t].append(float(r2_score(y_va[t], pred[:, 3 * j: 3 * j + 3])))
    return {"r2": table, "layers": list(layers), "n_train_rows": len(f_tr[0]), "n_val_rows": len(f_va[0]),
            "train_episodes": train_ids.tolist(), "val_episodes": val_ids.tolist(),
            "tokens_per_frame": encoder.cfg.tokens_per_frame, "dim": encoder.dim}
