"""toto-demo: the main job on a small default, stage by stage, with a report directory at the end.

Stages so far: generate clips -> train the tokenizer -> pretrain a tiny Toto (next-token prediction)
-> encode held-out clips with the frozen and the streaming encoder -> report. Finished stages are
reused when the demo is run again with the same settings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pretrain.loops import train_lm, train_tokenizer
from toto_robot.checkpoint import load_state_dict, save_checkpoint
from toto_robot.config import model_config, tokenizer_config
from toto_robot.encoder import StreamingEncoder, TotoEncoder, load_toto, save_toto
from toto_robot.model import Transformer
from toto_robot.report import markdown_table, save_curves, save_reconstructions
from toto_robot.stages import finished, mark_finished
from toto_robot.synthetic import moving_squares
from toto_robot.tokenizer import Tokenizer, psnr_uint8

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")


def _stage(out: Path, name: str, settings: dict, run) -> dict:
    stage_dir = out / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    done = finished(stage_dir, settings)
    if done is not None:
        print(f"[{name}] reusing finished stage in {stage_dir}")
        return done
    print(f"[{name}] running")
    return mark_finished(stage_dir, settings, run(stage_dir))


def run_demo(cfg: DictConfig) -> Path:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tok_cfg = tokenizer_config(OmegaConf.to_container(cfg.tokenizer))
    model_cfg = model_config(OmegaConf.to_container(cfg.model), tok_cfg, cfg.data.frames)
    n_clips, n_frames, size = cfg.data.clips, cfg.data.frames, tok_cfg.image_size
    clips = moving_squares(n_clips, n_frames, size=size, seed=cfg.seed)
    held_out = moving_squares(4, n_frames, size=size, seed=cfg.seed + 1000)
    settings = OmegaConf.to_container(cfg, resolve=True)

    def tokenizer_stage(d: Path) -> dict:
        tok = Tokenizer(tok_cfg)
        hist = train_tokenizer(tok, clips, **cfg.tokenizer_train, seed=cfg.seed)
        save_checkpoint(d / "checkpoint", {"kind": "tokenizer", "tokenizer": tok_cfg.__dict__}, {"tokenizer": tok.state_dict()})
        recon = tok.reconstruct(held_out).numpy()
        save_reconstructions(out / "tokenizer_reconstructions.png", held_out[:, 0], recon[:, 0],
                             f"held-out frames, PSNR {psnr_uint8(recon, held_out):.1f} dB")
        ids = tok.encode(held_out)
        return {"psnr_train_last": hist[-1]["psnr"], "psnr_held_out": psnr_uint8(recon, held_out),
                "codebook_usage_held_out": torch.unique(ids).numel() / tok.vocab_size,
                "psnr_curve": [h["psnr"] for h in hist]}

    tok_res = _stage(out, "tokenizer", {k: settings[k] for k in ("seed", "data", "tokenizer", "tokenizer_train")},
                     tokenizer_stage)

    def pretrain_stage(d: Path) -> dict:
        tok = Tokenizer(tok_cfg)
        tok.load_state_dict(load_state_dict(out / "tokenizer" / "checkpoint", "tokenizer"))
        tok.eval()
        model = Transformer(model_cfg)
        hist = train_lm(model, tok.encode(clips), **cfg.pretrain, seed=cfg.seed)
        with torch.no_grad():
            _, held = model(*_shifted(tok.encode(held_out), model))
        save_toto(d / "checkpoint", tok, model)
        flops = model.flops_per_token()
        return {"loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"], "held_out_loss": held.item(),
                "params": model.num_params(), "train_flops_per_token": flops["train"],
                "loss_curve": [h["loss"] for h in hist]}

    lm_res = _stage(out, "pretrain", {k: settings[k] for k in ("seed", "data", "tokenizer", "tokenizer_train",
                                                                 "model", "pretrain")}, pretrain_stage)

    enc_res = encode_stage(out / "pretrain" / "checkpoint", held_out, cfg.encoder)
    save_curves(out / "losses.png", {"tokenizer PSNR (train batches)": (tok_res["psnr_curve"], "dB"),
                                     "next-token loss": (lm_res["loss_curve"], "cross-entropy")})
    write_summary(out, tok_res, lm_res, enc_res)
    return out


def _shifted(ids: torch.Tensor, model: Transformer):
    from toto_robot.model import clip_to_sequence

    seq = clip_to_sequence(ids, model.cfg)
    return seq[:, :-1], seq[:, 1:]


def encode_stage(ckpt: Path, clips: np.ndarray, enc_cfg: DictConfig) -> dict:
    """Frozen encoder on whole clips, then the streaming encoder frame by frame, timed."""
    enc = TotoEncoder.from_pretrained(ckpt, layer=enc_cfg.layer, pooling=enc_cfg.pooling)
    full = enc(clips)
    stream = StreamingEncoder(enc, window=enc_cfg.window)
    frames = torch.from_numpy(clips)
    diffs, times = [], []
    for t in range(frames.shape[1]):
        t0 = time.perf_counter()
        step = stream.step(frames[:, t])
        times.append(time.perf_counter() - t0)
        if t < enc_cfg.window:  # before the window slides the two must agree
            diffs.append((step.features[:, 0] - full.features[:, t]).abs().max().item())
    _, model, _ = load_toto(ckpt)
    return {"layer": enc.layer, "of_layers": model.cfg.n_layers, "features_shape": list(full.features.shape),
            "pooled_shape": list(full.pooled.shape), "stream_vs_full_max_abs_diff": max(diffs),
            "stream_ms_per_step": 1000 * float(np.median(times[1:])), "window": enc_cfg.window}


def write_summary(out: Path, tok: dict, lm: dict, enc: dict) -> None:
    rows = [
        {"stage": "tokenizer", "metric": "held-out PSNR (dB)", "value": tok["psnr_held_out"]},
        {"stage": "tokenizer", "metric": "held-out codebook usage", "value": tok["codebook_usage_held_out"]},
        {"stage": "pretrain", "metric": "first / last train loss", "value": f"{lm['loss_first']:.3f} / {lm['loss_last']:.3f}"},
        {"stage": "pretrain", "metric": "held-out loss", "value": lm["held_out_loss"]},
        {"stage": "pretrain", "metric": "parameters", "value": lm["params"]},
        {"stage": "encoder", "metric": "features (B, T, P, C)", "value": enc["features_shape"]},
        {"stage": "encoder", "metric": f"read-out layer", "value": f"{enc['layer']} of {enc['of_layers']}"},
        {"stage": "streaming", "metric": "max abs diff vs full forward", "value": enc["stream_vs_full_max_abs_diff"]},
        {"stage": "streaming", "metric": f"ms per step (window {enc['window']})", "value": enc["stream_ms_per_step"]},
    ]
    text = "\n".join([
        "# toto-demo report", "",
        "Pipeline run so far: generated clips -> tokenizer -> tiny Toto pretraining -> frozen and streaming encoder.",
        "Robot stages (robosuite demonstrations, behavior cloning, evaluation) are not part of the demo yet.", "",
        markdown_table(rows), "",
        "![reconstructions](tokenizer_reconstructions.png)", "", "![losses](losses.png)", "",
    ])
    (out / "summary.md").write_text(text)
    metrics = {"tokenizer": {k: v for k, v in tok.items() if not k.endswith("curve")},
               "pretrain": {k: v for k, v in lm.items() if not k.endswith("curve")}, "encoder": enc}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


@hydra.main(config_path=CONFIGS, config_name="demo", version_base=None)
def _main(cfg: DictConfig) -> None:
    t0 = time.time()
    out = run_demo(cfg)
    print(f"toto-demo finished in {time.time() - t0:.0f} s; report: {out.resolve() / 'summary.md'}")


def main() -> None:
    _main()
