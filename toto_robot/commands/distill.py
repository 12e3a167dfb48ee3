"""toto-distill-tokenizer: a lighter deployment encoder trained to give a trained tokenizer's tokens."""

from __future__ import annotations

import time

from omegaconf import DictConfig, OmegaConf

from pretrain.data import build_sources
from toto_robot.checkpoint import load_tokenizer
from toto_robot.commands.entry import entry_point
from toto_robot.distill import distill_tokenizer
from toto_robot.results import run_context, write_record
from toto_robot.typecheck import check_keys


def run(cfg: DictConfig) -> None:
    t0 = time.time()
    context = run_context()
    args = OmegaConf.to_container(cfg.distill, resolve=True)
    check_keys(distill_tokenizer, args, "distill", 3, "seed", "strict", "extra")
    teacher = load_tokenizer(cfg.teacher)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data["resolution"] = teacher.cfg.image_size  # the student learns the teacher at its own resolution
    res = distill_tokenizer(teacher, build_sources(data), cfg.out_dir, seed=cfg.seed, strict=data["strict"],
                            extra={"teacher": str(cfg.teacher)}, **args)
    held = res["held_out"]
    ms = res["eager_ms_one_frame"]
    print(f"toto-distill-tokenizer finished in {time.time() - t0:.0f} s: held-out token agreement "
          f"{held['token_agreement']:.3f} (most frequent code alone {held['majority_code_agreement']:.3f}, "
          f"{held['teacher_codes_used']} codes used) over {held['frames']} frames; encoder "
          f"{ms['student_encoder_ms']:.1f} ms against {ms['teacher_encoder_ms']:.1f} ms per frame (eager)")
    print(f"checkpoint: {res['checkpoint']}")
    if cfg.results:
        print(f"results: {write_record(cfg.results, {'kind': 'distill', **res}, context)}")


main = entry_point("distill-tokenizer", "pretrain/distill_tokenizer", run)


if __name__ == "__main__":
    main()
