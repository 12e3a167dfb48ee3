"""Tokenization across ranks and resharded resumes, and DDP tokenizer training, on 2 gloo ranks.

One torchrun launch (`dist_worker.py`) does the 2-rank work; the 1-process references and the 2 -> 1
resume run here."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr

from pretrain.data import VideoSource
from pretrain.shards import INDEX_FILE, TokenShards, load_tokenizer, save_tokenizer, tokenize_sources
from tests.pretrain.helpers import CLIP, REPO, SIZE, STRIDE, square_videos, tiny_tokenizer

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SHARDS = 3  # 6 items (5 videos and a broken file): shards of 2 items; rank 0 writes shards 0 and 2, rank 1 shard 1


def _store(path) -> dict:
    """Everything a store holds that the reader uses: its index and every shard's rows."""
    root = zarr.open_group(path, mode="r")
    index = json.loads((path / INDEX_FILE).read_text())
    return {"index": index, **{s: root["videos"][f"{s:05d}"][:] for s in range(len(index["videos"]["shards"]))}}


def _assert_same(a, b):
    sa, sb = _store(a), _store(b)
    assert sa["index"] == sb["index"]
    for k in sa.keys() - {"index"}:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=f"shard {k}")


def _half_written(path, shard: int, keep_items: int):
    """What a killed writer leaves: no index; `shard` committed up to `keep_items` items, rows past the commit."""
    (path / INDEX_FILE).unlink()
    progress = path / "progress" / "videos" / f"{shard:05d}.json"
    state = json.loads(progress.read_text())
    assert not state["skipped"]  # (a shard without the broken file)
    n = sum(state["item_clips"][:keep_items])
    state.update(done=keep_items, n_clips=n, item_clips=state["item_clips"][:keep_items], complete=False)
    progress.write_text(json.dumps(state))
    ids = zarr.open_group(path, mode="a")["videos"][f"{shard:05d}"]
    ids.resize((n + 2, *ids.shape[1:]))
    ids[n:] = 5


@pytest.mark.slow
def test_two_ranks_tokenize_like_one_process_and_resume_with_any_number_of_ranks(tmp_path):
    videos = square_videos(tmp_path / "videos", n=5, frames=24, size=48)
    (videos / "broken.webm").write_bytes(b"\x1a\x45\xdf\xa3 not really webm")
    save_tokenizer(tmp_path / "tokenizer", tiny_tokenizer())
    tok = load_tokenizer(tmp_path / "tokenizer")
    src = VideoSource("videos", videos, size=SIZE, clip_frames=CLIP, stride=STRIDE)
    common = {"tokenizer_path": str(tmp_path / "tokenizer"), "progress": False, "shards_per_source": SHARDS,
              "workers": 0}
    one = {k: v for k, v in tokenize_sources([src], tok, tmp_path / "one.zarr", **common)["videos"].items()
           if not k.startswith("rank_")}
    assert (one["items"], one["skipped"], one["clips"]) == (6, 1, 15)
    shutil.copytree(tmp_path / "one.zarr", tmp_path / "resumed.zarr")
    _half_written(tmp_path / "resumed.zarr", shard=1, keep_items=1)  # 1 process stopped; 2 ranks resume

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "tests/pretrain/dist_worker.py",
                           str(tmp_path)], check=False, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**ENV, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    # Tokenization: the same shards and index as one process; each rank reports its share, the shares add up.
    _assert_same(tmp_path / "one.zarr", tmp_path / "two.zarr")
    _assert_same(tmp_path / "one.zarr", tmp_path / "resumed.zarr")
    for r in ranks:
        assert {k: r["fresh"][k] for k in one} == one
    assert [r["fresh"]["rank_shards"] for r in ranks] == [2, 1] and [r["fresh"]["rank_items"] for r in ranks] == [4, 2]
    assert sum(r["fresh"]["rank_clips"] for r in ranks) == one["clips"]
    assert "rank 0 of 2: source videos: shards [0, 2] (2 of 3), 4 of 6 items" in proc.stdout
    assert "rank 1 of 2: source videos: shards [1] (1 of 3), 2 of 6 items" in proc.stdout
    a, b = TokenShards(tmp_path / "one.zarr", held_out=0.3), TokenShards(tmp_path / "two.zarr", held_out=0.3)
    assert a.ranges["videos"]["held_out"][0].tolist() == b.ranges["videos"]["held_out"][0].tolist()  # same split

    # 2 ranks stopped (rank 1's shard half written): one process finishes it.
    shutil.copytree(tmp_path / "two.zarr", tmp_path / "two_then_one.zarr")
    _half_written(tmp_path / "two_then_one.zarr", shard=1, keep_items=1)
    tokenize_sources([src], tok, tmp_path / "two_then_one.zarr", **common)
    _assert_same(tmp_path / "one.zarr", tmp_path / "two_then_one.zarr")

    # DDP tokenizer training: one codebook from the first step on, the same weights on both ranks.
    for r in ranks:
        assert r["vq_same_codebook"] and r["ddp_same_codebook"] and r["ddp_same_weights"]
        assert r["ddp_world_size"] == 2 and r["ddp_checkpoint"]


