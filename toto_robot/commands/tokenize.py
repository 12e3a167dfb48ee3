"""toto-tokenize: encode the configured sources once into token shards (Zarr), resumable."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pretrain.data import build_sources
from pretrain.shards import load_tokenizer, tokenize_sources
from toto_robot.commands.entry import entry_point


def run(cfg: DictConfig) -> None:
    t0 = time.time()
    data = OmegaConf.to_container(cfg.data, resolve=True)
    sources = build_sources(data)
    tokenizer = load_tokenizer(cfg.tokenizer_checkpoint)
    summary = tokenize_sources(sources, tokenizer, cfg.shards, tokenizer_path=str(Path(cfg.tokenizer_checkpoint).resolve()),
                               batch_clips=cfg.batch_clips, strict=data["strict"], progress=cfg.progress)
    for name, s in summary.items():
        print(f"{name}: {s['clips']} clips, {s['tokens']:,} tokens, {s['skipped']} of {s['items']} items skipped")
    print(f"toto-tokenize finished in {time.time() - t0:.0f} s; shards: {Path(cfg.shards).resolve()}")


main = entry_point("tokenize", "pretrain/tokenize", run)


if __name__ == "__main__":
    main()
