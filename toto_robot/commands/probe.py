"""toto-probe: frozen-feature probes of an encoder, every layer, against raw pixels and a random encoder.

    toto-probe                                              # generated / bundled data, an untrained tiny encoder
    toto-probe encoder=outputs/demo/pretrain/checkpoint results=results/probe/demo-probe.json
    toto-probe encoder=CKPT tasks=[image] image.root=/data/imagenet-subset      # root/<class>/ or root/train|val/
    toto-probe encoder=CKPT tasks=[video] video.manifest=/data/k400/val.csv     # path,label[,split] or Kinetics'
    toto-probe encoder=CKPT tasks=[tracking] tracking.root=/data/DAVIS tracking.setting=crw

Tasks (toto_robot/probes): image classification (offline: scikit-learn's digits), video classification
(offline: generated clips of a square moving in one of four directions), tracking by label propagation on
DAVIS-2017 (offline: generated videos with exact masks). For each task every layer of every source goes
through the attentive probe, a linear probe on mean-pooled tokens and a k-NN probe (tracking: label
propagation); sources are the encoder plus baselines: raw pixels at the tokenizer's grid and the same
architecture with its transformer as initialised. With `encoder: null` (the default) there is no checkpoint:
the encoder is a randomly initialised tiny tokenizer + transformer, and the output says so.

Writes out_dir/results.json, <task>_by_depth.png and summary.md, and with `results=PATH` a results record.
Bad input (a folder without classes, masks that do not match their frames, a layer out of range, a
checkpoint of another kind) stops before anything is written.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from toto_robot.atomic import atomic_write_text
from toto_robot.checkpoint import load_toto
from toto_robot.commands.entry import entry_point
from toto_robot.config import model_config, tokenizer_config
from toto_robot.encoder import TotoEncoder
from toto_robot.model import Transformer
from toto_robot.probes.features import (
    EncoderSource,
    FeatureCache,
    PixelMotionSource,
    PixelSource,
    check_layers,
)
from toto_robot.probes.heads import HEADS, AttentiveConfig, HeadConfigs, KnnConfig, LinearConfig
from toto_robot.probes.image import digits, image_folder
from toto_robot.probes.sweep import (
    classification_rows,
    classification_sweep,
    plot_classification,
    plot_tracking,
    tracking_rows,
    tracking_sweep,
)
from toto_robot.probes.tracking import davis_videos, moving_objects, propagation_config
from toto_robot.probes.video import moving_shapes, video_folder, video_manifest
from toto_robot.report import markdown_table
from toto_robot.results import run_context, write_record
from toto_robot.tokenizer import Tokenizer

TASKS = ("image", "video", "tracking")
BASELINES = ("pixels", "random", "pixel_motion")
UNTRAINED_NOTE = ("no checkpoint given (encoder=null): a randomly initialised tiny tokenizer + transformer. "
                  "These scores show what the probes read from an untrained encoder, not Toto's features; pass "
                  "encoder=PATH (a Toto checkpoint) to probe a pretrained one.")


def _names(values, allowed, what) -> list[str]:
    values = list(values)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValueError(f"{what}: expected names from {list(allowed)}, got {values}")
    return values


def build_sources(cfg: DictConfig, baselines: list[str]) -> tuple[list, dict]:
    """The encoder probed and its baselines, and what the encoder is (for the results)."""
    torch.manual_seed(cfg.seed)
    if cfg.encoder is None:
        tok_cfg = tokenizer_config(OmegaConf.to_container(cfg.untrained.tokenizer))
        model_cfg = model_config(OmegaConf.to_container(cfg.untrained.model), tok_cfg, cfg.untrained.max_frames)
        tokenizer, model = Tokenizer(tok_cfg), Transformer(model_cfg)
        main = EncoderSource("toto_untrained", TotoEncoder(tokenizer, model, keep_all=True),
                             slot=f"untrained:{json.dumps(OmegaConf.to_container(cfg.untrained), sort_keys=True)}"
                                  f":seed{cfg.seed}", note=UNTRAINED_NOTE)
        info = {"checkpoint": None, "note": UNTRAINED_NOTE}
        sources = [main]
    else:
        tokenizer, model, enc_config = load_toto(cfg.encoder)  # a checkpoint of another kind stops here
        path = str(Path(cfg.encoder).resolve())
        main = EncoderSource("toto", TotoEncoder(tokenizer, model, keep_all=True), slot=f"checkpoint:{path}",
                             note=f"Toto checkpoint {cfg.encoder}")
        info = {"checkpoint": cfg.encoder, "corpus": enc_config.get("corpus"), "note": main.note}
        sources = [main]
        if "random" in baselines:  # the toto_random baseline: the same tokenizer, the transformer as initialised
            torch.manual_seed(cfg.seed)
            random = TotoEncoder(tokenizer, Transformer(model.cfg), keep_all=True)
            sources.append(EncoderSource("toto_random", random, slot=f"random:{path}:seed{cfg.seed}",
                                         note=f"the checkpoint's tokenizer, its transformer re-initialised "
                                              f"(seed {cfg.seed}): the same size, untrained"))
    if "pixels" in baselines:
        sources.append(PixelSource(main.image_size, main.encoder.tokenizer.cfg.downsample))
    if "pixel_motion" in baselines:  # an oracle that mixes time: what the probes read when features carry motion
        sources.append(PixelMotionSource(main.image_size, main.encoder.tokenizer.cfg.downsample))
    info |= {"model": main.encoder.cfg.to_dict(), "tokenizer": asdict(main.encoder.tokenizer.cfg),
             "image_size": main.image_size, "n_layers": main.n_layers}
    if cfg.encoder is None and "random" in baselines:
        info["random_baseline"] = "not run: the encoder probed is itself randomly initialised"
    return sources, info


def load_task(task: str, cfg: DictConfig, image_size: int, max_frames: int):
    """The task's data (users' folders when given, else the offline default), every check done."""
    if task == "image":
        c = cfg.image
        return (image_folder(c.root, image_size, c.val_ratio, cfg.seed) if c.root is not None
                else digits(image_size, c.val_ratio, cfg.seed))
    if task == "video":
        c = cfg.video
        if not 1 <= c.clip_frames <= max_frames:
            raise ValueError(f"video.clip_frames: expected 1..{max_frames} (the encoder's context), got {c.clip_frames}")
        if c.root is not None and c.manifest is not None:
            raise ValueError(f"video: expected root or manifest, got both ({c.root}, {c.manifest})")
        if c.manifest is not None:
            return video_manifest(c.manifest, image_size, c.clip_frames, c.frame_stride, c.video_dir, c.val_ratio,
                                  cfg.seed)
        if c.root is not None:
            return video_folder(c.root, image_size, c.clip_frames, c.frame_stride, c.val_ratio, cfg.seed)
        return moving_shapes(c.n_generated, image_size, c.clip_frames, c.val_ratio, cfg.seed)
    c = cfg.tracking
    if not 1 <= c.window <= max_frames:
        raise ValueError(f"tracking.window: expected 1..{max_frames} (the encoder's context), got {c.window}")
    if c.root is not None:
        return davis_videos(c.root, c.resolution, c.image_set)
    return moving_objects(c.n_generated, c.n_frames, image_size, cfg.seed)


def run(cfg: DictConfig) -> dict:
    context = run_context()  # the commit and load as the run starts
    t0 = time.time()
    tasks = _names(cfg.tasks, TASKS, "tasks")
    heads = _names(cfg.heads, HEADS, "heads")
    baselines = _names(cfg.baselines, BASELINES, "baselines") if cfg.baselines else []
    seeds = [int(s) for s in cfg.seeds]
    if not seeds:
        raise ValueError("seeds: expected at least one seed, got []")
    cfgs = HeadConfigs(AttentiveConfig(**cfg.attentive), LinearConfig(**OmegaConf.to_container(cfg.linear)),
                       KnnConfig(**cfg.knn))
    prop = propagation_config(cfg.tracking.setting, **OmegaConf.to_container(cfg.tracking.overrides))
    sources, info = build_sources(cfg, baselines)
    main = sources[0]
    layers = check_layers(None if cfg.layers is None else list(cfg.layers), main.n_layers)
    layers_of = lambda s: layers if s.n_layers else (0,)  # pixels: one "layer"
    data = {task: load_task(task, cfg, main.image_size, main.max_frames) for task in tasks}
    # every check is done: only now is anything computed or written
    cache = FeatureCache(cfg.cache_dir)
    results: dict = {}
    for task in tasks:
        print(f"[{task}] probing {', '.join(s.name for s in sources)}", flush=True)
        if task == "tracking":
            res = tracking_sweep(data[task], sources, layers_of, prop, cache, main.image_size, cfg.tracking.window,
                                 cfg.batch_size, cfg.progress)
            name = f"DAVIS-2017 {cfg.tracking.root}" if cfg.tracking.root else "moving objects (generated, exact masks)"
            results[task] = {"data": name, "n_videos": len(data[task]), "propagation": asdict(prop),
                             "window": cfg.tracking.window, "sources": res}
        else:
            res = classification_sweep(data[task], sources, layers_of, heads, seeds, cfgs, cache, cfg.batch_size,
                                       cfg.progress, desc=task)
            results[task] = data[task].summary() | {"sources": res}
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"kind": "probe", "encoder": info, "tasks": results, "layers": list(layers), "heads": heads,
              "seeds": seeds, "baselines": baselines, "settings": OmegaConf.to_container(cfg, resolve=True),
              "cache": {"dir": cfg.cache_dir, "hits": cache.hits, "misses": cache.misses},
              "seconds": time.time() - t0}
    summary = write_report(out, record)
    print(summary)
    atomic_write_text(out / "results.json", json.dumps(record | context, indent=2, default=str) + "\n")
    if cfg.results:
        print(f"results record: {write_record(cfg.results, record, context)}")
    print(f"wrote {out / 'results.json'}, {out / 'summary.md'} and the plots in {out}")
    return record


def write_report(out: Path, record: dict) -> str:
    """Plots per task and summary.md; returns the summary's text."""
    lines = ["# toto-probe", "", f"Encoder: {record['encoder']['note']}", ""]
    if "random_baseline" in record["encoder"]:
        lines += [f"Random baseline: {record['encoder']['random_baseline']}.", ""]
    for task, r in record["tasks"].items():
        if task == "tracking":
            p = r["propagation"]
            title = f"tracking: {r['data']}, label propagation ({p['setting']})"
            plot_tracking(out / f"{task}_by_depth.png", r["sources"], title)
            about = (f"{r['n_videos']} videos; context: the first + {p['n_last']} last frames, top {p['topk']}, "
                     f"radius {p['radius']} tokens, temperature {p['temperature']}; features per frame with a "
                     f"window of {r['window']} frame(s).")
            lines += [f"## {title}", "", about, "",
                      markdown_table(tracking_rows(r["sources"]))]
        else:
            title = f"{task} classification: {r['data']}"
            plot_classification(out / f"{task}_by_depth.png", r["sources"], record["heads"], title, r["chance"])
            about = (f"{len(r['classes'])} classes, {r['n_train']} train / {r['n_test']} held-out clips of "
                     f"{r['frames_per_clip']} frame(s); chance {r['chance']:.3f}; attentive probe over seeds "
                     f"{record['seeds']} (mean ± std), linear and k-NN deterministic.")
            lines += [f"## {title}", "", about, "",
                      markdown_table(classification_rows(r["sources"]))]
        lines += ["", f"![{task}]({task}_by_depth.png)", ""]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "summary.md", text)
    return text


main = entry_point("probe", "probe", run)


if __name__ == "__main__":
    main()
