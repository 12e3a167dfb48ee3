"""toto-probe-state: how well a frozen encoder's features hold the scene's state, per layer and read-out.

    toto-probe-state                                             # the demo's Lift store and encoder
    toto-probe-state store=outputs/can100/collect/PickPlaceCan.zarr encoder=outputs/can100/pretrain/checkpoint \\
        results=results/probe/can100-toto.json
    toto-probe-state random_init=true ...                        # the same architecture, transformer untrained

Held-out R² of object position, gripper position and their offset (policies/state_probe.py), a table on the
console, a plot (r2_by_layer.png) and r2.json in out_dir, and with `results=PATH` a results record.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from policies.state_probe import TARGETS, ProbeConfig, run_probe
from toto_robot.commands.entry import entry_point
from toto_robot.encoder import TotoEncoder, load_toto
from toto_robot.model import Transformer
from toto_robot.report import markdown_table, save_lines
from toto_robot.results import run_context, write_record


def run(cfg: DictConfig) -> dict:
    context = run_context()  # the commit and load as the run starts
    if not Path(cfg.store).exists():
        raise ValueError(f"store: expected a trajectory store at {cfg.store}, found nothing")
    tokenizer, model, enc_config = load_toto(cfg.encoder)
    if cfg.random_init:  # the toto_random baseline: same tokenizer, transformer as initialized
        model = Transformer(model.cfg)
    encoder = TotoEncoder(tokenizer, model, keep_all=True)
    probe_cfg = ProbeConfig(**OmegaConf.to_container(cfg.probe, resolve=True))
    res = run_probe(encoder, cfg.store, probe_cfg, progress=cfg.progress)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"read-out": r, "target": t, **{f"layer {layer}": f"{v:.3f}" for layer, v in zip(res["layers"], vals)}}
            for r, by_target in res["r2"].items() for t, vals in by_target.items()]
    print(markdown_table(rows))
    panels = {t: {r: (res["layers"], res["r2"][r][t]) for r in res["r2"]} for t in TARGETS}
    save_lines(out / "r2_by_layer.png", panels, "layer (0 = token embedding)", "held-out R²")
    (out / "r2.json").write_text(json.dumps(res, indent=2) + "\n")
    record = {"kind": "state_probe", "store": cfg.store, "encoder_checkpoint": cfg.encoder,
              "encoder": "toto_random" if cfg.random_init else "toto", "corpus": enc_config.get("corpus"),
              "model": model.cfg.to_dict(), "probe": OmegaConf.to_container(cfg.probe, resolve=True),
              "targets": list(TARGETS), **res}
    if cfg.results:
        print(f"results record: {write_record(cfg.results, record, context)}")
    print(f"wrote {out / 'r2.json'} and {out / 'r2_by_layer.png'}")
    return record


main = entry_point("probe-state", "probe_state", run)


if __name__ == "__main__":
    main()
