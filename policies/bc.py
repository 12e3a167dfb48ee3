"""Behavior cloning on top of the frozen Toto encoder (and the baselines that share its trainer).

Observation encoding: each camera's frame goes through the frozen Toto encoder (shared weights, one
streaming cache per camera, features from the chosen layer, or from several concatenated along channels
per token: `encoder_layer: [2, 4]`), then a trainable read-out per camera
(`policies/readouts.py`: attentive pooling by default, optionally with a position embedding, several
queries, or spatial-softmax keypoints); proprioception goes through a small MLP. Heads: an MLP (the
VC-1 / MVP recipe), a transformer decoder that predicts a chunk of actions (ACT), optionally with
temporal ensembling, or a diffusion head (diffusion_policy's; `policies/diffusion.py`). The MLP and
diffusion heads see the last `n_obs_steps` observations (diffusion_policy uses 2).
Backbones: `toto` (pretrained), `toto_random` (same architecture, transformer randomly initialized,
same tokenizer), `cnn` (a small CNN trained end to end from pixels) and `state` (the privileged object
state + proprioception, no images: the ceiling that the head, data and budget allow).

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

from policies.diffusion import DiffusionHead, DiffusionHeadConfig
from policies.features import feature_key, layer_features, valid_layers
from policies.readouts import READOUTS, Readout
from toto_robot.checkpoint import (
    BC_POLICY,
    TOTO,
    load_state_dict,
    load_tokenizer,
    read_checkpoint,
    save_checkpoint,
)
from toto_robot.encoder import StreamingEncoder, TotoEncoder, load_toto
from toto_robot.fast import STEP_BACKENDS, TOKENIZER_BACKENDS, check_backend
from toto_robot.frames import as_frames, shift_frames
from toto_robot.model import ModelConfig, Transformer
from toto_robot.shapes import ROBOSUITE_PANDA, ShapeMeta
from toto_robot.tokenizer import Tokenizer, TokenizerConfig

BACKBONES = ("toto", "toto_random", "cnn", "state")
HEADS = ("mlp", "act", "diffusion")


@dataclass
class PolicyConfig:
    backbone: str = "toto"
    head: str = "mlp"
    # Inputs and output: the defaults are the shape contract (toto_robot/shapes.py), stored field by field.
    cameras: tuple[str, ...] = ROBOSUITE_PANDA.cameras
    proprio_keys: tuple[str, ...] = ROBOSUITE_PANDA.state_keys
    proprio_dims: tuple[int, ...] = ROBOSUITE_PANDA.state_sizes
    action_dim: int = ROBOSUITE_PANDA.action_dim
    chunk: int = 8  # actions predicted per step
    n_action_steps: int = 4  # actions executed from a chunk before the next prediction (no ensembling)
    temporal_ensemble: float | None = None  # ACT's m: weights exp(-m * age); None executes chunks open loop
    hidden: int = 256
    dropout: float = 0.1
    act_layers: int = 2
    act_heads: int = 4
    cnn_channels: int = 32
    image_size: int = ROBOSUITE_PANDA.image_size
    readout: str = "attentive"  # one of policies.readouts.READOUTS (mlp and diffusion heads)
    position_embedding: bool = False  # learned per-token position embedding before the read-out / ACT memory
    n_queries: int = 4  # readout multiquery
    n_keypoints: int = 32  # readout spatial_softmax
    flatten_channels: int = 16  # readout flatten: channels kept per token
    # Random-shift augmentation (DrQ; the crop randomizer of diffusion_policy's image policies):
    # frames shifted by up to `shift_augment` pixels in training. The CNN shifts each training image on the fly;
    # a frozen Toto backbone cannot, so its feature cache holds `augment_views` views of every frame (view 0
    # unshifted, the others shifted at random) and training reads one view per sample.
    shift_augment: int = 0
    augment_views: int = 1
    cache_dtype: str = "float32"  # the feature cache's dtype (float16 halves it; the read-out computes in float32)
    n_obs_steps: int = 1  # observations the mlp / diffusion head sees (the newest last)
    object_keys: tuple[str, ...] = ()  # privileged object-state keys (backbone state)
    object_dims: tuple[int, ...] = ()
    diffusion: dict | None = None  # DiffusionHeadConfig fields (head diffusion); horizon is `chunk`
    # The Toto encoder (backbones toto / toto_random): where it came from and how it is read.
    encoder_checkpoint: str | None = None
    # the block whose per-token features are read (None: the middle one), or several, concatenated along channels
    # per token in increasing order (e.g. [2, 4]); the encoder keeps the blocks up to the highest
    encoder_layer: int | tuple[int, ...] | None = None
    encoder_window: int = 1  # frames of temporal context in the streaming encoder
    # When acting: the streaming encoder's fast path (toto_robot/fast.py), e.g. "onnx" and "static"; "eager" is
    # the reference. A runtime choice: BCPolicy.load(path, tokenizer_backend=..., step_backend=...) overrides it.
    tokenizer_backend: str = "eager"
    step_backend: str = "eager"
    tokenizer_config: dict | None = None  # copied from the encoder checkpoint so the policy is self-contained
    model_config: dict | None = None
    seed: int = 0

    def __post_init__(self):
        self.cameras, self.proprio_keys = tuple(self.cameras), tuple(self.proprio_keys)
        self.proprio_dims = tuple(self.proprio_dims)
        self.object_keys, self.object_dims = tuple(self.object_keys), tuple(self.object_dims)
        if self.backbone not in BACKBONES:
            raise ValueError(f"PolicyConfig.backbone: expected one of {BACKBONES}, got {self.backbone!r}")
        if self.head not in HEADS:
            raise ValueError(f"PolicyConfig.head: expected one of {HEADS}, got {self.head!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"PolicyConfig.readout: expected one of {READOUTS}, got {self.readout!r}")
        if self.backbone == "state":
            self.cameras = ()
            if not self.object_keys:
                raise ValueError("PolicyConfig.object_keys: backbone 'state' expected object-state keys, got ()")
        elif not self.cameras:
            raise ValueError("PolicyConfig.cameras: expected at least one camera key, got ()")
        if len(self.proprio_keys) != len(self.proprio_dims):
            raise ValueError(f"PolicyConfig.proprio_dims: expected one size per proprio key "
                             f"{self.proprio_keys}, got {self.proprio_dims}")
        if len(self.object_keys) != len(self.object_dims):
            raise ValueError(f"PolicyConfig.object_dims: expected one size per object key "
                             f"{self.object_keys}, got {self.object_dims}")
        if self.n_obs_steps < 1 or (self.head == "act" and self.n_obs_steps != 1):
            raise ValueError(f"PolicyConfig.n_obs_steps: expected >= 1 (exactly 1 for the act head), "
                             f"got {self.n_obs_steps}")
        future = self.chunk - self.n_obs_steps + 1  # predicted actions from the current step on
        if not 1 <= self.n_action_steps <= future:
            raise ValueError(f"PolicyConfig.n_action_steps: expected 1..chunk - n_obs_steps + 1 = {future}, "
                             f"got {self.n_action_steps}")
        if self.shift_augment < 0 or self.augment_views < 1:
            raise ValueError(f"PolicyConfig.shift_augment / augment_views: expected >= 0 / >= 1, got "
                             f"{self.shift_augment} / {self.augment_views}")
        frozen = self.backbone in ("toto", "toto_random")
        if (self.augment_views > 1 and (self.shift_augment == 0 or not frozen)) or (
                frozen and self.shift_augment > 0 and self.augment_views == 1):
            raise ValueError(f"PolicyConfig.augment_views: a frozen Toto backbone shifts frames through its cached views "
                             f"(augment_views > 1 with shift_augment > 0), the CNN on the fly (augment_views 1); "
                             f"got augment_views={self.augment_views}, shift_augment={self.shift_augment}, "
                             f"backbone={self.backbone!r}")
        check_backend("PolicyConfig.tokenizer_backend", self.tokenizer_backend, TOKENIZER_BACKENDS)
        check_backend("PolicyConfig.step_backend", self.step_backend, STEP_BACKENDS)
        if self.cache_dtype not in ("float32", "float16"):
            raise ValueError(f"PolicyConfig.cache_dtype: expected 'float32' or 'float16', got {self.cache_dtype!r}")
        if self.backbone in ("toto", "toto_random") and (self.tokenizer_config is None or self.model_config is None):
            raise ValueError(f"PolicyConfig: backbone {self.backbone!r} needs the encoder's tokenizer_config and "
                             "model_config (use PolicyConfig.from_encoder)")
        if isinstance(self.encoder_layer, list | tuple):
            self.encoder_layer = tuple(self.encoder_layer)
        if frozen and self.encoder_layer is not None:
            n = self.model_config["n_layers"]
            layers = self.encoder_layer if isinstance(self.encoder_layer, tuple) else (self.encoder_layer,)
            if not valid_layers(layers, n):
                raise ValueError(f"PolicyConfig.encoder_layer: expected 1..{n} (a transformer block), or a list of "
                                 f"them in increasing order without duplicates, got "
                                 f"{list(layers) if isinstance(self.encoder_layer, tuple) else self.encoder_layer!r}")

    @property
    def encoder_layers(self) -> tuple[int, ...]:
        """The blocks whose features are concatenated per token, lowest first (the middle one when
        encoder_layer is None); () without a Toto backbone."""
        if self.backbone not in ("toto", "toto_random"):
            return ()
        if self.encoder_layer is None:
            return (self.model_config["n_layers"] // 2,)  # TotoEncoder's default read-out layer
        return self.encoder_layer if isinstance(self.encoder_layer, tuple) else (self.encoder_layer,)

    @property
    def low_dim_keys(self) -> tuple[str, ...]:
        """Low-dimensional inputs, in the order they are concatenated: object state, then proprioception."""
        return (*self.object_keys, *self.proprio_keys)

    @property
    def low_dim_size(self) -> int:
        return sum(self.object_dims) + sum(self.proprio_dims)

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """Store keys a training window reads for the observation (features replace images when cached)."""
        return (*self.cameras, *self.low_dim_keys)

    @property
    def shape_meta(self) -> ShapeMeta:
        """What the policy reads and writes: its cameras, image size, low-dimensional keys (object state, then
        proprioception) with their sizes, and its action size."""
        state = dict(zip(self.low_dim_keys, (*self.object_dims, *self.proprio_dims), strict=True))
        return ShapeMeta(cameras=self.cameras, image_size=self.image_size, state=state, action_dim=self.action_dim)

    @classmethod
    def from_encoder(cls, encoder_checkpoint: str | Path, **kw) -> PolicyConfig:
        enc = read_checkpoint(encoder_checkpoint, TOTO)  # a tokenizer or policy checkpoint: its kind, named
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
        self.encoder, self.cnn = None, None
        if cfg.backbone == "cnn":
            self.cnn = SmallCNN(cfg.cnn_channels, cfg.hidden)
            feat_dim, n_tokens = cfg.hidden, (cfg.image_size // 16) ** 2
        elif cfg.backbone == "state":
            feat_dim, n_tokens = 0, 0
        else:
            self.encoder = encoder if encoder is not None else _build_encoder(cfg)
            # the layers' features side by side per token: (N, len(layers) * C)
            feat_dim, n_tokens = self.encoder.dim * len(cfg.encoder_layers), self.encoder.cfg.tokens_per_frame
        d = cfg.hidden
        names = [_name(c) for c in cfg.cameras]
        self.cam_embed = nn.ParameterDict({n: nn.Parameter(torch.zeros(1, 1, d)) for n in names})
        self.proprio = nn.Sequential(nn.Linear(cfg.low_dim_size, d), nn.SiLU(), nn.Linear(d, d))
        if cfg.head == "act":
            self.readouts = nn.ModuleDict()
            self.feat_proj = nn.ModuleDict({n: nn.Linear(feat_dim, d) for n in names})
            self.token_pos = (nn.ParameterDict({n: nn.Parameter(torch.randn(1, n_tokens, d) * 0.02) for n in names})
                              if cfg.position_embedding else None)
            self.act = ACTHead(d, cfg.chunk, cfg.act_layers, cfg.act_heads, cfg.dropout)
            self.head = nn.Linear(d, cfg.action_dim)
        else:
            # read out at the encoder's width, then project: attention over every token stays cheap
            self.readouts = nn.ModuleDict({n: Readout(cfg.readout, feat_dim, n_tokens, cfg.position_embedding,
                                                      cfg.n_queries, cfg.n_keypoints, cfg.flatten_channels)
                                           for n in names})
            self.feat_proj = nn.ModuleDict({n: nn.Linear(self.readouts[n].out_dim, d) for n in names})
            cond_dim = cfg.n_obs_steps * d * (len(names) + 1)
            if cfg.head == "mlp":
                self.head = nn.Sequential(nn.Linear(cond_dim, 2 * d), nn.SiLU(), nn.Dropout(cfg.dropout),
                                          nn.Linear(2 * d, 2 * d), nn.SiLU(), nn.Linear(2 * d, cfg.chunk * cfg.action_dim))
            else:
                head_cfg = DiffusionHeadConfig(**{**(cfg.diffusion or {}), "horizon": cfg.chunk})
                self.head = DiffusionHead(cond_dim, cfg.action_dim, head_cfg)
        # normalization (filled from the store's statistics by `set_stats`, saved with the weights)
        self.register_buffer("action_min", -torch.ones(cfg.action_dim))
        self.register_buffer("action_max", torch.ones(cfg.action_dim))
        self.register_buffer("proprio_mean", torch.zeros(cfg.low_dim_size))
        self.register_buffer("proprio_std", torch.ones(cfg.low_dim_size))
        self._stream: StreamingEncoder | None = None
        self._queue: deque = deque()
        self._ensemble: list[tuple[int, torch.Tensor]] = []
        self._history: deque = deque(maxlen=cfg.n_obs_steps)  # step embeddings (1, E) of the newest observations
        self._t = 0

    @property
    def uses_privileged_state(self) -> bool:
        """The `state` baseline reads the simulator's object state (the rollout runner passes obs['privileged'])."""
        return self.cfg.backbone == "state"

    # ---------------------------------------------------------------- normalization
    def set_stats(self, stats: dict[str, dict[str, np.ndarray]]) -> None:
        """Action min/max -> [-1, 1]; proprio mean/std, from a store's compute_stats()."""
        self.action_min.copy_(torch.as_tensor(stats["action"]["min"], dtype=torch.float32))
        self.action_max.copy_(torch.as_tensor(stats["action"]["max"], dtype=torch.float32))
        mean = np.concatenate([np.asarray(stats[k]["mean"]).reshape(-1) for k in self.cfg.low_dim_keys])
        std = np.concatenate([np.asarray(stats[k]["std"]).reshape(-1) for k in self.cfg.low_dim_keys])
        self.proprio_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.proprio_std.copy_(torch.as_tensor(np.maximum(std, 1e-3), dtype=torch.float32))

    def normalize_action(self, a):
        span = (self.action_max - self.action_min).clamp_min(1e-6)
        return 2 * (a - self.action_min) / span - 1

    def unnormalize_action(self, a):
        return (a.clamp(-1, 1) + 1) / 2 * (self.action_max - self.action_min) + self.action_min

    # ---------------------------------------------------------------- encoding
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Frames (B, H, W, 3) uint8 -> token features (B, N, C), one frame without temporal context (the CNN
        trains on images; Toto backbones train on cached streaming features and stream when acting)."""
        if self.encoder is None:
            return self.cnn(as_frames(images[:, None], size_multiple=16)[:, 0].to(self._device))
        return layer_features(self.encoder, self.encoder, images[:, None], self.cfg.encoder_layers)[:, 0]

    def augment_images(self, images: torch.Tensor) -> torch.Tensor:
        """Training images (B, H, W, 3) uint8, each shifted at random by up to cfg.shift_augment pixels (the CNN's
        augmentation; the same function shifts the frames of the Toto feature cache's views)."""
        pad = self.cfg.shift_augment
        if not self.training or pad == 0:
            return images
        shifts = torch.randint(-pad, pad + 1, (len(images), 2)).numpy()
        return torch.from_numpy(shift_frames(np.asarray(images.cpu()), shifts, pad))

    def _step_inputs(self, batch: dict[str, torch.Tensor], t: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per camera (B, N, C) features and the normalized low-dim vector (B, L) of window step t."""
        cams = []
        for c in self.cfg.cameras:
            fk = feature_key(c)
            if fk in batch:
                feats = batch[fk][:, t]
                if feats.dim() == 4:  # (B, views, N, C): the cache's views of each frame, view 0 unshifted
                    views = (torch.randint(feats.shape[1], (len(feats),)) if self.training
                             else torch.zeros(len(feats), dtype=torch.long))
                    feats = feats[torch.arange(len(feats)), views]
            else:
                feats = self.encode_images(self.augment_images(batch[c][:, t]))
            cams.append(feats.float().to(self._device))
        low = torch.cat([batch[k][:, t].reshape(batch[k].shape[0], -1).float() for k in self.cfg.low_dim_keys], -1)
        return cams, (low.to(self._device) - self.proprio_mean) / self.proprio_std

    def _step_embedding(self, cams: list[torch.Tensor], low: torch.Tensor) -> torch.Tensor:
        """One observation -> (B, E): each camera read out and projected, plus the low-dim embedding."""
        names = [_name(c) for c in self.cfg.cameras]
        pooled = [self.feat_proj[n](self.readouts[n](x)) + self.cam_embed[n][:, 0] for n, x in zip(names, cams)]
        return torch.cat(pooled + [self.proprio(low)], dim=-1)

    def _act_memory(self, cams: list[torch.Tensor], low: torch.Tensor) -> torch.Tensor:
        """ACT: every camera token (with camera and optional position embeddings) and the low-dim token."""
        tokens = []
        for c, x in zip(self.cfg.cameras, cams):
            n = _name(c)
            tok = self.feat_proj[n](x) + self.cam_embed[n]  # (B, N, d)
            tokens.append(tok + self.token_pos[n] if self.token_pos is not None else tok)
        return torch.cat(tokens + [self.proprio(low)[:, None]], dim=1)

    def _condition(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """mlp / diffusion: the last n_obs_steps step embeddings of a window, oldest first, (B, To * E)."""
        return torch.cat([self._step_embedding(*self._step_inputs(batch, t)) for t in range(self.cfg.n_obs_steps)], -1)

    def _head_chunk(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, To * E) -> normalized action chunk (B, chunk, A)."""
        if self.cfg.head == "diffusion":
            return self.head.sample(cond, generator=generator)
        return self.head(cond).view(-1, self.cfg.chunk, self.cfg.action_dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: observation keys (B, To, ...) and `action` (B, chunk, A) -> (loss, metrics): L1 on normalized
        actions (mlp, act), or the noise-prediction MSE (diffusion)."""
        target = self.normalize_action(batch["action"][:, : self.cfg.chunk].float().to(self._device))
        if self.cfg.head == "act":
            pred = self.head(self.act(self._act_memory(*self._step_inputs(batch, 0))))
        else:
            cond = self._condition(batch)
            if self.cfg.head == "diffusion":
                loss = self.head.loss(cond, target)
                return loss, {"loss": loss.item()}
            pred = self._head_chunk(cond)
        loss = F.l1_loss(pred, target)
        return loss, {"loss": loss.item(), "l1_first_action": F.l1_loss(pred[:, 0], target[:, 0]).item()}

    @property
    def _device(self):
        return self.action_min.device

    # ---------------------------------------------------------------- acting
    def reset(self) -> None:
        self._queue.clear()
        self._ensemble.clear()
        self._history.clear()
        self._t = 0
        if self._stream is not None:
            self._stream.reset()

    def _stream_features(self, images: list) -> list[torch.Tensor]:
        """One frame per camera -> per camera (1, N, C) features. The cameras stream side by side as one
        batch through a single streaming encoder, exactly as the feature cache computed them."""
        if not images:  # the state baseline
            return []
        frames = torch.stack([torch.as_tensor(np.asarray(im)) for im in images])  # (cameras, H, W, 3)
        if self.encoder is None:
            feats = self.encode_images(frames)
        else:
            if self._stream is None:
                self._stream = StreamingEncoder(self.encoder, window=self.cfg.encoder_window,
                                                tokenizer_backend=self.cfg.tokenizer_backend,
                                                step_backend=self.cfg.step_backend)
            feats = layer_features(self.encoder, self._stream.step, frames, self.cfg.encoder_layers)[:, 0]
        return [f[None] for f in feats]

    def _low_dim(self, obs: dict[str, Any]) -> torch.Tensor:
        """The normalized low-dim vector (1, L) of one observation; object state comes from obs['privileged']
        when the observation itself does not carry it (rollouts of the state baseline)."""
        privileged = obs.get("privileged") or {}
        values = [obs[k] if k in obs else privileged[k] for k in self.cfg.low_dim_keys]
        low = torch.cat([torch.as_tensor(np.asarray(v, dtype=np.float32)).reshape(1, -1) for v in values], -1)
        return (low.to(self._device) - self.proprio_mean) / self.proprio_std

    def _check_obs(self, obs: dict[str, Any], keys: tuple[str, ...]) -> None:
        available = set(obs) | set(obs.get("privileged") or {})
        missing = [k for k in keys if k not in available]
        if missing:
            raise ValueError(f"observation: expected keys {list(keys)}, missing {missing} (got {sorted(obs)})")

    def _push(self, obs: dict[str, Any]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Consume one observation: the encoder's stream advances by a frame and, for heads that see several
        observations, its step embedding joins the history (the first fills it, as the sampler pads)."""
        feats = self._stream_features([obs[c] for c in self.cfg.cameras])
        low = self._low_dim(obs)
        if self.cfg.head != "act":
            emb = self._step_embedding([f.to(self._device) for f in feats], low)
            while len(self._history) < self.cfg.n_obs_steps - 1:
                self._history.append(emb)
            self._history.append(emb)
        return feats, low

    @torch.no_grad()
    def observe(self, obs: dict[str, Any]) -> None:
        """Advance by an observation without predicting (one the control loop does not act on), so the temporal
        context stays what training saw: the streaming encoder's frames and the head's observation history.
        Nothing to advance without either (window 1 or no encoder, and one observation step)."""
        streams = self.encoder is not None and self.cfg.encoder_window > 1
        if not streams and self.cfg.n_obs_steps == 1:
            return
        if self.cfg.n_obs_steps == 1:
            self._check_obs(obs, self.cfg.cameras)
            self._stream_features([obs[c] for c in self.cfg.cameras])
            return
        self._check_obs(obs, self.cfg.obs_keys)
        self._push(obs)

    @torch.no_grad()
    def _act(self, obs: dict[str, Any]) -> torch.Tensor:
        """Consume one observation -> unnormalized chunk (chunk, A)."""
        self._check_obs(obs, self.cfg.obs_keys)
        feats, low = self._push(obs)
        if self.cfg.head == "act":
            pred = self.head(self.act(self._act_memory([f.to(self._device) for f in feats], low)))
        else:
            generator = torch.Generator(device=self._device).manual_seed(self.cfg.seed * 1_000_003 + self._t)
            pred = self._head_chunk(torch.cat(list(self._history), -1), generator)
        return self.unnormalize_action(pred)[0, self.cfg.n_obs_steps - 1:]

    def predict_action_chunk(self, obs: dict[str, Any]) -> np.ndarray:
        """The next actions, from this observation on (chunk - n_obs_steps + 1, A); advances the streaming
        encoder by this frame. As in diffusion_policy, a chunk starts at the oldest observation it saw, so the
        first n_obs_steps - 1 predicted actions are in the past."""
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
        t, self._t = self._t, self._t + 1  # after _act: diffusion noise is seeded by the prediction count
        if self.cfg.temporal_ensemble is not None:
            self._ensemble = [(t0, c) for t0, c in self._ensemble if t - t0 < len(c)] + [(t, chunk)]
            acts = torch.stack([c[t - t0] for t0, c in self._ensemble])  # oldest first
            w = torch.exp(-self.cfg.temporal_ensemble * torch.arange(len(acts), dtype=torch.float32))
            return ((w[:, None] * acts).sum(0) / w.sum()).cpu().numpy()
        if not self._queue:
            self._queue.extend(chunk[: self.cfg.n_action_steps])
        return self._queue.popleft().cpu().numpy()

    # ---------------------------------------------------------------- checkpoints
    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        state = {k: v for k, v in self.state_dict().items()}
        return save_checkpoint(path, BC_POLICY, {"policy": asdict(self.cfg), **(extra or {})}, {"policy": state})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", tokenizer_backend: str | None = None,
             step_backend: str | None = None, tokenizer: str | Path | None = None) -> BCPolicy:
        """Rebuild a policy from its checkpoint alone: the architecture from config.json, every weight (the
        encoder's included) from policy.safetensors; the encoder checkpoint it names is not needed.
        `tokenizer_backend` / `step_backend`, when given, replace the saved fast-path choice (toto_robot/fast.py).
        `tokenizer`, a tokenizer checkpoint with the same codes (a distilled light encoder,
        toto-distill-tokenizer), replaces the encoder's tokenizer: the same token ids, mostly, for less work.
        """
        config = read_checkpoint(path, BC_POLICY)
        runtime = {"tokenizer_backend": tokenizer_backend, "step_backend": step_backend}
        cfg = PolicyConfig(**{**config["policy"], **{k: v for k, v in runtime.items() if v is not None}})
        encoder = _build_encoder(cfg, pretrained=False) if cfg.backbone in ("toto", "toto_random") else None
        policy = cls(cfg, encoder=encoder)
        policy.load_state_dict(load_state_dict(path, "policy"))
        if tokenizer is not None:
            policy.use_tokenizer(tokenizer)
        return policy.to(device).eval()

    def use_tokenizer(self, path: str | Path) -> None:
        """Tokenize with the tokenizer checkpoint at `path` from now on; it must hold the encoder's codes (the
        same quantizer state: a student distilled from this tokenizer), so its ids mean the same."""
        if self.encoder is None:
            raise ValueError(f"tokenizer {path}: the policy's backbone {self.cfg.backbone!r} has no tokenizer")
        new, old = load_tokenizer(path), self.encoder.tokenizer
        same = new.vocab_size == old.vocab_size and new.cfg.grid == old.cfg.grid and all(
            torch.equal(a.cpu(), b.cpu()) for a, b in zip(new.quantizer.state_dict().values(),
                                                           old.quantizer.state_dict().values()))
        if not same:
            raise ValueError(f"tokenizer {path}: expected the codes of the policy's tokenizer ({old.vocab_size} "
                             f"codes, {old.cfg.grid}x{old.cfg.grid} grid, the same codebook), found a tokenizer "
                             f"with {new.vocab_size} codes, a {new.cfg.grid}x{new.cfg.grid} grid"
                             f"{' and another codebook' if new.vocab_size == old.vocab_size else ''}")
        device = next(old.parameters()).device
        self.encoder.tokenizer = new.to(device).requires_grad_(False)
        self.cfg.tokenizer_config = asdict(new.cfg)  # a saved policy rebuilds with this tokenizer
        self._stream = None  # the next step streams through the new tokenizer


def _name(key: str) -> str:
    return key.replace(".", "_")  # ModuleDict keys cannot contain dots


def _build_encoder(cfg: PolicyConfig, pretrained: bool = True) -> TotoEncoder:
    """The frozen encoder. pretrained: the weights of `cfg.encoder_checkpoint` (toto), or its tokenizer with a
    randomly initialized transformer (toto_random); otherwise the architecture alone, for a policy whose
    checkpoint holds the weights."""
    tokenizer = Tokenizer(TokenizerConfig(**cfg.tokenizer_config))
    model = Transformer(ModelConfig(**cfg.model_config))
    if pretrained:
        if not cfg.encoder_checkpoint or not Path(cfg.encoder_checkpoint, "config.json").is_file():
            raise ValueError(f"policy backbone {cfg.backbone!r}: expected an encoder checkpoint directory, "
                             f"got {cfg.encoder_checkpoint}")
        if cfg.backbone == "toto":
            tokenizer, model, _ = load_toto(cfg.encoder_checkpoint)
        else:  # same tokenizer as the pretrained encoder, so the baseline isolates the transformer's pretraining
            tokenizer.load_state_dict(load_state_dict(cfg.encoder_checkpoint, "tokenizer"))
    return TotoEncoder(tokenizer, model, layer=cfg.encoder_layers[-1], pooling="mean")


def build_policy(node: dict, encoder_checkpoint: str | Path | None, cameras: tuple[str, ...], image_size: int,
                 low_dim_sizes: dict[str, int] | None = None) -> BCPolicy:
    """A policy from a `configs/policy/*.yaml` node (its `name` is only a label). `low_dim_sizes` (key -> size,
    from the store's schema) sizes the object-state keys of the `state` backbone."""
    if node.get("scripted") or "_target_" in node:
        raise ValueError(f"policy {node.get('name')!r} is not a trainable behavior-cloning policy "
                         f"(choose one of toto_mlp, toto_act, toto_random, cnn, state)")
    node = {k: v for k, v in node.items() if k != "name"}
    node["cameras"] = tuple(cameras)
    backbone = node.get("backbone", "toto")
    if backbone == "state":
        keys = tuple(node.get("object_keys") or ("object",))
        sizes = low_dim_sizes or {}
        missing = [k for k in keys if k not in sizes]
        if missing:
            raise ValueError(f"policy backbone 'state': expected object-state keys {list(keys)} in the store, "
                             f"missing {missing} (collect a new store: older ones have no object state)")
        node |= {"object_keys": keys, "object_dims": tuple(sizes[k] for k in keys)}
    if backbone in ("cnn", "state"):
        return BCPolicy(PolicyConfig(image_size=image_size, **node))
    if encoder_checkpoint is None or not Path(encoder_checkpoint, "config.json").is_file():
        raise ValueError(f"policy backbone {backbone!r} needs an encoder checkpoint directory, "
                         f"got {encoder_checkpoint}")
    cfg = PolicyConfig.from_encoder(encoder_checkpoint, **node)
    if cfg.image_size != image_size:
        raise ValueError(f"encoder {encoder_checkpoint} expects {cfg.image_size} px frames, the store has {image_size} px")
    return BCPolicy(cfg)
