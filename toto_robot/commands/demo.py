"""toto-demo: the whole pipeline on a small default, stage by stage, with a report directory at the end.

collect scripted Lift demonstrations (agent-view and wrist cameras) -> train the tokenizer on their
frames -> pretrain a tiny Toto on the demonstration videos -> train a behavior-cloning policy on the
frozen encoder (and optional baselines) -> evaluate in simulation -> report (summary.md with the
success table, loss curves, tokenizer reconstructions, rollout videos). Finished stages are reused when
the demo runs again with the same settings.
"""

from __future__ import annotations

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
from pretrain.loops import train_lm, train_tokenizer
from toto_robot.checkpoint import load_state_dict, save_tokenizer
from toto_robot.commands.bc_protocol import bc_record, train_and_test
from toto_robot.commands.entry import entry_point
from toto_robot.config import CONFIG_DIR, model_config, tokenizer_config
from toto_robot.encoder import StreamingEncoder, TotoEncoder, save_toto
from toto_robot.image_metrics import psnr_uint8
from toto_robot.model import Transformer, clip_to_sequence
from toto_robot.report import markdown_table, save_curves, save_reconstructions
from toto_robot.results import run_context, write_record
from toto_robot.stages import finished, mark_finished
from toto_robot.store import TrajectoryStore
from toto_robot.tokenizer import Tokenizer


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


def run_demo(cfg: DictConfig) -> Path:
    context = run_context()  # the commit and load as the run starts
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    settings = OmegaConf.to_container(cfg, resolve=True)
    pick = lambda *keys: {k: settings[k] for k in ("seed", *keys)}
    cams = [f"{c}_image" for c in cfg.collect.cameras]
    env_cfg = EnvConfig(task=cfg.collect.task, cameras=tuple(cfg.collect.cameras), image_size=cfg.collect.image_size,
                        horizon=cfg.collect.horizon)
    store_path = out / "collect" / f"{cfg.collect.task}.zarr"

    def collect_stage(d: Path) -> dict:
        store = collect(store_path, make_expert(cfg.collect.task), env_cfg, cfg.collect.n_episodes,
                        n_workers=cfg.collect.n_workers)
        return {"episodes": store.n_episodes, "steps": store.n_steps}

    col = _stage(out, "collect", pick("collect"), collect_stage)
    source = ZarrSource("demonstrations", store_path, keys=cams, size=cfg.collect.image_size,
                        clip_frames=cfg.pretrain.clip_frames, stride=cfg.pretrain.frame_stride)
    clips = np.stack([clip for item in source.items() for clip in source.clips(item)])  # (N, F, H, W, 3)
    n_held = max(1, len(clips) // 10)
    train_clips, held_out = clips[:-n_held], clips[-n_held:]
    tok_cfg = tokenizer_config(OmegaConf.to_container(cfg.tokenizer))
    if tok_cfg.image_size != cfg.collect.image_size:
        raise ValueError(f"tokenizer.image_size {tok_cfg.image_size} must equal collect.image_size {cfg.collect.image_size}")
    model_cfg = model_config(OmegaConf.to_container(cfg.model), tok_cfg, cfg.pretrain.clip_frames)

    def tokenizer_stage(d: Path) -> dict:
        tok = Tokenizer(tok_cfg)
        hist = train_tokenizer(tok, train_clips, **cfg.tokenizer_train, seed=cfg.seed)
        save_tokenizer(d / "checkpoint", tok)
        recon = tok.reconstruct(held_out[:, :1]).numpy()
        psnr = psnr_uint8(recon, held_out[:, :1])
        save_reconstructions(out / "tokenizer_reconstructions.png", held_out[:8, 0], recon[:8, 0],
                             f"held-out frames, PSNR {psnr:.1f} dB")
        ids = tok.encode(held_out)
        return {"psnr_held_out": psnr, "codebook_usage_held_out": torch.unique(ids).numel() / tok.vocab_size,
                "psnr_curve": [h["psnr"] for h in hist]}

    tok_res = _stage(out, "tokenizer", pick("collect", "tokenizer", "tokenizer_train"), tokenizer_stage)

    def pretrain_stage(d: Path) -> dict:
        tok = Tokenizer(tok_cfg)
        tok.load_state_dict(load_state_dict(out / "tokenizer" / "checkpoint", "tokenizer"))
        tok.eval()
        model = Transformer(model_cfg)
        train_kw = {k: v for k, v in cfg.pretrain.items() if k in ("steps", "batch_size", "lr")}
        hist = train_lm(model, tok.encode(train_clips), **train_kw, seed=cfg.seed)
        with torch.no_grad():
            seq = clip_to_sequence(tok.encode(held_out), model.cfg)
            _, held = model(seq[:, :-1], seq[:, 1:])
        save_toto(d / "checkpoint", tok, model, extra={"corpus": f"demonstrations:{cfg.collect.task}"})
        return {"loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"], "held_out_loss": held.item(),
                "params": model.num_params(), "clips": len(train_clips), "loss_curve": [h["loss"] for h in hist]}

    lm_res = _stage(out, "pretrain", pick("collect", "tokenizer", "tokenizer_train", "model", "pretrain"),
                    pretrain_stage)
    ckpt = out / "pretrain" / "checkpoint"
    enc_res = encode_check(ckpt, held_out[:2], cfg.policy.encoder_window)

    policies = [cfg.policy] + [OmegaConf.load(Path(CONFIG_DIR) / "policy" / f"{b}.yaml") for b in cfg.baselines]
    bc_results = []
    for node in policies:
        node = OmegaConf.to_container(node, resolve=True)

        def bc_stage(d: Path, node=node) -> dict:
            low_dim = {k: shape[0] for k, (shape, _) in TrajectoryStore.open(store_path).schema.items() if len(shape) == 1}
            policy = build_policy(node | {"seed": cfg.seed}, ckpt, tuple(cams), cfg.collect.image_size, low_dim)
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
        {"stage": "tokenizer", "metric": "held-out PSNR (dB)", "value": tok["psnr_held_out"]},
        {"stage": "tokenizer", "metric": "held-out codebook usage", "value": tok["codebook_usage_held_out"]},
        {"stage": "pretrain", "metric": "clips / parameters", "value": f"{lm['clips']} / {lm['params']}"},
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
