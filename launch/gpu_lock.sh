#!/usr/bin/env bash
# The GPU profile's lock (constraints/gpu.lock): one consistent set for Linux x86_64 + CUDA, Python 3.11.
#   bash launch/gpu_lock.sh check    # resolve the lock again without installing anything (CI runs this)
#   bash launch/gpu_lock.sh update   # re-resolve from pyproject's gpu+dev extras under constraints/gpu.in
# `check` fails when the locked pins no longer resolve together, when the lock is not what pyproject and
# gpu.in resolve to, or when vllm leaves TRL 1.16's supported range. Needs `uv` (in the dev extra) and
# the package index; it downloads metadata only.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-check}"
uv="${UV:-}"
if [ -z "$uv" ]; then
  if [ -x .venv/bin/uv ]; then uv=.venv/bin/uv; else uv=$(command -v uv || true); fi
fi
[ -n "$uv" ] || { echo "gpu_lock: uv not found; run 'make setup' (dev extra) or 'pip install uv'" >&2; exit 2; }
platform=(--python-platform x86_64-manylinux_2_28 --python-version 3.11 --no-header --no-annotate --quiet)
lock=constraints/gpu.lock
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
case "$mode" in
  update)
    "$uv" pip compile pyproject.toml --extra gpu --extra dev -c constraints/gpu.in "${platform[@]}" -o "$lock"
    echo "gpu_lock: wrote $lock" >&2 ;;
  check)
    [ -f "$lock" ] || { echo "gpu_lock: $lock is missing; run: bash launch/gpu_lock.sh update" >&2; exit 1; }
    # 1. the locked pins, with all their dependencies, resolve together and need nothing outside the lock
    grep -v '^#' "$lock" | grep . > "$tmp/pins.in"
    "$uv" pip compile "$tmp/pins.in" "${platform[@]}" -o "$tmp/closure.txt" \
      || { echo "gpu_lock: the pins in $lock do not resolve together" >&2; exit 1; }
    if ! diff <(sort -f "$tmp/pins.in") <(grep -v '^#' "$tmp/closure.txt" | grep . | sort -f) > "$tmp/closure.diff"; then
      echo "gpu_lock: $lock is not closed under its dependencies:" >&2; cat "$tmp/closure.diff" >&2; exit 1
    fi
    # 2. the lock is what pyproject's extras and constraints/gpu.in resolve to (existing pins preferred)
    cp "$lock" "$tmp/again.txt"
    "$uv" pip compile pyproject.toml --extra gpu --extra dev -c constraints/gpu.in "${platform[@]}" -o "$tmp/again.txt" \
      || { echo "gpu_lock: pyproject's gpu extra no longer resolves under constraints/gpu.in" >&2; exit 1; }
    if ! diff "$lock" "$tmp/again.txt" > "$tmp/stale.diff"; then
      echo "gpu_lock: $lock is stale; run: bash launch/gpu_lock.sh update" >&2; cat "$tmp/stale.diff" >&2; exit 1
    fi
    # 3. vllm inside the range TRL 1.16 supports
    vllm=$(sed -n 's/^vllm==//p' "$lock")
    python3 - "$vllm" <<'PY'
import sys
version = tuple(int(x) for x in sys.argv[1].split(".")[:3])
if not ((0, 22, 0) <= version <= (0, 31, 0)):
    sys.exit(f"gpu_lock: vllm {sys.argv[1]} is outside TRL 1.16's supported range 0.22.0-0.31.0")
PY
    echo "gpu_lock: OK ($(grep -E '^(torch|vllm|transformers|trl|deepspeed)==' "$lock" | tr '\n' ' '))" ;;
  *) echo "usage: $0 [check|update]" >&2; exit 2 ;;
esac
