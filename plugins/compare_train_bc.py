"""LeRobot's own tools against toto-train-bc on the same data, one results record.

    python plugins/compare_train_bc.py --store outputs/demo/collect/Lift.zarr \
        --encoder outputs/demo/pretrain/checkpoint --out outputs/lerobot_vs_bc \
        --results results/bc/lift-demo/Lift-lerobot_vs_toto_train_bc.json

1. exports the store as a LeRobot v3 dataset with lossless PNG images (`toto-convert export --images png`);
2. `lerobot-train --policy.type=toto` (the frozen encoder read as `toto_flat` reads it: the flattened token grid,
   a window of 1 frame) for --steps steps, then `lerobot-eval` of its last checkpoint on the `toto` env, episodes
   seeded 100000.. (LeRobot seeds episode i with seed + i at batch size 1);
3. `toto-train-bc policy=toto_flat policy.encoder_window=1` with the same steps, batch, learning rate and
   every episode in training (no validation split, no checkpoint selection), evaluated on the same seeds;
4. writes both success rates with their 95% Wilson intervals and whether the intervals overlap.
Run it with OMP_NUM_THREADS=1 beside other work; each stage shows its own progress.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from envs.runner import wilson_interval
from toto_robot.results import run_context, write_record
from toto_robot.store import TrajectoryStore

BIN = Path(sys.executable).parent
TEST_SEED = 100000


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run([str(BIN / cmd[0]), *cmd[1:]], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                                    "WANDB_MODE": "disabled"})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--encoder", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    context = run_context()
    context["command"] = "python plugins/" + context["command"]  # run from the repository root
    store = TrajectoryStore.open(a.store)
    env = store.attrs["env"]  # the task, horizon and image size the demonstrations were collected with
    task = env["task"]
    out = Path(a.out)
    data = out / "lerobot_dataset"
    if not (data / "meta/info.json").exists():
        run("toto-convert", "export", a.store, str(data), "--images", "png")
    ckpt = out / "lerobot_train/checkpoints/last/pretrained_model"
    if not ckpt.exists():
        run("lerobot-train", "--policy.type=toto", f"--policy.encoder_checkpoint={a.encoder}",
            "--policy.readout=flatten", "--policy.encoder_window=1", "--policy.device=cpu",
            f"--policy.seed={a.seed}", f"--seed={a.seed}", "--policy.push_to_hub=false", "--wandb.enable=false",
            "--dataset.repo_id=local/compare", f"--dataset.root={data}", f"--steps={a.steps}",
            f"--batch_size={a.batch_size}", "--num_workers=1", f"--save_freq={a.steps}", "--log_freq=250",
            f"--output_dir={out / 'lerobot_train'}")
    info = out / "lerobot_eval/eval_info.json"
    if not info.exists():
        run("lerobot-eval", f"--policy.path={ckpt}", "--env.type=toto", f"--env.task={task}",
            f"--env.episode_length={env['horizon']}", f"--env.image_size={env['image_size']}",
            f"--eval.n_episodes={a.episodes}", "--eval.batch_size=1", f"--seed={TEST_SEED}",
            "--policy.device=cpu", f"--output_dir={out / 'lerobot_eval'}")
    lerobot_rate = json.loads(info.read_text())["overall"]["pc_success"] / 100
    bc_record = out / "toto_train_bc.json"
    if not bc_record.exists():
        run("toto-train-bc", f"store={a.store}", f"encoder={a.encoder}", "policy=toto_flat",
            "policy.name=toto_flat_window1", "policy.encoder_window=1", f"train.seed={a.seed}",
            f"train.steps={a.steps}", f"train.eval_every={a.steps}", f"train.batch_size={a.batch_size}",
            "train.val_ratio=0", f"eval.n_episodes={a.episodes}", "eval.n_videos=0",
            f"out_dir={out / 'toto_train_bc'}", f"results={bc_record}")
    bc_rate = json.loads(bc_record.read_text())["success_rate"]
    rows = {}
    for name, rate in (("lerobot", lerobot_rate), ("toto_train_bc", bc_rate)):
        k = round(rate * a.episodes)
        rows[name] = {"success_rate": k / a.episodes, "success_ci95": list(wilson_interval(k, a.episodes))}
    lo = max(r["success_ci95"][0] for r in rows.values())
    hi = min(r["success_ci95"][1] for r in rows.values())
    record = {"task": task, "store": a.store, "encoder_checkpoint": a.encoder, "readout": "flatten",
              "encoder_window": 1, "images": "png", "bc_steps": a.steps, "batch_size": a.batch_size,
              "bc_seed": a.seed, "n_episodes": a.episodes, "seeds": [TEST_SEED, TEST_SEED + a.episodes - 1],
              "n_demos": store.n_episodes, **rows, "intervals_overlap": lo <= hi}
    write_record(a.results, record, context)
    print(json.dumps(rows), "intervals overlap:", lo <= hi)


if __name__ == "__main__":
    main()
