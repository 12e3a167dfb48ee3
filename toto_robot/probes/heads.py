"""Probe heads: what reads a frozen layer's tokens (N, P, C) and predicts a class.

- `attentive`: one learned query cross-attends over the tokens, one cross-attention block (attention, then an
  MLP, each with a residual) and a linear classifier, as in V-JEPA's evaluation (the probe the Toto paper
  reports); AdamW, lr 1e-3, weight decay, warmup then cosine, 20 epochs. Written in torch: scikit-learn has
  no attention. Its seed sets the initialisation and the batch order.
- `linear`: multinomial logistic regression on the mean-pooled tokens, standardised, its strength chosen by
  3-fold cross-validation on the training rows (scikit-learn's LogisticRegressionCV). Convex: no seed.
- `knn`: DINO's k-NN protocol on the mean-pooled tokens: cosine similarity, the k = 20 nearest training rows
  vote with weights exp(similarity / 0.07) (scikit-learn's KNeighborsClassifier). No seed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from toto_robot.schedules import warmup_cosine

HEADS = ("attentive", "linear", "knn")
SEEDED = ("attentive",)  # heads whose result depends on the seed


@dataclass
class AttentiveConfig:
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    warmup_epochs: int = 1
    num_heads: int = 4
    mlp_ratio: int = 4
    # a learned embedding per token position (frame x patch) added before attention: the tiny encoders' features
    # carry little position of their own (RoPE rotates queries and keys only), so without it the probe sees the
    # tokens as an unordered set and cannot read, say, the direction something moves
    position_embedding: bool = False

    def __post_init__(self):
        for name in ("epochs", "batch_size", "num_heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"attentive.{name}: expected >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError(f"attentive: expected lr > 0, weight_decay >= 0, warmup_epochs >= 0, got lr={self.lr}, "
                             f"weight_decay={self.weight_decay}, warmup_epochs={self.warmup_epochs}")


@dataclass
class LinearConfig:
    Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)  # inverse regularisation strengths tried
    cv: int = 3
    max_iter: int = 1000

    def __post_init__(self):
        self.Cs = tuple(float(c) for c in self.Cs)
        if not self.Cs or min(self.Cs) <= 0 or self.cv < 2:
            raise ValueError(f"linear: expected positive Cs and cv >= 2, got Cs={self.Cs}, cv={self.cv}")


@dataclass
class KnnConfig:
    k: int = 20
    temperature: float = 0.07

    def __post_init__(self):
        if self.k < 1 or self.temperature <= 0:
            raise ValueError(f"knn: expected k >= 1 and temperature > 0, got k={self.k}, "
                             f"temperature={self.temperature}")


class AttentiveProbe(nn.Module):
    """(B, N, C) tokens -> (B, n_classes) logits: a learned query, one cross-attention block (multi-head
    attention, then an MLP, each with a residual), a linear layer.

    Its input is standardised per channel with the training set's statistics (`attentive_predict` does it
    once), not layer-normalised per token: a token whose channels are all equal (a flat patch of raw pixels)
    would become zero.
    With one query, attention is computed in its factored form, exactly equal to projecting every token to
    keys and values: the logits are x . (W_k,h^T q_h) and the output W_v,h (sum_n a_hn x_n) + b_v,h, so each
    token costs O(heads * C) instead of O(C^2) (the key bias shifts every logit of a head equally and drops out
    of the softmax, so keys have none)."""

    def __init__(self, dim: int, n_classes: int, num_heads: int = 4, mlp_ratio: int = 4,
                 n_tokens: int | None = None):
        super().__init__()
        # n_tokens: a learned position embedding (1, N, C) added to the tokens (AttentiveConfig.position_embedding)
        # unit scale, as the standardised tokens it is added to: distinct positions are told apart from the start
        self.pos = nn.Parameter(torch.randn(1, n_tokens, dim)) if n_tokens else None
        if dim % num_heads:
            num_heads = 1
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        # unit scale, not V-JEPA's 0.02: a tiny query makes the attention start uniform, i.e. a mean pool, and where
        # mean pooling holds nothing (moving_shapes) 20 epochs of a few hundred clips may never leave it
        self.query = nn.Parameter(torch.randn(1, dim))
        self.wq = nn.Linear(dim, dim)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim)
        self.wo = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.out_norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        h, d = self.num_heads, self.head_dim
        if self.pos is not None:
            x = x + self.pos  # (B, N, C)
        q = self.wq(self.query).view(h, d)  # (H, D)
        kq = torch.einsum("hd,hdc->hc", q, self.wk.weight.view(h, d, c))  # (H, C): W_k,h^T q_h
        attn = ((x @ kq.T) / d ** 0.5).softmax(dim=1)  # (B, N, H): over the tokens
        pooled = attn.transpose(1, 2) @ x  # (B, H, C)
        v = torch.einsum("bhc,hdc->bhd", pooled, self.wv.weight.view(h, d, c)) + self.wv.bias.view(h, d)  # (B, H, D)
        y = self.query + self.wo(v.reshape(b, c))  # (B, C)
        y = y + self.mlp(self.mlp_norm(y))
        return self.linear(self.out_norm(y))  # (B, n_classes)


def attentive_predict(f_train: torch.Tensor, y_train: np.ndarray, f_test: torch.Tensor, n_classes: int,
                      cfg: AttentiveConfig, seed: int) -> np.ndarray:
    """Train an AttentiveProbe on (N, P, C) tokens, return its class predictions for f_test."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    probe = AttentiveProbe(f_train.shape[-1], n_classes, cfg.num_heads, cfg.mlp_ratio,
                           n_tokens=f_train.shape[1] if cfg.position_embedding else None)
    flat = f_train.float().reshape(-1, f_train.shape[-1])
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)  # per channel, over every training token
    x_train, x_test = (f_train.float() - mean) / std, (f_test.float() - mean) / std
    y = torch.as_tensor(y_train, dtype=torch.long)
    n = len(f_train)
    per_epoch = max(1, -(-n // cfg.batch_size))
    total = cfg.epochs * per_epoch
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.warmup_epochs * per_epoch, total))
    probe.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for j in range(0, n, cfg.batch_size):
            idx = order[j: j + cfg.batch_size]
            loss = nn.functional.cross_entropy(probe(x_train[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    probe.eval()
    with torch.no_grad():
        logits = torch.cat([probe(x_test[j: j + 256]) for j in range(0, len(x_test), 256)])
    return logits.argmax(1).numpy()


def linear_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, cfg: LinearConfig) -> np.ndarray:
    cv = min(cfg.cv, int(np.bincount(y_train).min()))  # stratified folds need that many rows per class
    if cv < 2:
        raise ValueError("linear probe: expected at least 2 training rows of every class, got a class with "
                         f"{int(np.bincount(y_train).min())}")
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=list(cfg.Cs), cv=cv, max_iter=cfg.max_iter,
                                                                 l1_ratios=(0.0,), scoring="accuracy",
                                                                 use_legacy_attributes=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the weakest regularisation may not converge
        model.fit(x_train, y_train)
    return model.predict(x_test)


def knn_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, cfg: KnnConfig) -> np.ndarray:
    temperature = cfg.temperature
    # cosine distance d = 1 - similarity, so exp(-d / T) is exp(similarity / T) up to a constant factor
    knn = KNeighborsClassifier(n_neighbors=min(cfg.k, len(x_train)), metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp(-d / temperature))
    return knn.fit(x_train, y_train).predict(x_test)


@dataclass
class HeadConfigs:
    attentive: AttentiveConfig
    linear: LinearConfig
    knn: KnnConfig


def head_accuracy(head: str, f_train: torch.Tensor, y_train: np.ndarray, f_test: torch.Tensor, y_test: np.ndarray,
                  n_classes: int, cfgs: HeadConfigs, seed: int = 0) -> float:
    """Held-out accuracy of `head` trained on (N, P, C) token features."""
    if head == "attentive":
        pred = attentive_predict(f_train, y_train, f_test, n_classes, cfgs.attentive, seed)
    else:
        x_train, x_test = f_train.float().mean(1).numpy(), f_test.float().mean(1).numpy()  # mean-pooled (N, C)
        if head == "linear":
            pred = linear_predict(x_train, y_train, x_test, cfgs.linear)
        elif head == "knn":
            pred = knn_predict(x_train, y_train, x_test, cfgs.knn)
        else:
            raise ValueError(f"head: expected one of {HEADS}, got {head!r}")
    return float(np.mean(pred == y_test))
