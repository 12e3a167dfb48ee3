#!/usr/bin/env bash
# The wheels bench/gpu_check.sh needs on a GPU machine that has PyTorch but no package registry.
#   bash bench/gpu_wheels.sh           # here, after `make setup`: writes .whl/ (git-ignored, ~41 MB)
# A GPU image with PyTorch, numpy, einops, safetensors, tqdm, pyyaml and pytest lacks the store's and the
# configs' libraries; these are they, at the versions installed in .venv (the ones the suite passed with),
# for CPython 3.12 on x86-64 Linux. gpu_check.sh installs .whl/ into a scratch folder when the imports fail.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DEST=${DEST:-.whl}
PACKAGES="zarr numcodecs donfig google-crc32c msgspec hydra-core omegaconf antlr4-python3-runtime av"
mkdir -p "$DEST"
pins=$("$PY" - $PACKAGES <<'EOF'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
EOF
)
binary=() source=()
for pin in $pins; do
  case $pin in antlr4-python3-runtime==*) source+=("$pin") ;; *) binary+=("$pin") ;; esac
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "${binary[@]}"
# antlr4-python3-runtime 4.9 (hydra's parser runtime) is published as a source archive only; it is pure
# Python, so the wheel built here runs anywhere.
"$PY" -m pip wheel -q --no-deps -w "$DEST" "${source[@]}"
ls -1 "$DEST"
du -sh "$DEST"
