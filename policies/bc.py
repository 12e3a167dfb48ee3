"""Behavior cloning on top of the frozen Toto encoder (and the baselines that share its trainer).

Observation encoding: each camera's frame goes through the frozen Toto encoder (shared weights, one
streaming cache per camera, features from the chosen layer), then a trainable attentive pooler per
camera; proprioception goes through a small MLP. Heads: an MLP (the VC-1 / MVP recipe) or a
transformer decoder that predicts a chunk of actions (ACT), optionally with temporal ensembling.
Backbones: `toto` (pretrained), `toto_random` (same architecture, transformer randomly initialized,
same tokenizer) and `cnn` (a small CNN trained end to end from pixels).

A policy checkpoint is a directory: config.json (PolicyConfig, which also names the encoder checkpoint
it was trained with) + policy.safetensors (every weight, encoder included, and the normalization
statistics), so a robot needs nothing else.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies.features import feature_key
from toto_robot.checkpoint import load_state_dict, read_config, save_checkpoint
from toto_robot.encoder import AttentivePooler, StreamingEncoder, TotoEncoder, load_toto
from toto_robot.frames import as_frames
from toto_robot.model import ModelConfig, Transformer
from toto_robot.tokenizer import Tokenizer, TokenizerConfig

BACKBONES = ("toto", "toto_random", "cnn")
HEADS = ("mlp", "act")
CHECKPOINT_KIND = "toto-bc-policy"


@dataclass
class PolicyConfig:
    backbone: str = "toto"
    head: str = "mlp"
    cameras: tuple[str, ...] = ("agentview_image", "robot0_eye_in_hand_image")
    proprio_keys: tuple[str, ...] = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
    proprio_dims: tuple[int, ...] = (3, 4, 2)
    action_dim: int = 7
    chunk: int = 8  # actions predicted per step
    n_action_steps: int = 4  # actions executed from a chunk before the next prediction (no ensembling)
    temporal_ensemble: float | None = None  # ACT's m: weights exp(-m * age); None executes chunks open loop
    hidden: int = 256
    dropout: float = 0.1
    act_layers: int = 2
    act_heads: int = 4
    cnn_channels: int = 32
    image_size: int = 64
    # The Toto encoder (backbones toto / toto_random): where it came from and how it is read.
    encoder_checkpoint: str | None = None
    encoder_layer: int | None = None
    encoder_window: int = 1  # frames of temporal context in the streaming encoder
    tokenizer_config: dict | None = None  # copied from the encoder checkpoint so the policy is self-contained
    model_config: dict | None = None
    seed: int = 0

    def __post_init__(self):
        self.cameras, self.proprio_keys = tuple(self.cameras), tuple(self.proprio_keys)
        self.proprio_dims = tuple(self.proprio_dims)
        if self.backbone not in BACKBONES:
            raise ValueError(f"PolicyConfig.backbone: expected one of {BACKBONES}, got {self.backbone!r}")
        if self.head not in HEADS:
            raise ValueError(f"PolicyConfig.head: expected one of {HEADS}, got {self.head!r}")
        if not self.cameras:
            raise ValueError("PolicyConfig.cameras: expected at least one camera key, got ()")
        if len(self.proprio_keys) != len(self.proprio_dims):
            raise ValueError(f"PolicyConfig.proprio_dims: expected one size per proprio key "
                             f"{self.proprio_keys}, got {self.proprio_dims}")
        if not 1 <= self.n_action_steps <= self.chunk:
            raise ValueError(f"PolicyConfig.n_action_steps: expected 1..chunk={self.chunk}, got {self.n_action_steps}")
        if self.backbone != "cnn" and (self.tokenizer_config is None or self.model_config is None):
            raise ValueError(f"PolicyConfig: backbone {self.backbone!r} needs the encoder's tokenizer_config and "
                             "model_config (use PolicyConfig.from_encoder)")

    @classmethod
    def from_encoder(cls, encoder_checkpoint: str | Path, **kw) -> PolicyConfig:
        enc = read_config(encoder_checkpoint)
        image_size = enc["tokenizer"]["image_size"]
        return cls(encoder_checkpoint=str(encoder_checkpoint), tokenizer_config=enc["tokenizer"],
                   model_config=enc["model"], image_size=image_size, **kw)


class SmallCNN(nn.Module):
    """The end-to-end baseline: 4 stride-2 convs, (B, 3, H, W) in [-1, 1] -> tokens (B, H/16 * W/16, C)."""

    def __init__(self, channels: int, out_dim: int):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * c), nn.SiLU(),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * c), nn.SiLU(),
            nn.Conv2d(2 * c, out_dim, 3, stride=2, padding=1),
        )

    def forward(self, x):
        return self.net(x).flatten(2).transpose(1, 2)  # (B, N, C)


class ACTHead(nn.Module):
    """Learned action queries cross-attend over observation tokens: (B, N, D) -> (B, chunk, D)."""

    def __init__(self, dim: int, chunk: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, chunk, dim) * 0.02)
        layer = nn.TransformerDecoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(dim)

    def forward(self, memory):
        return self.norm(self.decoder(self.queries.expand(memory.shape[0], -1, -1), memory))


class BCPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig, encoder: TotoEncoder | None = None):
        super().__init__()
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        if cfg.backbone == "cnn":
            self.encoder = None
            self.cnn = SmallCNN(cfg.cnn_channels, cfg.hidden)
            feat_dim = cfg.hidden
        else:
            self.encoder = encoder if encoder is not None else _build_encoder(cfg)
            feat_dim = self.encoder.dim
        d = cfg.hidden
        self.feat_proj = nn.ModuleDict({_name(c): nn.Linear(feat_dim, d) for c in cfg.cameras})
        self.cam_embed = nn.ParameterDict({_name(c): nn.Parameter(torch.zeros(1, 1, d)) for c in cfg.cameras})
        proprio_dim = sum(cfg.proprio_dims)
        self.proprio = nn.Sequential(nn.Linear(proprio_dim, d), nn.SiLU(), nn.Linear(d, d))
        if cfg.head == "mlp":
            # pool at the encoder's width, then project: attention over every token stays cheap
            self.poolers = nn.ModuleDict({_name(c): AttentivePooler(feat_dim) for c in cfg.cameras})
            self.head = nn.Sequential(nn.Linear(d * (len(cfg.cameras) + 1), 2 * d), nn.SiLU(), nn.Dropout(cfg.dropout),
                                      nn.Linear(2 * d, 2 * d), nn.SiLU(), nn.Linear(2 * d, cfg.chunk * cfg.action_dim))
        else:
            self.poolers = nn.ModuleDict()
            self.act = ACTHead(d, cfg.chunk, cfg.act_layers, cfg.act_heads, cfg.dropout)
            self.head = nn.Linear(d, cfg.action_dim)
        # normalization (filled from the store's statistics by `set_stats`, saved with the weights)
        self.register_buffer("action_min", -torch.ones(cfg.action_dim))
        self.register_buffer("action_max", torch.ones(cfg.action_dim))
        self.register_buffer("proprio_mean", torch.zeros(proprio_dim))
        self.register_buffer("proprio_std", torch.ones(proprio_dim))
        self._stream: StreamingEncoder | None = None
        self._queue: deque = deque()
        self._ensemble: list[tuple[int, torch.Tensor]] = []
        self._t = 0

    # ---------------------------------------------------------------- normalization
    def set_stats(self, stats: dict[str, dict[str, np.ndarray]]) -> None:
        """Action min/max -> [-1, 1]; proprio mean/std, from a store's compute_stats()."""
        self.action_min.copy_(torch.as_tensor(stats["action"]["min"], dtype=torch.float32))
        self.action_max.copy_(torch.as_tensor(stats["action"]["max"], dtype=torch.float32))
        mean = np.concatenate([np.asarray(stats[k]["mean"]).reshape(-1) for k in self.cfg.proprio_keys])
        std = np.concatenate([np.asarray(stats[k]["std"]).reshape(-1) for k in self.cfg.proprio_keys])
        self.proprio_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.proprio_std.copy_(torch.as_tensor(np.maximum(std, 1e-3), dtype=torch.float32))

    def normalize_action(self, a):
        span = (self.action_max - self.action_min).clamp_min(1e-6)
        return 2 * (a - self.action_min) / span - 1

    def unnormalize_action(self, a):
        return (a.clamp(-1, 1) + 1) / 2 * (self.action_max - self.action_min) + self.action_min

    # ---------------------------------------------------------------- encoding
    def encode_images(self, camera: str, images: torch.Tensor) -> torch.Tensor:
        """Frames (B, H, W, 3) uint8 -> token features (B, N, C); frozen Toto features come per frame
        without temporal context here (training with window > 1 uses cached streaming features)."""
        if self.encoder is None:
            return self.cnn(as_frames(images[:, None], size_multiple=16)[:, 0].to(self._device))
        return self.encoder(images[:, None]).features[:, 0]

    def _obs_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per camera (B, N, C) features, and the proprio embedding (B, d), from the newest step."""
        cams = []
        for c in self.cfg.cameras:
            fk = feature_key(c)
            if fk in batch:
                feats = batch[fk][:, -1].float()  # (B, N, C) cached
            else:
                feats = self.encode_images(c, batch[c][:, -1])
            cams.append(feats.to(self._device))
        proprio = torch.cat([batch[k][:, -1].reshape(batch[k].shape[0], -1).float() for k in self.cfg.proprio_keys], -1)
        proprio = (proprio.to(self._device) - self.proprio_mean) / self.proprio_std
        return cams, self.proprio(proprio)

    def _predict(self, cams: list[torch.Tensor], proprio: torch.Tensor) -> torch.Tensor:
        """-> normalized action chunk (B, chunk, A)."""
        names = [_name(c) for c in self.cfg.cameras]
        if self.cfg.head == "mlp":
            pooled = [self.feat_proj[n](self.poolers[n](x)) + self.cam_embed[n][:, 0] for n, x in zip(names, cams)]
            out = self.head(torch.cat(pooled + [proprio], dim=-1))
            return out.view(-1, self.cfg.chunk, self.cfg.action_dim)
        tokens = [self.feat_proj[n](x) + self.cam_embed[n] for n, x in zip(names, cams)]  # (B, N, d) each
        memory = torch.cat(tokens + [proprio[:, None]], dim=1)
        return self.head(self.act(memory))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: observation keys (B, To, ...) and `action` (B, chunk, A) -> (L1 loss, metrics)."""
        cams, proprio = self._obs_tokens(batch)
        pred = self._predict(cams, proprio)
        target = self.normalize_action(batch["action"][:, : self.cfg.chunk].float().to(self._device))
        loss = F.l1_loss(pred, target)
        return loss, {"loss": loss.item(), "l1_first_action": F.l1_loss(pred[:, 0], target[:, 0]).item()}

    @property
    def _device(self):
        return self.action_min.device

    # ---------------------------------------------------------------- acting
    def reset(self) -> None:
        self._queue.clear()
        self._ensemble.clear()
        self._t = 0
        if self._stream is not None:
            self._stream.reset()

    def _stream_features(self, images: list) -> list[torch.Tensor]:
        """One frame per camera -> per camera (1, N, C) features. The cameras stream side by side as one
        batch through a single streaming encoder, exactly as the feature cache computed them."""
        frames = torch.stack([torch.as_tensor(np.asarray(im)) for im in images])  # (cameras, H, W, 3)
        if self.encoder is None:
            feats = self.cnn(as_frames(frames[:, None], size_multiple=16)[:, 0].to(self._device))
        else:
            if self._stream is None:
                self._stream = StreamingEncoder(self.encoder, window=self.cfg.encoder_window)
            feats = self._stream.step(frames).features[:, 0]
        return [f[None] for f in feats]

    def _check_keys(self, obs: dict[str, Any], keys: tuple[str, ...]) -> None:
        missing = [k for k in keys if k not in obs]
        if missing:
            raise ValueError(f"observation: expected keys {list(keys)}, missing {missing} (got {sorted(obs)})")

    @torch.no_grad()
    def observe(self, obs: dict[str, Any]) -> None:
        """Advance the streaming encoder by this frame without predicting (a frame the control loop does not
        act on), so its temporal context stays what the feature cache computed: one frame per step. Nothing
        to advance without temporal context (window 1, or the CNN baseline)."""
        if self.encoder is None or self.cfg.encoder_window == 1:
            return
        self._check_keys(obs, self.cfg.cameras)
        self._stream_features([obs[c] for c in self.cfg.cameras])

    @torch.no_grad()
    def _act(self, obs: dict[str, Any]) -> torch.Tensor:
        """Consume one observation (the encoder's stream advances by a frame) -> unnormalized chunk (chunk, A)."""
        self._check_keys(obs, (*self.cfg.cameras, *self.cfg.proprio_keys))
        feats = self._stream_features([obs[c] for c in self.cfg.cameras])
        batch = {feature_key(c): f[:, None] for c, f in zip(self.cfg.cameras, feats)}
        for k in self.cfg.proprio_keys:
            batch[k] = torch.as_tensor(np.asarray(obs[k], dtype=np.float32)).reshape(1, 1, -1)
        cams, proprio = self._obs_tokens(batch)
        return self.unnormalize_action(self._predict(cams, proprio))[0]

    def predict_action_chunk(self, obs: dict[str, Any]) -> np.ndarray:
        """The next `chunk` actions (chunk, A); advances the streaming encoder by this frame."""
        return self._act(obs).cpu().numpy()

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """One action (A,). Every call feeds the frame to the encoder so its temporal context stays
        what training saw; a new chunk is predicted every step (ensembling) or when the queue empties."""
        if self.training:
            raise RuntimeError("select_action: call policy.eval() first (dropout would perturb actions)")
        if self.cfg.temporal_ensemble is None and self._queue:  # act from the queue; the stream still advances
            self.observe(obs)
            return self._queue.popleft().cpu().numpy()
        chunk = self._act(obs)
        t, self._t = self._t, self._t + 1
        if self.cfg.temporal_ensemble is not None:
            self._ensemble = [(t0, c) for t0, c in self._ensemble if t - t0 < self.cfg.chunk] + [(t, chunk)]
            acts = torch.stack([c[t - t0] for t0, c in self._ensemble])  # oldest first
            w = torch.exp(-self.cfg.temporal_ensemble * torch.arange(len(acts), dtype=torch.float32))
            return ((w[:, None] * acts).sum(0) / w.sum()).cpu().numpy()
        if not self._queue:
            self._queue.extend(chunk[: self.cfg.n_action_steps])
        return self._queue.popleft().cpu().numpy()

    # ---------------------------------------------------------------- checkpoints
    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        state = {k: v for k, v in self.state_dict().items()}
        return save_checkpoint(path, {"kind": CHECKPOINT_KIND, "policy": asdict(self.cfg), **(extra or {})},
                               {"policy": state})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> BCPolicy:
        config = read_config(path)
        if config.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"policy checkpoint {path}: expected kind {CHECKPOINT_KIND!r}, found {config.get('kind')!r}")
        policy = cls(PolicyConfig(**config["policy"]))
        policy.load_state_dict(load_state_dict(path, "policy"))
        return policy.to(device).eval()


