"""toto-demo: the whole pipeline on a small default, stage by stage, with a report directory at the end.

collect scripted Lift demonstrations (agent-view and wrist cameras) -> train the tokenizer on their
frames -> tokenize their camera videos into token shards -> pretrain a tiny Toto on the shards -> train a
behavior-cloning policy on the frozen encoder (and optional baselines) -> evaluate in simulation -> report
(summary.md with the success table, loss curves, tokenizer reconstructions, rollout videos). The
tokenizer, tokenize and pretrain stages call the functions `toto-train-tokenizer`, `toto-tokenize` and
`toto-pretrain` run, so the demo writes the same checkpoints. Finished stages are reused when the demo
runs again with the same settings.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from envs.collect import collect
from envs.experts import make_expert
from envs.robosuite_env import EnvConfig
from policies.bc import build_policy
from policies.train import TrainConfig
from pretrain.data import ZarrSource
from pretrain.shards import TokenShards, load_tokenizer, tokenize_sources
from pretrain.tokenizer_training import train_tokenizer
from pretrain.trainer import CHECKPOINT, pretrain
from pretrain.trainer import TrainConfig as PretrainConfig
from toto_robot.commands.bc_protocol import bc_record, low_dim_sizes, train_and_test
from toto_robot.commands.entry import entry_point
from toto_robot.config import CONFIG_DIR, model_config, tokenizer_config
from toto_robot.encoder import StreamingEncoder, TotoEncoder
from toto_robot.metrics_log import read_metrics
from toto_robot.report import markdown_table, save_curves
from toto_robot.results import run_context, write_record
from toto_robot.stages import finished, mark_finished

CLIP_KEYS = ("clip_frames", "frame_stride")  # pretrain.* keys that shape the clips, not the trainer


def _stage(out: Path, name: str, settings: dict, run) -> dict:
    stage_dir = out / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    done = finished(stage_dir, settings)
    if done is not None:
        print(f"[{name}] reusing finished stage in {stage_dir}")
        return done
    print(f"[{name}] running", flush=True)
    t0 = time.time()
    results = run(stage_dir)
    results["seconds"] = time.time() - t0
    return mark_finished(stage_dir, settings, results)


def pretrain_config(cfg: DictConfig) -> PretrainConfig:
    """The trainer's config from the demo's `pretrain` node. A redone stage starts afresh (resume=False):
    its settings changed, or its tokenizer was retrained."""
    node = OmegaConf.to_container(cfg.pretrain, resolve=True)
    return PretrainConfig(**{k: v for k, v in node.items() if k not in CLIP_KEYS}, seed=cfg.seed, resume=False)


def run_demo(cfg: DictConfig) -> Path:
    context = run_context()  # the commit and load as the run starts
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    settings = OmegaConf.to_container(cfg, resolve=True)
    pick = lambda *keys: {k: settings[k] for k in ("seed", *keys)}
    clip_settings = {k: settings["pretrain"][k] for k in CLIP_KEYS}
    cams = [f"{c}_image" for c in cfg.collect.cameras]
    env_cfg = EnvConfig(task=cfg.collect.task, cameras=tuple(cfg.collect.cameras), image_size=cfg.collect.image_size,
                        horizon=cfg.collect.horizon)
    store_path = out / "collect" / f"{cfg.collect.task}.zarr"
    tok_cfg = tokenizer_config(OmegaConf.to_container(cfg.tokenizer))
    if tok_cfg.image_size != cfg.collect.image_size:
        raise ValueError(f"tokenizer.image_size {tok_cfg.image_size} must equal collect.image_size {cfg.collect.image_size}")
    model_config(settings["model"], tok_cfg, cfg.pretrain.clip_frames)  # a bad override fails before collecting
    train_cfg = pretrain_config(cfg)

    def collect_stage(d: Path) -> dict:
        store = collect(store_path, make_expert(cfg.collect.task), env_cfg, cfg.collect.n_episodes,
                        n_workers=cfg.collect.n_workers)
        return {"episodes": store.n_episodes, "steps": store.n_steps}

    col = _stage(out, "collect", pick("collect"), collect_stage)
    source = ZarrSource(f"demonstrations:{cfg.collect.task}", store_path, keys=cams, size=cfg.collect.image_size,
                        clip_frames=cfg.pretrain.clip_frames, stride=cfg.pretrain.frame_stride)
    tok_ckpt = (out / "tokenizer" / "checkpoint").resolve()
    shards_path = out / "tokenize" / "tokens.zarr"

    def tokenizer_stage(d: Path) -> dict:  # toto-train-tokenizer
        res = train_tokenizer([source], tok_cfg, d, seed=cfg.seed, **OmegaConf.to_container(cfg.tokenizer_train))
        shutil.copy(d / "reconstructions.png", out / "tokenizer_reconstructions.png")
        return {"psnr_check": res["psnr_check"], "codebook_usage_check": res["codebook_usage_check"],
                "psnr_curve": [r["psnr"] for r in read_metrics(d)]}

    tok_settings = pick("collect", "tokenizer", "tokenizer_train") | {"clips": clip_settings}
    tok_res = _stage(out, "tokenizer", tok_settings, tokenizer_stage)

    def tokenize_stage(d: Path) -> dict:  # toto-tokenize
        shutil.rmtree(shards_path, ignore_errors=True)  # tokens of an earlier tokenizer must not be resumed
        summary = tokenize_sources([source], load_tokenizer(tok_ckpt), shards_path, tokenizer_path=str(tok_ckpt))
        return summary[source.name]

    _stage(out, "tokenize", tok_settings, tokenize_stage)

    def pretrain_stage(d: Path) -> dict:  # toto-pretrain
        res = pretrain(shards_path, settings["model"], train_cfg, d)
        losses = [r["loss"] for r in read_metrics(d)]
        shards = TokenShards(shards_path, held_out=train_cfg.held_out)
        return {"loss_first": losses[0], "loss_last": losses[-1], "held_out_loss": res["held_out_loss"],
                "params": res["params"], "clips": shards.n_clips(source.name),
                "clips_held_out": shards.n_clips(source.name, "held_out"), "loss_curve": losses}

    lm_res = _stage(out, "pretrain", pick("collect", "tokenizer", "tokenizer_train", "model", "pretrain"),
                    pretrain_stage)
    ckpt = out / "pretrain" / CHECKPOINT
    last_clips = (c for item in reversed(source.items()) for c in source.clips(item))
    enc_res = encode_check(ckpt, np.stack(list(itertools.islice(last_clips, 2))), cfg.policy.encoder_window)

    policies = [cfg.policy] + [OmegaConf.load(Path(CONFIG_DIR) / "policy" / f"{b}.yaml") for b in cfg.baselines]
    bc_results = []
    for node in policies:
        node = OmegaConf.to_container(node, resolve=True)

        def bc_stage(d: Path, node=node) -> dict:
            policy = build_policy(node | {"seed": cfg.seed}, ckpt, tuple(cams), cfg.collect.image_size,
                                  low_dim_sizes(store_path))
            train = TrainConfig(**cfg.bc, seed=cfg.seed)
            res = train_and_test(policy, store_path, train, d, env_cfg, node["name"], n_test=cfg.eval.n_episodes,
                                 n_select=cfg.eval.n_select, n_workers=cfg.eval.n_workers, n_videos=cfg.eval.n_videos)
            test = res["test"]
            if cfg.results_dir:
                record = bc_record(policy, store_path, train, res, node["name"])
                write_record(Path(cfg.results_dir) / f"{cfg.collect.task}-{node['name']}-seed{cfg.seed}.json", record,
                             context)
            return {"policy": node["name"], "success_rate": test["success_rate"], "success_ci95": test["success_ci95"],
                    "episodes": test["n_episodes"], "mean_length": test["mean_length"], "best_step": res["best_step"],
                    "videos": sorted(str(p) for p in (d / "test" / "videos").glob("*.mp4")),
                    "loss_curve": [h["loss"] for h in res["history"]["train"]], "checkpoint": str(d / "best")}

        bc_results.append(_stage(out, f"bc_{node['name']}", pick("collect", "tokenizer", "tokenizer_train", "model",
                                                                 "pretrain", "bc", "eval") | {"policy": node}, bc_stage))

    curves = {"tokenizer PSNR (train batches)": (tok_res["psnr_curve"], "dB"),
              "next-token loss": (lm_res["loss_curve"], "cross-entropy")}
    for r in bc_results:
        curves[f"BC loss ({r['policy']})"] = (r["loss_curve"], "L1 (normalized actions)")
    save_curves(out / "losses.png", curves)
    videos = out / "videos"
    videos.mkdir(exist_ok=True)
    for r in bc_results:
        for v in r["videos"]:
            shutil.copy(v, videos / f"{r['policy']}_{Path(v).name}")
    write_summary(out, cfg, col, tok_res, lm_res, enc_res, bc_results)
    return out


def encode_check(ckpt: Path, clips: np.ndarray, window: int) -> dict:
    """The frozen encoder on whole clips, then the streaming encoder frame by frame, timed."""
    enc = TotoEncoder.from_pretrained(ckpt)
    full = enc(clips)
    stream = StreamingEncoder(enc, window=window)
    frames = torch.from_numpy(clips)
    diffs, times = [], []
    for t in range(frames.shape[1]):
        t0 = time.perf_counter()
        step = stream.step(frames[:, t])
        times.append(time.perf_counter() - t0)
        if t < window:  # before the window slides the two must agree
            diffs.append((step.features[:, 0] - full.features[:, t]).abs().max().item())
    return {"layer": enc.layer, "of_layers": enc.cfg.n_layers, "features_shape": list(full.features.shape),
            "stream_vs_full_max_abs_diff": max(diffs), "stream_ms_per_step": 1000 * float(np.median(times[1:])),
            "window": window}


def write_summary(out: Path, cfg: DictConfig, col: dict, tok: dict, lm: dict, enc: dict, bc: list[dict]) -> None:
    success = [{"policy": r["policy"], "success": f"{r['success_rate']:.0%}",
                "95% CI": "{:.0%}-{:.0%}".format(*r["success_ci95"]), "episodes": r["episodes"],
                "mean length": r["mean_length"]} for r in bc]
    rows = [
        {"stage": "collect", "metric": "expert demonstrations (steps)", "value": f"{col['episodes']} ({col['steps']})"},
        {"stage": "tokenizer", "metric": "PSNR (dB), buffered training frames", "value": tok["psnr_check"]},
        {"stage": "tokenizer", "metric": "codebook usage, buffered training frames", "value": tok["codebook_usage_check"]},
        {"stage": "pretrain", "metric": "clips (train / held out) / parameters",
         "value": f"{lm['clips']} / {lm['clips_held_out']} / {lm['params']}"},
        {"stage": "pretrain", "metric": "first / last train loss", "value": f"{lm['loss_first']:.3f} / {lm['loss_last']:.3f}"},
        {"stage": "pretrain", "metric": "held-out loss", "value": lm["held_out_loss"]},
        {"stage": "encoder", "metric": "read-out layer", "value": f"{enc['layer']} of {enc['of_layers']}"},
        {"stage": "streaming", "metric": "max abs diff vs full forward", "value": enc["stream_vs_full_max_abs_diff"]},
        {"stage": "streaming", "metric": f"ms per step (window {enc['window']})", "value": enc["stream_ms_per_step"]},
    ]
    videos = sorted(p.name for p in (out / "videos").glob("*.mp4"))
    text = "\n".join([
        f"# toto-demo report: {cfg.collect.task}", "",
        (f"Behavior cloning from {col['episodes']} scripted demonstrations, tested on {cfg.eval.n_episodes} "
        f"held-out seeds (100000..); {cfg.bc.steps} training steps per policy."), "",
        markdown_table(success), "", "## Stages", "", markdown_table(rows), "",
        "![reconstructions](tokenizer_reconstructions.png)", "", "![losses](losses.png)", "",
        "Rollout videos: " + ", ".join(f"[{v}](videos/{v})" for v in videos), "",
    ])
    (out / "summary.md").write_text(text)
    strip = lambda d: {k: v for k, v in d.items() if not k.endswith("curve")}
    metrics = {"collect": col, "tokenizer": strip(tok), "pretrain": strip(lm), "encoder": enc,
               "policies": [strip(r) for r in bc]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def run(cfg: DictConfig) -> None:
    t0 = time.time()
    out = run_demo(cfg)
    print(f"toto-demo finished in {time.time() - t0:.0f} s; report: {out.resolve() / 'summary.md'}")


main = entry_point("demo", "demo", run)


if __name__ == "__main__":
    main()