def _progress_done(path) -> int:
    """Items committed so far over every shard's progress file (0 before the first)."""
    files = list((path / "progress" / "videos").glob("*.json")) if (path / "progress").is_dir() else []
    done = 0
    for f in files:
        try:
            done += json.loads(f.read_text())["done"]
        except (OSError, ValueError):  # replaced under us (write + rename): read it next time
            pass
    return done


@pytest.mark.slow
def test_two_ranks_killed_by_sigkill_resume_into_the_tokens_of_one_process(tmp_path):
    """toto-tokenize under torchrun, both ranks SIGKILLed while writing; one process resumes the store and gets
    the shards and index an uninterrupted single process writes.

    The killed run cannot finish first, however fast the machine: one item is a folder of frames whose first
    frame is, during that run, a named pipe nobody writes to. Rank 0 blocks opening it (shard 2's first item,
    after its shard 0) while rank 1 writes shards 1 and 3; the kill comes once 3 items are committed, wherever
    rank 1 is then, and the resume reads the real frame again."""
    import signal
    import time

    import psutil
    from PIL import Image

    from tests.pretrain.helpers import command
    from toto_robot.synthetic import moving_squares

    videos = square_videos(tmp_path / "videos", n=16, frames=48, size=48)
    (videos / "v2.mp4").unlink()  # v2 as frames: sorted after v15.mp4, the first item of shard 2
    (videos / "v2").mkdir()
    for i, frame in enumerate(moving_squares(16, 48, size=48, seed=0)[2]):
        Image.fromarray(frame).save(videos / "v2" / f"{i:03d}.png")
    save_tokenizer(tmp_path / "tokenizer", tiny_tokenizer())
    common = ["data=folder", f"data.sources.videos.root={videos}", f"tokenizer_checkpoint={tmp_path / 'tokenizer'}",
              f"data.resolution={SIZE}", f"data.clip_frames={CLIP}", f"data.frame_stride={STRIDE}",
              "shards_per_source=4", "batch_clips=1", "workers=0", "progress=false"]
    run = {**ENV, "PYTHONPATH": str(REPO)}
    one = subprocess.run(command("tokenize", *common, f"shards={tmp_path / 'one.zarr'}"), cwd=REPO, env=run,
                         capture_output=True, text=True, timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-3000:]

    blocked = videos / "v2" / "000.png"
    blocked.rename(tmp_path / "000.png")
    os.mkfifo(blocked)
    killed = tmp_path / "killed.zarr"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "toto_robot.commands.tokenize",
                             *common, f"shards={killed}"], cwd=REPO, env=run, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and _progress_done(killed) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    # torchrun starts each rank in its own session: its process group is the launcher alone. Kill the ranks
    # (mid-write) and the launcher, and wait for the ranks to be gone before the store is resumed.
    ranks = psutil.Process(proc.pid).children(recursive=True)
    assert len(ranks) >= 2, f"expected torchrun's 2 ranks, found {len(ranks)} processes"
    for p in ranks:
        p.send_signal(signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(ranks, timeout=30)
    assert not alive, f"ranks still running after SIGKILL: {alive}"
    assert proc.returncode == -signal.SIGKILL, "tokenization ended before it was killed"
    assert not (killed / INDEX_FILE).exists() and 3 <= _progress_done(killed) < 16
    blocked.unlink()
    (tmp_path / "000.png").rename(blocked)
    resumed = subprocess.run(command("tokenize", *common, f"shards={killed}"), cwd=REPO, env=run,
                             capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same(tmp_path / "one.zarr", killed)
