"""TotoPolicy: policies/bc.py's BCPolicy behind LeRobot's PreTrainedPolicy API (the `toto` policy type).

LeRobot hands images as float (B, 3, H, W) in [0, 1]; they go back to uint8 (B, H, W, 3) and through
toto_robot.frames.preprocess_frames (the one resizing that pretraining, BC and the robot share) to the encoder's
image size. The state is LeRobot's observation.state vector; actions come out as (B, A), one environment at a
time when acting (the streaming encoder keeps one context).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import torch
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION, OBS_STATE

from lerobot_policy_toto.configuration_toto import TOTO_POLICY_TYPE, TotoConfig
from policies.bc import BCPolicy, PolicyConfig, _build_encoder
from policies.features import FrameFeatureCache, feature_key
from toto_robot.frames import preprocess_frames


class TotoPolicy(PreTrainedPolicy):
    config_class = TotoConfig
    name = TOTO_POLICY_TYPE

    def __init__(self, config: TotoConfig, dataset_stats: dict | None = None, **kwargs):
        super().__init__(config)
        config.validate_features()
        self.image_keys = config.image_keys
        state_dim = config.input_features[OBS_STATE].shape[0]
        action_dim = config.output_features[ACTION].shape[0]
        if config.bc_policy is None:  # a new policy around the pretrained encoder
            if not config.encoder_checkpoint:
                raise ValueError("policy.encoder_checkpoint: expected the Toto checkpoint directory the policy "
                                 "is built on, got none")
            cfg = PolicyConfig.from_encoder(
                config.encoder_checkpoint, cameras=tuple(self.image_keys), proprio_keys=(OBS_STATE,),
                proprio_dims=(state_dim,), action_dim=action_dim, head=config.head, chunk=config.chunk,
                n_action_steps=config.n_action_steps, hidden=config.hidden, dropout=config.dropout,
                readout=config.readout, encoder_layer=config.encoder_layer, encoder_window=config.encoder_window,
                seed=config.seed)
            self.model = BCPolicy(cfg)
            config.bc_policy = json.dumps(asdict(cfg))
        else:  # a saved policy: the architecture from its config, every weight from its checkpoint
            cfg = PolicyConfig(**json.loads(config.bc_policy))
            got = {"cameras": tuple(self.image_keys), "state size": (state_dim,), "action size": action_dim}
            want = {"cameras": cfg.cameras, "state size": cfg.proprio_dims, "action size": cfg.action_dim}
            diff = [f"{k} {got[k]} (the policy was trained on {want[k]})" for k in got if got[k] != want[k]]
            if diff:
                raise ValueError("policy toto: the data's features do not match the policy's: " + "; ".join(diff))
            self.model = BCPolicy(cfg, encoder=_build_encoder(cfg, pretrained=False))
        self.feature_caches = None  # the frozen encoder's features, per camera, while training
        if config.feature_cache and self.model.encoder is not None:
            self.feature_caches = {k: FrameFeatureCache(self.model.encode_images, config.feature_cache_items,
                                                        config.feature_cache_dtype) for k in self.image_keys}
        if dataset_stats is not None:
            self.model.set_stats({k: {s: np.asarray(v) for s, v in dataset_stats[k].items()}
                                  for k in (ACTION, OBS_STATE)})

    def _frames(self, images: torch.Tensor) -> torch.Tensor:
        """LeRobot images (B, 3, H, W) float in [0, 1] -> (B, S, S, 3) uint8 at the encoder's size S."""
        frames = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        return torch.from_numpy(preprocess_frames(frames.cpu().numpy(), self.model.cfg.image_size))

    def _observation(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        obs = {k: self._frames(batch[k]) for k in self.image_keys}
        obs[OBS_STATE] = batch[OBS_STATE].float()
        return obs

    def get_optim_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]  # the encoder is frozen

    def reset(self) -> None:
        self.model.reset()

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        obs = self._observation(batch)
        cached = self.training and self.feature_caches is not None
        if cached:
            # the frames shifted as BCPolicy would shift them (same order of random draws), then their features
            for k in self.image_keys:
                obs[feature_key(k)] = self.feature_caches[k](self.model.augment_images(obs.pop(k)))
        window = {k: v[:, None] for k, v in obs.items()}  # (B, 1, ...): one obs step
        loss, metrics = self.model({**window, ACTION: batch[ACTION]})
        if cached:
            metrics["cached_frames"] = sum(len(c) for c in self.feature_caches.values())
        return loss, metrics

    def _one(self, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        n = len(batch[OBS_STATE])
        if n != 1:
            raise ValueError(f"policy toto acts in one environment at a time (one streaming encoder context), "
                             f"got a batch of {n}: run lerobot-eval with --eval.batch_size=1")
        return {k: v[0].cpu().numpy() for k, v in self._observation(batch).items()}

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, torch.Tensor], **kwargs) -> torch.Tensor:
        chunk = self.model.predict_action_chunk(self._one(batch))
        return torch.as_tensor(chunk, device=batch[OBS_STATE].device)[None]  # (1, chunk, A)

    @torch.no_grad()
    def select_action(self, batch: dict[str, torch.Tensor], **kwargs) -> torch.Tensor:
        action = self.model.select_action(self._one(batch))
        return torch.as_tensor(action, device=batch[OBS_STATE].device)[None]  # (1, A)