def _name(key: str) -> str:
    return key.replace(".", "_")  # ModuleDict keys cannot contain dots


def _build_encoder(cfg: PolicyConfig) -> TotoEncoder:
    """The frozen encoder: pretrained weights when its checkpoint is at hand (toto), otherwise the
    architecture alone (toto_random, or a policy being rebuilt from its own checkpoint)."""
    if cfg.backbone == "toto" and cfg.encoder_checkpoint and Path(cfg.encoder_checkpoint, "config.json").is_file():
        tokenizer, model, _ = load_toto(cfg.encoder_checkpoint)
    else:
        tokenizer = Tokenizer(TokenizerConfig(**cfg.tokenizer_config))
        model = Transformer(ModelConfig(**cfg.model_config))
        if cfg.backbone == "toto_random" and cfg.encoder_checkpoint:
            # same tokenizer as the pretrained encoder, so the baseline isolates the transformer's pretraining
            tokenizer.load_state_dict(load_state_dict(cfg.encoder_checkpoint, "tokenizer"))
    return TotoEncoder(tokenizer, model, layer=cfg.encoder_layer, pooling="mean")


def build_policy(node: dict, encoder_checkpoint: str | Path | None, cameras: tuple[str, ...], image_size: int) -> BCPolicy:
    """A policy from a `configs/policy/*.yaml` node (its `name` is only a label)."""
    if node.get("scripted") or "_target_" in node:
        raise ValueError(f"policy {node.get('name')!r} is not a trainable behavior-cloning policy "
                         f"(choose one of toto_mlp, toto_act, toto_random, cnn)")
    node = {k: v for k, v in node.items() if k != "name"}
    node["cameras"] = tuple(cameras)
    if node.get("backbone", "toto") == "cnn":
        return BCPolicy(PolicyConfig(image_size=image_size, **node))
    if encoder_checkpoint is None or not Path(encoder_checkpoint, "config.json").is_file():
        raise ValueError(f"policy backbone {node.get('backbone')!r} needs an encoder checkpoint directory, "
                         f"got {encoder_checkpoint}")
    cfg = PolicyConfig.from_encoder(encoder_checkpoint, **node)
    if cfg.image_size != image_size:
        raise ValueError(f"encoder {encoder_checkpoint} expects {cfg.image_size} px frames, the store has {image_size} px")
    return BCPolicy(cfg)
