"""TotoConfig: the LeRobot config of the `toto` policy (LeRobot finds modeling_toto / processor_toto by name)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs import FeatureType, NormalizationMode, PreTrainedConfig
from lerobot.optim.optimizers import AdamWConfig
from lerobot.utils.constants import OBS_IMAGES, OBS_STATE

from policies.bc import HEADS

TOTO_POLICY_TYPE = "toto"


@PreTrainedConfig.register_subclass(TOTO_POLICY_TYPE)
@dataclass
class TotoConfig(PreTrainedConfig):
    encoder_checkpoint: str | None = None  # the pretrained Toto checkpoint directory (toto-pretrain's output)
    cameras: list[str] | None = None  # image features to read (observation.images.<camera>); None: all of them
    head: str = "mlp"  # policies/bc.py HEADS
    chunk: int = 8  # actions predicted per step
    n_action_steps: int = 4  # actions executed from a chunk before the next prediction
    hidden: int = 256
    dropout: float = 0.1
    readout: str = "attentive"
    encoder_layer: int | None = None  # None: the encoder's default layer
    encoder_window: int = 1  # frames of temporal context when acting
    seed: int = 0
    # Training encodes each distinct frame once and keeps its frozen features in memory (policies/features.py
    # FrameFeatureCache), as toto-train-bc's feature cache does for a store: LeRobot's loop hands decoded images.
    feature_cache: bool = True
    feature_cache_items: int = 200_000  # frames kept per camera at most (memory: items x tokens x channels)
    feature_cache_dtype: str = "float32"
    optimizer_lr: float = 3e-4
    optimizer_weight_decay: float = 1e-4
    # The resolved policies/bc.py PolicyConfig (JSON), written when the policy is first built from the encoder
    # checkpoint: a saved checkpoint rebuilds from it alone, without the encoder checkpoint.
    bc_policy: str | None = None
    # The policy normalizes inside (its statistics are saved with its weights): LeRobot's steps pass through.
    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=lambda: {
        "VISUAL": NormalizationMode.IDENTITY, "STATE": NormalizationMode.IDENTITY,
        "ENV": NormalizationMode.IDENTITY, "ACTION": NormalizationMode.IDENTITY})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head not in HEADS:
            raise ValueError(f"policy.head: expected one of {HEADS}, got {self.head!r}")
        if not 1 <= self.n_action_steps <= self.chunk:
            raise ValueError(f"policy.n_action_steps: expected 1..chunk={self.chunk}, got {self.n_action_steps}")

    @property
    def image_keys(self) -> list[str]:
        """The image features the policy reads, in order."""
        available = [k for k, ft in self.input_features.items() if ft.type is FeatureType.VISUAL]
        if self.cameras is None:
            return available
        wanted = [f"{OBS_IMAGES}.{c}" for c in self.cameras]
        missing = [k for k in wanted if k not in available]
        if missing:
            raise ValueError(f"policy.cameras: the policy reads {missing}, which the data does not have; "
                             f"its image features: {available}")
        return wanted

    def validate_features(self) -> None:
        if not self.image_keys:
            raise ValueError(f"policy toto: expected at least one image feature ({OBS_IMAGES}.<camera>), the "
                             f"data has {sorted(self.input_features)}")
        if OBS_STATE not in self.input_features:
            raise ValueError(f"policy toto: expected the state feature {OBS_STATE!r}, the data has "
                             f"{sorted(self.input_features)}")

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk))

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, weight_decay=self.optimizer_weight_decay)

    def get_scheduler_preset(self) -> None:
        return None
