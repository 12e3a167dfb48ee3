"""The `toto` policy's LeRobot processors: LeRobot's default steps (rename, batch, device); its normalization
steps pass everything through (TotoConfig.normalization_mapping), since the policy normalizes inside."""

from __future__ import annotations

from lerobot.processor.factory import make_default_pre_post_processors

from lerobot_policy_toto.configuration_toto import TotoConfig


def make_toto_pre_post_processors(config: TotoConfig, dataset_stats=None):
    return make_default_pre_post_processors(config, dataset_stats, normalizer_device=config.device)
