#!/usr/bin/env bash
# The GPU checks, prepared to run in one go (about 5 minutes on an H200) when a GPU is lent:
#   bash bench/gpu_wheels.sh           # here, once: the libraries a PyTorch-only GPU image lacks, into .whl/
#   bash bench/gpu_check.sh            # there, from the repository root, with .whl/ carried along
# 1. the gpu-marked tests (bf16 forward/backward against fp32, compile, the streaming encoder on CUDA);
# 2. a tokenizer and token shards made by the real commands (generated videos), then the pretraining trainer
#    on the `base` transformer: bf16 eager, bf16 + torch.compile (tokens/s, MFU against the chip's bf16 peak),
#    then DDP and FSDP2 at world size 1 through torchrun on NCCL;
# 3. streaming latency for the base and large transformers at 128 px (small tokenizer).
# What comes back: $OUT/gpu_check.json (each step's exit status and seconds, the trainers' tokens/s and MFU,
# the streaming latencies) and $OUT/gpu_check.log (every step's log); scratch files go to $WORK.
# Settings (environment): PY (default .venv/bin/python, else python3), GPU_CHECK_DEVICE (cuda; cpu runs the
# same wiring on a machine without one, with GPU_CHECK_MODEL=tiny GPU_CHECK_BATCH=2 GPU_CHECK_STEPS=6
# GPU_CHECK_STREAM_MODELS=tiny to make it short), PEAK_TFLOPS (989: the H200's dense bf16 peak).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}
WORK=${WORK:-outputs/gpu_check_work}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
MODEL=${GPU_CHECK_MODEL:-base}
BATCH=${GPU_CHECK_BATCH:-32}
STEPS=${GPU_CHECK_STEPS:-40}
STREAM_MODELS=${GPU_CHECK_STREAM_MODELS:-base large}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
if [ -z "${PY:-}" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
COMMIT=${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT" "$WORK"
: >"$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

# The store's and the configs' libraries: from .venv here, from the carried wheels on a bare GPU image.
if ! "$PY" -c "import zarr, hydra, av" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu_check: error: $PY cannot import zarr, hydra and av, and .whl/ holds no wheels (expected bench/gpu_wheels.sh's output, carried along)" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl || exit 2
  export PYTHONPATH=$WORK/site
fi
if ! "$PY" -c "import toto_robot_configs" 2>/dev/null; then  # not installed: its configs from this checkout
  mkdir -p "$WORK/site" && ln -sfn "$PWD/configs" "$WORK/site/toto_robot_configs"
  export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the project's packages, installed or not

status=0
STEPS_TSV=$WORK/steps.tsv
: >"$STEPS_TSV"
step() {  # step <name> <seconds> <command...>: time-limited, logged, never stops the script
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS log=$WORK/$name.log
  timeout "$limit" "$@" >"$log" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - t0))s"; tail -n 3 "$log" | sed 's/^/   /'
  { echo "===== $name: rc=$rc in $((SECONDS - t0)) s: $*"; cat "$log"; } >>"$OUT/gpu_check.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$STEPS_TSV"
  [ $rc -eq 0 ] || status=1
}

"$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
step gpu_tests 180 "$PY" -m pytest tests/toto_robot/test_gpu.py -m gpu -q -rs -p no:cacheprovider

D="work_dir=$WORK/pretrain"
step tokenizer 120 "$PY" -m toto_robot.commands.train_tokenizer "$D" tokenizer_train.steps=40 \
  tokenizer_train.log_every=20 tokenizer_train.progress=false
step tokenize 120 "$PY" -m toto_robot.commands.tokenize "$D" progress=false
TRAIN="model=$MODEL train.batch_size=$BATCH train.steps=$STEPS train.log_every=$((STEPS / 4)) train.eval_every=$STEPS
  train.ckpt_every=$STEPS train.eval_clips=8 train.progress=false train.tensorboard=false train.bf16=true
  train.peak_tflops=$PEAK_TFLOPS"
# shellcheck disable=SC2086  # TRAIN is a list of hydra overrides
step pretrain_bf16 150 "$PY" -m toto_robot.commands.pretrain "$D" out_dir="$WORK/pretrain/eager" $TRAIN
# shellcheck disable=SC2086
step pretrain_bf16_compile 240 "$PY" -m toto_robot.commands.pretrain "$D" out_dir="$WORK/pretrain/compile" \
  train.compile=true $TRAIN
for strategy in ddp fsdp; do
  # shellcheck disable=SC2086
  step "torchrun_$strategy" 150 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
    -m toto_robot.commands.pretrain "$D" out_dir="$WORK/pretrain/$strategy" train.strategy=$strategy $TRAIN
done
for model in $STREAM_MODELS; do
  step "streaming_$model" 120 "$PY" bench/bench_streaming.py --preset small --model "$model" --device "$DEVICE" \
    --no-threads-section --steps 24 --out "$WORK/streaming_$model.json"
done

"$PY" - "$WORK" "$OUT/gpu_check.json" "$COMMIT" "$SECONDS" <<'EOF'
import datetime, json, platform, sys
from pathlib import Path

import torch

work, out, commit, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
steps = {}
for line in (work / "steps.tsv").read_text().splitlines():
    name, rc, sec = line.split("\t")
    steps[name] = {"rc": int(rc), "seconds": int(sec)}
train = {}
for run in ("eager", "compile", "ddp", "fsdp"):
    res = work / "pretrain" / run / "results.json"
    if res.is_file():
        r = json.loads(res.read_text())
        train[run] = {k: r.get(k) for k in ("tokens_per_s", "mfu", "params", "final_loss", "held_out_loss",
                                             "world_size", "train_flops_per_token")}
streaming = {p.stem.removeprefix("streaming_"): json.loads(p.read_text()) for p in sorted(work.glob("streaming_*.json"))}
cuda = torch.cuda.is_available()
record = {
    "command": "bash bench/gpu_check.sh", "git_commit": commit,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
    "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None, "seconds": seconds,
    "all_passed": all(s["rc"] == 0 for s in steps.values()), "steps": steps, "pretrain": train,
    "streaming": streaming,
}
out.write_text(json.dumps(record, indent=2) + "\n")
for run, r in train.items():
    if r["tokens_per_s"]:
        print(f"pretrain {run}: {r['tokens_per_s']:,.0f} tokens/s, MFU {100 * r['mfu']:.1f}%")
print(f"record: {out}")
EOF
echo "gpu_check: $([ $status -eq 0 ] && echo all passed || echo FAILURES, see $OUT/gpu_check.log) ($SECONDS s)"
exit $status
