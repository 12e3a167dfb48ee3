"""LeRobot policy plugin: the policy type `toto`, our behavior-cloning policy (policies/bc.py: the frozen Toto
encoder, a read-out per camera, an MLP / ACT / diffusion head) as a LeRobot PreTrainedPolicy.

    lerobot-train --policy.type=toto --policy.encoder_checkpoint=<toto checkpoint> --dataset.repo_id=local/demos \
        --dataset.root=<LeRobot dataset> --policy.push_to_hub=false
    lerobot-eval --policy.path=<run>/checkpoints/last/pretrained_model --env.type=toto --eval.batch_size=1

It reads LeRobot's names: observation.images.<camera> (every camera of the dataset, or `--policy.cameras`)
and observation.state (toto_robot/lerobot_io.py exports stores with these names).
"""

from lerobot_policy_toto.configuration_toto import TotoConfig

__all__ = ["TotoConfig"]
