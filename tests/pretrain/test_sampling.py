"""Chunk-level shuffling: batches from shards larger than the memory budget, a pure function of the step."""

import tracemalloc

import numpy as np
import pytest

from pretrain.data import Source
from pretrain.shards import TokenShards, save_tokenizer, tokenize_sources
from pretrain.trainer import Batches, TrainConfig, pretrain
from tests.pretrain.helpers import CLIP, SIZE, tiny_tokenizer
from toto_robot.model import model_preset

CHUNK = 4  # clips per storage chunk (64 in real stores)
WINDOW = 4  # chunks per window


class NoiseSource(Source):
    """Items of 3 random clips each (cheap to make: no decoding)."""

    def __init__(self, n_items: int):
        super().__init__("noise", size=SIZE, clip_frames=CLIP, stride=1)
        self.n_items = n_items

    def _list_items(self):
        return [f"item{i:04d}" for i in range(self.n_items)]

    def clips(self, item):
        rng = np.random.default_rng(int(item[4:]))
        yield from rng.integers(0, 256, size=(3, CLIP, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sampling")
    tok = tiny_tokenizer()
    save_tokenizer(tmp / "tokenizer", tok)  # the trainer copies it into its checkpoint
    out = {}
    for n in (8, 80):  # 24 and 240 clips: the second 10x the first
        out[n] = tmp / f"noise{n}.zarr"
        tokenize_sources([NoiseSource(n)], tok, out[n], tokenizer_path=str(tmp / "tokenizer"), progress=False, shards_per_source=4,
                         workers=0, chunk_clips=CHUNK)
    return out


MCFG = model_preset("tiny", codebook_size=64, tokens_per_frame=(SIZE // 8) ** 2, max_seq_len=2 + CLIP * 16)


def test_windowed_batches_read_few_chunks_and_only_training_clips(stores):
    shards = TokenShards(stores[80], held_out=0.2, in_memory_bytes=0)  # shards "larger than memory": read lazily
    train = set(shards.in_split("noise", 0, 240).tolist())
    held = set(shards.in_split("noise", 0, 240, "held_out").tolist())
    assert held and not train & held
    ranks = [Batches(shards, {}, MCFG, seed=0, window_chunks=WINDOW, world=2, samples_per_step=4) for _ in range(2)]
    chunk_bytes = CHUNK * CLIP * 16 * 2  # uint16 tokens
    used = set()
    for step in range(60):
        for rank, b in enumerate(ranks):  # one reader per rank, as in training
            for _, _, numbers in b.draw(step, 0, rank, 4):
                assert set(numbers.tolist()) <= train
                used |= set(numbers.tolist())
            x, y = b.batch(step, 0, rank, 4)
            assert x.shape == (4, 1 + CLIP * 16)
            assert b.cached_bytes() <= WINDOW * chunk_bytes  # one window of one source is cached
    # 240 clips drawn per rank: under 2 clips read per clip drawn (a uniform draw reads its whole chunk: CHUNK)
    assert all(b.chunk_reads * CHUNK < 2 * 240 for b in ranks), [b.chunk_reads for b in ranks]
    assert len(used) > 0.8 * len(train)  # the windows move over the whole source
    b = ranks[1]

    # A pure function of (seed, step, micro, rank): a fresh reader at step 37 gives what the sequential one gave.
    x, y = b.batch(37, 0, 1, 4)
    fresh = Batches(TokenShards(stores[80], held_out=0.2, in_memory_bytes=0), {}, MCFG, seed=0,
                    window_chunks=WINDOW, world=2, samples_per_step=4)
    x2, y2 = fresh.batch(37, 0, 1, 4)
    assert (x == x2).all() and (y == y2).all()
    assert [n.tolist() for *_, n in b.draw(5, 0, 0, 4)] != [n.tolist() for *_, n in b.draw(5, 0, 1, 4)]


def _peak_bytes(path) -> int:
    shards = TokenShards(path, held_out=0.2, in_memory_bytes=0)
    b = Batches(shards, {}, MCFG, seed=0, window_chunks=WINDOW, samples_per_step=4)
    b.batch(0, 0, 0, 4)  # zarr's codecs and caches warm
    tracemalloc.start()
    for step in range(1, 30):
        b.batch(step, 0, 0, 4)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_stays_flat_as_the_shards_grow_tenfold(stores):
    small, big = _peak_bytes(stores[8]), _peak_bytes(stores[80])
    assert big < 1.5 * small + 64_000, (small, big)


def test_the_trainer_trains_with_windows(stores, tmp_path):
    cfg = TrainConfig(steps=3, batch_size=2, warmup_steps=1, eval_every=3, ckpt_every=3, log_every=3,
                      peak_tflops=1.0, progress=False, tensorboard=False, held_out=0.2, shuffle_window=WINDOW)
    res = pretrain(stores[8], {"preset": "tiny", "d_model": 16, "n_heads": 2, "n_layers": 1, "ffn_hidden": 32}, cfg,
                   tmp_path / "run")
    assert np.isfinite(res["final_loss"]) and np.isfinite(res["held_out_loss"])
    with pytest.raises(ValueError, match="shuffle_window"):
        Batches(TokenShards(stores[8]), {}, MCFG, seed=0, window_chunks=-1)
