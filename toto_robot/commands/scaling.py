"""toto-scaling: train a sweep of model sizes at fixed token budgets, fit L(C) = a * C^b, plot it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pretrain.scaling import GPT3_EXPONENT, PAPER_EXPONENT, run_sweep
from toto_robot.commands.entry import entry_point
from toto_robot.commands.pretrain import train_config
from toto_robot.results import run_context, write_record
from toto_robot.typecheck import check_value


def run(cfg: DictConfig) -> None:
    t0 = time.time()
    context = run_context()
    sizes = OmegaConf.to_container(cfg.sizes, resolve=True) if OmegaConf.is_list(cfg.sizes) else cfg.sizes
    check_value("sizes", sizes, list[dict])
    budgets = OmegaConf.to_container(cfg.token_budgets) if OmegaConf.is_list(cfg.token_budgets) else cfg.token_budgets
    check_value("token_budgets", budgets, list[int])
    fit = run_sweep(cfg.shards, sizes, budgets, train_config(cfg), cfg.out_dir)
    for r in fit["runs"]:
        print(f"{r['name']:>22}: {r['params']:>9,} params, C = {r['compute_macs']:.3g} MACs, "
              f"held-out loss {r['held_out_loss']:.4f}")
    print(f"fitted L(C) = {fit['a']:.3f} * C^{fit['b']:.4f}: exponent {fit['b']:.4f} "
          f"(paper: {PAPER_EXPONENT}, GPT-3: {GPT3_EXPONENT})")
    out = Path(cfg.out_dir).resolve()
    if cfg.results:  # a committed record and its plot beside it (results/<name>.json, .png)
        record = write_record(cfg.results, {"shards": str(cfg.shards), "token_budgets": budgets, "sizes": sizes,
                                            **fit}, context)
        shutil.copyfile(out / "scaling.png", record.with_suffix(".png"))
        print(f"record: {record}")
    print(f"toto-scaling finished in {time.time() - t0:.0f} s; fit: {out / 'fit.json'}, plot: {out / 'scaling.png'}")


main = entry_point("scaling", "pretrain/scaling", run)


if __name__ == "__main__":
    main()
