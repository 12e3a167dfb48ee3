"""toto-pretrain: next-token pretraining over token shards; single process or torchrun (DDP / FSDP2)."""

from __future__ import annotations

import time
from pathlib import Path

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from pretrain.trainer import TrainConfig, pretrain
from toto_robot.commands.entry import entry_point
from toto_robot.typecheck import build, check_value


def train_config(cfg: DictConfig) -> TrainConfig:
    """The trainer's config, with mixture weights taken from the data sources."""
    weights = {}
    for name, node in OmegaConf.to_container(cfg.data.sources, resolve=True).items():
        check_value(f"data.sources.{name}.weight", node.get("weight") if isinstance(node, dict) else node, float)
        weights[name] = float(node["weight"])
    return build(TrainConfig, OmegaConf.to_container(cfg.train, resolve=True), "train", weights=weights)


def run(cfg: DictConfig) -> None:
    t0 = time.time()
    res = pretrain(cfg.shards, OmegaConf.to_container(cfg.model, resolve=True), train_config(cfg), cfg.out_dir)
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"toto-pretrain finished in {time.time() - t0:.0f} s: train loss {res['final_loss']:.4f}, "
              f"held-out loss {res['held_out_loss']:.4f}, {res['tokens_per_s']:,.0f} tokens/s, "
              f"MFU {100 * res['mfu']:.2f}%")
        print(f"checkpoint: {res['checkpoint']}; results: {Path(cfg.out_dir).resolve() / 'results.json'}")
    if dist.is_initialized():
        dist.destroy_process_group()


main = entry_point("pretrain", "pretrain/pretrain", run)


if __name__ == "__main__":
    main()
