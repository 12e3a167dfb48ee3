"""configs/data/ego4d.yaml on a generated folder in Ego4D's download layout (toto_robot.synthetic.ego4d_folder):
the manifest selects the videos, the config composes at the paper's sampling, and the README's chain runs
end to end at tiny sizes: tokenizer, tokens, pretraining, the 256 px recipe (here 2x a 32 px base), the
pretrained and the fine-tuned encoder on frames, and the pretrained one in a behavior-cloning policy. Commands run in-process through their `main`, as the console
scripts do; about 25 s on one thread."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from pretrain.data import SkipLog, VideoSource, build_sources, item_clips, read_manifest
from pretrain.shards import TokenShards
from toto_robot.checkpoint import load_toto
from toto_robot.config import CONFIG_DIR
from toto_robot.encoder import TotoEncoder
from toto_robot.synthetic import ego4d_folder

BASE = 32  # the test's pretraining resolution (4x4 tokens a frame); the config's is 128
FINE = 2 * BASE  # the fine-tune at twice the base resolution, as 256 is twice 128
CODES = 32
FRAMES = 128  # 2 clips a video at 16 frames, one in 4 (a clip spans 64 source frames)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return ego4d_folder(tmp_path_factory.mktemp("ego4d_data"), n_videos=3, frames=FRAMES)


def _overrides(folder) -> list[str]:
    return ["data=ego4d", f"data.sources.ego4d.root={folder['root']}",
            f"data.sources.ego4d.manifest={folder['manifest']}"]


def test_the_folder_has_ego4ds_download_layout(folder):
    root, manifest = folder["root"], folder["manifest"]
    assert root.parts[-2:] == ("v2", "full_scale") and manifest == root.parent / "ego4d.json"
    on_disk = sorted(p.stem for p in root.glob("*.mp4"))
    assert on_disk == sorted([*folder["listed"], folder["unlisted"]])
    meta = json.loads(manifest.read_text())
    assert [v["video_uid"] for v in meta["videos"]] == folder["listed"]
    assert len(meta["clips"]) == 3 and not (root.parent / "clips").exists()  # clips listed, not downloaded


def test_config_composes_at_the_papers_sampling_and_reads_only_listed_videos(folder):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfgs = {name: compose(f"pretrain/{name}", overrides=_overrides(folder))
                for name in ("train_tokenizer", "tokenize", "pretrain", "finetune_256")}
    for cfg in cfgs.values():
        assert (cfg.data.resolution, cfg.data.clip_frames, cfg.data.frame_stride) == (128, 16, 4)
        assert list(cfg.data.sources) == ["ego4d"] and cfg.data.sources.ego4d.manifest == str(folder["manifest"])
    cfg = cfgs["tokenize"]
    [source] = build_sources(cfg.data)
    assert source.name == "ego4d" and isinstance(source, VideoSource)
    # ego4d.json has `videos` and `clips`; `videos` (video_uid -> <root>/<video_uid>.mp4) is what is read
    assert source.items() == [str(folder["root"] / f"{u}.mp4") for u in folder["listed"]]
    clips = list(source.clips(source.items()[0]))
    assert len(clips) == FRAMES // 64 and clips[0].shape == (16, 128, 128, 3) and clips[0].dtype == np.uint8


def test_clips_layout_manifest_and_a_listed_video_missing(folder, tmp_path):
    # The clips download: a CSV listing clip_uid resolves under v2/clips.
    csv = tmp_path / "clips.csv"
    csv.write_text("clip_uid,video_uid\nc1,v1\nc2,v2\n")
    assert read_manifest(csv, "/d/v2/clips") == ["/d/v2/clips/c1.mp4", "/d/v2/clips/c2.mp4"]
    # ego4d.json lists every video; one not downloaded is skipped and counted, not fatal.
    meta = json.loads(folder["manifest"].read_text())
    meta["videos"].append({"video_uid": "not-downloaded"})
    partial = tmp_path / "ego4d.json"
    partial.write_text(json.dumps(meta))
    src = VideoSource("ego4d", folder["root"], partial, size=BASE, clip_frames=16, stride=4)
    skips = SkipLog()
    assert list(item_clips(src, src.items()[-1], skips, strict=False)) == []
    assert skips.counts() == {"ego4d": 1}


def _main(module: str, argv: list[str]) -> str:
    """toto_robot.commands.<module>.main() with `argv` as its command line; returns what it printed."""
    main = importlib.import_module(f"toto_robot.commands.{module}").main
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr("sys.argv", [f"toto-{module}", *argv])
        main()
    return printed.getvalue()


def _losses(run_dir) -> list[float]:
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def chain(folder, tmp_path_factory):
    """The README's commands on the generated folder: tokenizer, tokens, pretraining, tokens at 2x the
    resolution, the finetune_256 recipe from the pretrained checkpoint. Returns what each printed."""
    work = tmp_path_factory.mktemp("work")
    common = [*_overrides(folder), f"work_dir={work}", f"data.resolution={BASE}"]
    run = ["train.batch_size=2", "train.peak_tflops=1", "train.progress=false", "train.tensorboard=false",
           "train.log_every=1", "train.eval_clips=2"]
    out = {"work": work}
    out["train_tokenizer"] = _main("train_tokenizer", [
        *common, "tokenizer_train.steps=4", "tokenizer_train.batch_size=8", "tokenizer_train.log_every=2",
        "tokenizer_train.progress=false", "+tokenizer.channels=8", f"tokenizer.codebook_size={CODES}"])
    out["tokenize"] = _main("tokenize", [*common, "workers=0", "progress=false"])
    out["pretrain"] = _main("pretrain", [*common, *run, "train.steps=8", "train.warmup_steps=2", "train.eval_every=4"])
    # The 256 px recipe at the test's sizes: tokens at 2x the resolution with the same tokenizer, then
    # configs/pretrain/finetune_256.yaml from the base checkpoint (its shards: work_dir/tokens256.zarr).
    out["tokenize256"] = _main("tokenize", [*common, "workers=0", "progress=false", f"data.resolution={FINE}",
                                            f"shards={work / 'tokens256.zarr'}"])
    out["finetune"] = _main("pretrain", [
        "--config-name", "pretrain/finetune_256", *common, *run, f"train.init_from={work / 'run' / 'checkpoint'}",
        "train.steps=3", "train.warmup_steps=1", "train.eval_every=3"])
    return out


N_CLIPS = 3 * (FRAMES // 64)  # 3 listed videos


def test_tokenizer_and_tokens_of_the_listed_videos(chain, folder):
    work = chain["work"]
    assert f"checkpoint: {work / 'tokenizer' / 'checkpoint'}" in chain["train_tokenizer"]
    for key, size in (("tokenize", BASE), ("tokenize256", FINE)):
        assert f"ego4d: {N_CLIPS} clips, {N_CLIPS * 16 * (size // 8) ** 2:,} tokens, 0 of 3 items skipped" in chain[key]
    for name, size in (("tokens.zarr", BASE), ("tokens256.zarr", FINE)):
        index = json.loads((work / name / "index.json").read_text())
        assert sorted(index["ego4d"]["item_keys"]) == sorted(f"{u}.mp4" for u in folder["listed"])  # not the unlisted
        shards = TokenShards(work / name, held_out=0.1)
        train, held = shards.n_clips("ego4d", "train"), shards.n_clips("ego4d", "held_out")
        assert train + held == N_CLIPS and train > 0 and held > 0  # whole videos on each side of the split
        assert (shards.clip_frames, shards.grid) == (16, size // 8)


def test_pretraining_then_the_256px_recipe_from_its_checkpoint(chain):
    work = chain["work"]
    assert f"checkpoint: {work / 'run' / 'checkpoint'}" in chain["pretrain"]
    base = _losses(work / "run")
    assert len(base) == 8 and all(math.isfinite(x) for x in base) and np.mean(base[-2:]) < base[0]
    assert math.isfinite(json.loads((work / "run" / "results.json").read_text())["held_out_loss"])
    ckpt = work / "run256" / "checkpoint"
    assert f"checkpoint: {ckpt}" in chain["finetune"]
    _tok, model, config = load_toto(ckpt)
    assert model.cfg.rope_base == 50_000 and model.cfg.tokens_per_frame == (FINE // 8) ** 2
    assert model.cfg.max_frames == 16 and config["train"]["step"] == 3
    fine = _losses(work / "run256")
    assert len(fine) == 3 and all(math.isfinite(x) for x in fine)
    assert fine[0] < base[0]  # it starts from the pretrained weights, not from scratch


def _clip(folder, size: int) -> np.ndarray:
    """The first clip of the first listed video at `size` px, through the pretraining preprocessing."""
    [source] = build_sources({"resolution": size, "clip_frames": 16, "frame_stride": 4, "sources": {
        "ego4d": {"kind": "videos", "root": str(folder["root"]), "manifest": str(folder["manifest"])}}})
    return next(source.clips(source.items()[0]))  # (16, size, size, 3) uint8


def _check_encoder(ckpt, folder, size: int) -> None:
    encoder = TotoEncoder.from_pretrained(ckpt)
    assert encoder.image_size == size
    res = encoder(torch.from_numpy(_clip(folder, size)[None, :4]))
    assert res.tokens.shape == (1, 4, size // 8, size // 8)
    assert res.features.shape == (1, 4, (size // 8) ** 2, encoder.dim) and res.pooled.shape == (1, encoder.dim)
    assert torch.isfinite(res.features).all()


def _demo_store(path, size: int, n_episodes: int = 2, steps: int = 8):
    """Demonstrations at `size` px whose actions are a fixed function of proprio (tests/policies/test_bc.py)."""
    from tests.policies.test_bc import CAMS, PROPRIO
    from toto_robot.store import TrajectoryStore
    from toto_robot.synthetic import moving_squares

    rng = np.random.default_rng(0)
    schema = {c: ((size, size, 3), "uint8") for c in CAMS} | {k: ((d,), "float32") for k, d in PROPRIO.items()}
    store = TrajectoryStore.create(path, schema | {"action": ((7,), "float32")}, {"fps": 20})
    for e in range(n_episodes):
        data = {c: moving_squares(1, steps, size=size, seed=e)[0] for c in CAMS}
        data |= {k: rng.normal(size=(steps, d)).astype(np.float32) for k, d in PROPRIO.items()}
        data["action"] = np.tanh(np.concatenate([data["robot0_eef_pos"], data["robot0_eef_quat"]], 1))
        store.add_episode(data, {"task": "synthetic", "seed": e, "success": True, "source": "test"})
    store.compute_stats()
    return path


def test_the_pretrained_encoder_on_frames_and_in_a_policy(chain, folder, tmp_path):
    from policies.bc import build_policy
    from policies.train import TrainConfig, train_bc
    from tests.policies.test_bc import CAMS

    ckpt = chain["work"] / "run" / "checkpoint"
    _check_encoder(ckpt, folder, BASE)
    # The trainer toto-train-bc runs (without its robosuite rollouts), on demonstrations at the encoder's size.
    store = _demo_store(tmp_path / "demos.zarr", BASE)
    policy = build_policy({"backbone": "toto", "head": "mlp", "chunk": 4, "n_action_steps": 2, "hidden": 32,
                           "encoder_window": 2}, ckpt, CAMS, BASE)
    frozen = {k: v.clone() for k, v in policy.encoder.state_dict().items()}
    train_bc(policy, store, TrainConfig(steps=3, batch_size=4, warmup=1, eval_every=3, log_every=1, val_ratio=0.5),
             tmp_path / "bc", progress=False)
    history = json.loads((tmp_path / "bc" / "history.json").read_text())
    assert len(history["train"]) == 3 and all(math.isfinite(r["loss"]) for r in history["train"])
    assert all(torch.equal(frozen[k], v) for k, v in policy.encoder.state_dict().items())  # the encoder stays frozen
    assert (tmp_path / "bc" / "best" / "config.json").is_file()


def test_the_finetuned_encoder_on_frames(chain, folder):
    _check_encoder(chain["work"] / "run256" / "checkpoint", folder, FINE)
