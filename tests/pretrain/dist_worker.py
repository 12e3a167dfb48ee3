"""Run by `test_distributed_data.py` under torchrun (2 gloo ranks): the distributed data paths in one launch.

    torchrun --standalone --nproc_per_node 2 tests/pretrain/dist_worker.py TMP

1. tokenizes TMP/videos into TMP/two.zarr (fresh) and resumes TMP/resumed.zarr (left half written by one
   process), both with 3 shards per source;
2. runs one training step of an EMA quantizer on different data per rank;
3. trains the tokenizer for 3 DDP steps.
Each rank writes what it saw to TMP/rank<r>.json.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import pretrain.tokenizer_training
from pretrain.data import VideoSource
from pretrain.shards import load_tokenizer, tokenize_sources
from tests.pretrain.helpers import CLIP, SIZE, STRIDE
from toto_robot.parallel import init_distributed
from toto_robot.tokenizer import EMAVectorQuantizer, tokenizer_preset


def same_on_all_ranks(t: torch.Tensor) -> bool:
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t.contiguous())
    return all(torch.equal(g, gathered[0]) for g in gathered)


def main(tmp: Path):
    rank, world, _ = init_distributed()
    torch.set_num_threads(1)
    tok = load_tokenizer(tmp / "tokenizer")
    src = VideoSource("videos", tmp / "videos", size=SIZE, clip_frames=CLIP, stride=STRIDE)
    common = {"tokenizer_path": str(tmp / "tokenizer"), "progress": False, "shards_per_source": 3}
    seen = {"world": world,
            "fresh": tokenize_sources([src], tok, tmp / "two.zarr", workers=1, **common)["videos"],
            "resumed": tokenize_sources([src], tok, tmp / "resumed.zarr", workers=0, **common)["videos"]}

    torch.manual_seed(0)
    vq = EMAVectorQuantizer(16, 4, decay=0.99, commitment=0.25, dead_threshold=1e-3).train()
    vq(torch.randn(64, 4) + 10 * rank)  # each rank's first batch is far from the other's
    seen["vq_same_codebook"] = same_on_all_ranks(vq.codebook)

    made = []  # the tokenizer each rank trains, to compare the ranks' copies after training

    class Recorded(pretrain.tokenizer_training.Tokenizer):
        def __init__(self, cfg):
            super().__init__(cfg)
            made.append(self)

    pretrain.tokenizer_training.Tokenizer = Recorded
    cfg = tokenizer_preset("tiny", image_size=SIZE, channels=8, codebook_size=32, embed_dim=8)
    res = pretrain.tokenizer_training.train_tokenizer([src], cfg, tmp / "tok_ddp", steps=3, batch_size=4,
                                                       buffer_frames=16, progress=False)
    (trained,) = made
    seen["ddp_world_size"] = res["world_size"]
    seen["ddp_checkpoint"] = Path(res["checkpoint"]).is_dir()
    seen["ddp_same_codebook"] = same_on_all_ranks(trained.quantizer.codebook)
    seen["ddp_same_weights"] = all(same_on_all_ranks(p.detach()) for p in trained.parameters())
    (tmp / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
