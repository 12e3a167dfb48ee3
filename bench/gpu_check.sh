#!/usr/bin/env bash
# The GPU checks, prepared to run in one go (at most ~10 minutes) when a GPU is lent:
#   bash bench/gpu_check.sh            # from the repository root; logs and records under ${OUT:-outputs/gpu_check}
# 1. the gpu-marked tests (bf16 forward/backward against fp32, compile, the streaming encoder on CUDA);
# 2. the pretraining trainer with bf16 and torch.compile, then DDP and FSDP2 at world size 1 via torchrun;
# 3. streaming latency for the base and large transformers at 128 px (small tokenizer).
set -uo pipefail
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
TORCHRUN=${TORCHRUN:-$(dirname "$PY")/torchrun}
status=0
step() {  # step <name> <seconds> <command...>: time-limited, logged, never stops the script
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - t0))s, log $OUT/$name.log"; tail -n 4 "$OUT/$name.log" | sed 's/^/   /'
  [ $rc -eq 0 ] || status=1
}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
step gpu_tests 120 "$PY" -m pytest tests/toto_robot/test_gpu.py -m gpu -q -rs
TRAIN="train.steps=30 train.eval_every=30 train.ckpt_every=30 train.log_every=10 train.progress=false train.tensorboard=false"
step pretrain_bf16_compile 150 "$PY" -m toto_robot.commands.pretrain work_dir="$OUT/pretrain" out_dir="$OUT/pretrain/compile" \
  train.bf16=true train.compile=true $TRAIN
step torchrun_ddp 75 "$TORCHRUN" --standalone --nproc_per_node 1 -m toto_robot.commands.pretrain work_dir="$OUT/pretrain" \
  out_dir="$OUT/pretrain/ddp" train.strategy=ddp train.bf16=true $TRAIN
step torchrun_fsdp2 75 "$TORCHRUN" --standalone --nproc_per_node 1 -m toto_robot.commands.pretrain work_dir="$OUT/pretrain" \
  out_dir="$OUT/pretrain/fsdp" train.strategy=fsdp train.bf16=true $TRAIN
for model in base large; do
  step "streaming_$model" 60 "$PY" bench/bench_streaming.py --preset small --model "$model" --device cuda \
    --no-threads-section --steps 24 --out "$OUT/bench_streaming_${model}_cuda.json"
done
echo "gpu_check: $([ $status -eq 0 ] && echo all passed || echo FAILURES, see the logs above) ($SECONDS s)"
exit $status
