"""toto-tokenize: encode the configured sources once into token shards (Zarr), resumable; one process or
torchrun (`torchrun --nproc_per_node N -m toto_robot.commands.tokenize`: each rank writes its shards)."""

from __future__ import annotations

import time
from pathlib import Path

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from pretrain.data import build_sources
from pretrain.shards import load_tokenizer, tokenize_sources
from pretrain.urls import resolved
from toto_robot.commands.entry import entry_point
from toto_robot.parallel import init_distributed


def run(cfg: DictConfig) -> None:
    t0 = time.time()
    rank, world, device = init_distributed()
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if rank > 0:
        dist.barrier()  # rank 0 first: a generated source writes its videos once
    sources = build_sources(data)
    if rank == 0 and world > 1:
        dist.barrier()
    tokenizer = load_tokenizer(cfg.tokenizer_checkpoint, device)
    summary = tokenize_sources(sources, tokenizer, cfg.shards, tokenizer_path=str(Path(cfg.tokenizer_checkpoint).resolve()),
                               batch_clips=cfg.batch_clips, strict=data["strict"], progress=cfg.progress,
                               shards_per_source=cfg.shards_per_source, workers=cfg.workers)
    if rank == 0:
        for name, s in summary.items():
            print(f"{name}: {s['clips']} clips, {s['tokens']:,} tokens, {s['skipped']} of {s['items']} items skipped")
        print(f"toto-tokenize finished in {time.time() - t0:.0f} s ({world} process{'es' if world > 1 else ''}); "
              f"shards: {resolved(cfg.shards)}")


main = entry_point("tokenize", "pretrain/tokenize", run)


if __name__ == "__main__":
    main()
