#!/usr/bin/env bash
# Download the wheels that launch/gpu_check.sh installs from .whl/ (offline, --no-deps) on a GPU machine whose
# image already has a CUDA torch: every version is read from constraints/gpu.lock, so the check runs the locked set.
#
#   bash launch/gpu_wheels.sh            # download into .whl/ (needs PyPI; run it where the network is)
#   bash launch/gpu_wheels.sh --print    # print the pinned requirements only, download nothing
#
# Variables [defaults]: PYTHON_VERSION [3.11] the device's Python; WHEEL_DIR [.whl]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
lock="$repo/constraints/gpu.lock"
# what a CUDA torch image usually lacks (torch's own dependencies are assumed present); deepspeed is built below
packages=(
  trl peft accelerate transformers datasets math-verify latex2sympy2_extended antlr4-python3-runtime
  huggingface_hub hf-xet tokenizers safetensors regex PyYAML tqdm packaging psutil numpy pandas pyarrow
  python-dateutil tzdata dill multiprocess xxhash fsspec httpx2 httpcore2 anyio h11 idna truststore click typer
  shellingham annotated-doc rich Pygments markdown-it-py mdurl pydantic pydantic_core annotated-types
  typing-inspection einops hjson msgpack ninja py-cpuinfo
)

pin() {  # NAME -> NAME==VERSION from the lock (names compared as pip does: case, - _ . alike)
  local pattern line
  pattern="$(printf '%s' "$1" | sed 's/[-_.]/[-_.]/g')"
  line="$(grep -iE "^${pattern}==" "$lock" | head -1 | sed 's/[ ;].*//')"
  [ -n "$line" ] || { echo "$1 is not in $lock: add it to the GPU extra and run bash launch/gpu_lock.sh update" >&2; exit 2; }
  printf '%s\n' "$line"
}

pins=()
for name in "${packages[@]}"; do pins+=("$(pin "$name")"); done
deepspeed="$(pin deepspeed)"
if [ "${1:-}" = "--print" ]; then
  printf '%s\n' "${pins[@]}" "$deepspeed"
  exit 0
fi
out="${WHEEL_DIR:-$repo/.whl}"
python="${PYTHON:-python3}"
"$python" -m pip download --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.11}" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$out" "${pins[@]}"
# DeepSpeed is an sdist only on PyPI: its pure-Python wheel (ops are JIT-built at run time); needs torch here
"$python" -m pip wheel --no-deps --no-build-isolation "$deepspeed" -w "$out"
