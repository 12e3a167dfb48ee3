"""toto-train-tokenizer: train the tokenizer on frames from the configured sources (PSNR, codebook usage);
one process or torchrun (DDP: `torchrun --nproc_per_node 2 -m toto_robot.commands.train_tokenizer`)."""

from __future__ import annotations

import time

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from pretrain.data import build_sources
from pretrain.tokenizer_training import train_tokenizer
from toto_robot.commands.entry import entry_point
from toto_robot.config import tokenizer_config
from toto_robot.typecheck import check_keys


def run(cfg: DictConfig) -> None:
    t0 = time.time()
    data = OmegaConf.to_container(cfg.data, resolve=True)
    train_args = OmegaConf.to_container(cfg.tokenizer_train, resolve=True)
    check_keys(train_tokenizer, train_args, "tokenizer_train", 3, "seed", "strict")  # before decoding any video
    sources = build_sources(data)
    # The tokenizer trains at the data's resolution.
    tok_cfg = tokenizer_config({**OmegaConf.to_container(cfg.tokenizer, resolve=True), "image_size": data["resolution"]})
    res = train_tokenizer(sources, tok_cfg, cfg.tokenizer_dir, seed=cfg.seed, strict=data["strict"], **train_args)
    if res["world_size"] > 1 and dist.get_rank() > 0:
        return  # rank 0 reports
    skipped = f"; skipped unreadable items: {res['skipped']}" if res["skipped"] else ""
    print(f"toto-train-tokenizer finished in {time.time() - t0:.0f} s: PSNR {res['psnr_check']:.2f} dB, "
          f"codebook usage {res['codebook_usage_check']:.3f}{skipped}")
    print(f"checkpoint: {res['checkpoint']}")


main = entry_point("train-tokenizer", "pretrain/train_tokenizer", run)


if __name__ == "__main__":
    main()
