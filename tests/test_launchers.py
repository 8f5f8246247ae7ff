"""The shell launchers in launch/ driven through their dry-run hooks, on CPU.

- launch/multi_node.sh (LAUNCHER=local, SERVER_CMD, TRAIN_CMD): health polling, the teardown trap and exit-status
  propagation. The fast tests use a STUB health server (tests' own few-line HTTP server that answers /health) and
  stub training children (a Python script that sleeps, fails or succeeds on command); the slow test runs a REAL
  vLLM OpenAI-compatible server on the tiny model, which the training children query. The default commands
  (`vllm serve` with TRL's weight-transfer flags, `accelerate launch`) need CUDA/NCCL: they are checked against
  TRL's own `build_command` and TrlParser through STUB `vllm` / `accelerate` executables that record their argv.
- launch/single_node_colocate.sh through DRY_RUN=1.
- launch/eval_sweep.sh for real: `rsa eval` (hf engine) on copies of the tiny model as checkpoints.
- launch/slurm/*.sbatch: `bash -n`, well-formed #SBATCH lines, and runs with STUB `scontrol` / `srun` on PATH
  (SLURM cannot run here); the srun stub records its argv and runs the step locally.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SMOKE = REPO / "configs" / "recipes" / "cpu_smoke.yaml"
VENV = str(Path(sys.executable).parent.parent)  # the environment running the tests holds rsa, accelerate, vllm

STUB_SERVER = '''"""STUB vLLM server for launcher tests: answers GET /health with 200; exits (status 5) after LIFETIME s."""
import http.server, os, sys, threading
port, lifetime = int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
if lifetime:
    threading.Timer(lifetime, os._exit, args=(5,)).start()
print("stub server up", flush=True)
server.serve_forever()
'''

TRAIN_CHILD = '''"""STUB training node: records its rank and pid, checks the server, then succeeds, fails or sleeps.

    train_child.py OUT URL ACTIONS   ACTIONS like "0=ok,1=fail:7" (rank -> ok | fail:CODE | sleep)
With URL ending in /v1 it asks the real vLLM server for a completion (model "tiny") and records the text.
"""
import json, os, sys, time, urllib.request
out, url, actions = sys.argv[1], sys.argv[2], dict(a.split("=") for a in sys.argv[3].split(","))
rank = os.environ["NODE_RANK"]
record = {"rank": rank, "pid": os.getpid()}
if url.endswith("/v1"):
    body = json.dumps({"model": "tiny", "prompt": "1 + 1 =", "max_tokens": 4, "temperature": 0}).encode()
    request = urllib.request.Request(url + "/completions", body, {"Content-Type": "application/json"})
    record["text"] = json.load(urllib.request.urlopen(request, timeout=120))["choices"][0]["text"]
else:
    record["health"] = urllib.request.urlopen(url, timeout=10).status
with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
    json.dump(record, fh)
action = actions[rank]
if action.startswith("fail:"):
    time.sleep(1)
    sys.exit(int(action.split(":")[1]))
if action == "sleep":
    time.sleep(300)
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    """True while process PID exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group PGID."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_gone(check, timeout: float = 60.0) -> bool:
    """Wait until `check()` is false (a condition, polled); False if it still holds after `timeout` s (generous:
    the processes waited for are being killed, so only a missed kill takes that long)."""
    deadline = time.monotonic() + timeout
    while check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture(autouse=True)
def _kill_leftovers(tmp_path):
    """After each test, end every process group that a launcher run of this test left behind (a failed test).

    A group counts as this test's only while its leader's environment names tmp_path (group ids are reused)."""
    yield
    for pid_file in tmp_path.rglob("*.pid"):
        try:
            pgid = int(pid_file.read_text())
            if str(tmp_path).encode() in Path(f"/proc/{pgid}/environ").read_bytes():
                os.killpg(pgid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


class MultiNode:
    """One run of launch/multi_node.sh with LAUNCHER=local on 127.0.0.1."""

    def __init__(self, tmp_path: Path, model: str = "tiny-model-unused"):
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.tmp, self.port, self.logs = tmp_path, free_port(), tmp_path / "logs"
        self.out = tmp_path / "children"
        self.out.mkdir()
        (tmp_path / "stub_server.py").write_text(STUB_SERVER)
        (tmp_path / "train_child.py").write_text(TRAIN_CHILD)
        self.env = {**os.environ, "LAUNCHER": "local", "VLLM_HOST": "127.0.0.1", "VLLM_PORT": str(self.port),
                    "TRAIN_HOSTS": "node-a node-b", "GPUS_PER_NODE": "1", "COMPLETIONS_PER_STEP": "2",
                    "LOG_DIR": str(self.logs), "VENV": VENV, "MODEL": model, "HEALTH_TIMEOUT": "60"}  # fmt: skip
        self.env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)

    def stub_server(self, lifetime: float = 0) -> str:
        return f"{sys.executable} {self.tmp / 'stub_server.py'} {self.port} {lifetime}"

    def children(self, actions: str, url: str | None = None) -> str:
        url = url or f"http://127.0.0.1:{self.port}/health"
        return f"{sys.executable} {self.tmp / 'train_child.py'} {self.out} {url} {actions}"

    def run(self, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        self.started = time.monotonic()
        result = subprocess.run(["bash", str(LAUNCH / "multi_node.sh"), str(SMOKE)], cwd=self.tmp,
                                env={**self.env, **env}, capture_output=True, text=True, timeout=timeout)  # fmt: skip
        self.seconds = time.monotonic() - self.started
        return result

    def rank(self, rank: int) -> dict:
        return json.loads((self.out / f"rank{rank}.json").read_text())

    def group(self, name: str) -> int:
        return int((self.logs / f"{name}.pid").read_text())

    def assert_all_stopped(self) -> None:
        for name in ("vllm_server", "train_node0", "train_node1"):
            if (self.logs / f"{name}.pid").exists():
                pgid = self.group(name)
                assert wait_gone(lambda pgid=pgid: group_members(pgid)), (
                    f"{name}'s process group {pgid} is still running"
                )
        with socket.socket() as sock:  # nothing listens on the server's port any more (TIME_WAIT is fine)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))


# ----- multi_node.sh against a stub server (fast) ------------------------------------------------------------
def test_multi_node_success_runs_every_rank_and_stops_the_server(tmp_path):
    run = MultiNode(tmp_path)
    result = run.run(SERVER_CMD=run.stub_server(), TRAIN_CMD=run.children("0=ok,1=ok"))
    assert result.returncode == 0, result.stderr
    assert [run.rank(r)["health"] for r in (0, 1)] == [200, 200]  # training started after the server was healthy
    assert "vLLM server healthy" in result.stderr and "training finished" in result.stderr
    assert "stopping the vLLM server" in result.stderr
    run.assert_all_stopped()


def test_multi_node_failing_rank_propagates_its_status_and_tears_everything_down(tmp_path):
    run = MultiNode(tmp_path)
    result = run.run(SERVER_CMD=run.stub_server(), TRAIN_CMD=run.children("0=sleep,1=fail:7"))
    assert result.returncode == 7, result.stderr
    assert "training on node-b failed (exit 7)" in result.stderr
    assert run.seconds < 100, "the sleeping rank 0 (300 s) must be stopped, not waited for"  # generous bound
    assert wait_gone(lambda: alive(run.rank(0)["pid"])), "the sleeping rank 0 was left running"
    run.assert_all_stopped()


def _ssh_stub(tmp_path: Path) -> tuple[str, Path]:
    """STUB `ssh` (ssh to other machines cannot run here): records each call's argv as a JSON line, then runs the
    remote command on this machine, as ssh would on the named host. Returns a PATH with it first and the record."""
    stubs, record = tmp_path / "ssh-stub", tmp_path / "ssh.argv"
    stubs.mkdir()
    (stubs / "ssh").write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "args = sys.argv[1:]\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps(args) + '\\n')\n"
        "i = 0\n"
        "while args[i] == '-o':\n"
        "    i += 2\n"
        "os.execvp('bash', ['bash', '-c', ' '.join(args[i + 1:])])\n"
    )
    (stubs / "ssh").chmod(0o755)
    return f"{stubs}:{os.environ['PATH']}", record


def test_multi_node_default_ssh_launcher_starts_and_stops_every_node_through_ssh(tmp_path):
    """LAUNCHER unset (ssh, the default): the server and each training node start through `ssh -o BatchMode=yes
    HOST 'setsid -w bash SCRIPT'`, and the teardown ends the still-running ones through ssh on their host."""
    run = MultiNode(tmp_path)
    path, record = _ssh_stub(tmp_path)
    run.env.pop("LAUNCHER")
    result = run.run(SERVER_CMD=run.stub_server(), TRAIN_CMD=run.children("0=sleep,1=fail:7"), PATH=path)
    assert result.returncode == 7, result.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    starts = sorted(c for c in calls if c[-1].startswith("setsid"))
    assert starts == [
        ["-o", "BatchMode=yes", "127.0.0.1", f"setsid -w bash '{run.logs}/vllm_server.sh'"],
        ["-o", "BatchMode=yes", "node-a", f"setsid -w bash '{run.logs}/train_node0.sh'"],
        ["-o", "BatchMode=yes", "node-b", f"setsid -w bash '{run.logs}/train_node1.sh'"],
    ]
    # the sleeping rank 0 and the server are stopped on their own hosts, by process group
    stops = sorted(c for c in calls if c[-1].startswith("kill"))
    assert stops == sorted([
        ["-o", "BatchMode=yes", "node-a", f"kill -TERM -- -{run.group('train_node0')}"],
        ["-o", "BatchMode=yes", "127.0.0.1", f"kill -TERM -- -{run.group('vllm_server')}"],
    ])  # fmt: skip
    assert wait_gone(lambda: alive(run.rank(0)["pid"])), "the sleeping rank 0 was left running"
    run.assert_all_stopped()


def test_multi_node_server_exiting_before_healthy(tmp_path):
    run = MultiNode(tmp_path)
    result = run.run(SERVER_CMD=f"{sys.executable} -c raise(SystemExit(4))", TRAIN_CMD=run.children("0=ok,1=ok"))
    assert result.returncode == 1
    assert "exited (status 4) before becoming healthy" in result.stderr
    assert not list(run.out.iterdir()), "no training node may start without a healthy server"


def test_multi_node_health_timeout_stops_the_silent_server(tmp_path):
    run = MultiNode(tmp_path)
    result = run.run(SERVER_CMD="sleep 300", TRAIN_CMD=run.children("0=ok,1=ok"), HEALTH_TIMEOUT="3")
    assert result.returncode == 1
    assert f"no healthy answer from http://127.0.0.1:{run.port}/health after 3s" in result.stderr
    # generous bound: the silent server would run for 300 s; the 3 s health timeout must end the run long before
    assert run.seconds < 60 and not list(run.out.iterdir())
    run.assert_all_stopped()


def test_multi_node_server_dying_during_training_stops_the_run(tmp_path):
    run = MultiNode(tmp_path)
    result = run.run(SERVER_CMD=run.stub_server(lifetime=4), TRAIN_CMD=run.children("0=sleep,1=sleep"))
    assert result.returncode == 1
    assert "the vLLM server died during training" in result.stderr
    assert run.seconds < 100  # generous: the ranks sleep 300 s, so only a launcher that noticed stops this early
    run.assert_all_stopped()


def test_multi_node_interrupted_launcher_exits_143_and_tears_down(tmp_path):
    run = MultiNode(tmp_path)
    env = {**run.env, "SERVER_CMD": run.stub_server(), "TRAIN_CMD": run.children("0=sleep,1=sleep")}
    process = subprocess.Popen(["bash", str(LAUNCH / "multi_node.sh"), str(SMOKE)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert wait_gone(lambda: not (run.out / "rank1.json").exists() or not (run.out / "rank0.json").exists(), 60)
    pids = [run.rank(r)["pid"] for r in (0, 1)]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert all(wait_gone(lambda pid=pid: alive(pid)) for pid in pids)
    run.assert_all_stopped()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COMPLETIONS_PER_STEP": "3"}, "COMPLETIONS_PER_STEP=3 is not divisible"),
        ({"LAUNCHER": "pdsh"}, "LAUNCHER must be ssh, srun or local"),
        ({"TRAIN_HOSTS": ""}, "multi_node.sh: set TRAIN_HOSTS"),
        ({"TRAIN_HOSTS": "  "}, "multi_node.sh: set TRAIN_HOSTS"),
        ({"VLLM_HOST": ""}, "multi_node.sh: set VLLM_HOST"),
    ],
)
def test_multi_node_bad_settings_exit_2_before_starting_anything(tmp_path, env, message):
    """Exit status 2 for bad settings, as the launcher's header and docs/TRAINING.md say (not bash's 1 of ${VAR:?})."""
    run = MultiNode(tmp_path)
    result = run.run(SERVER_CMD=run.stub_server(), TRAIN_CMD=run.children("0=ok,1=ok"), **env)
    assert result.returncode == 2 and message in result.stderr, (result.returncode, result.stderr)
    assert not (run.logs / "vllm_server.pid").exists()


@pytest.mark.parametrize(
    ("argv", "message"), [([], "multi_node.sh: usage:"), (["no-such.yaml"], "recipe no-such.yaml not found")]
)
def test_multi_node_missing_or_wrong_recipe_exits_2(tmp_path, argv, message):
    run = MultiNode(tmp_path)
    result = subprocess.run(["bash", str(LAUNCH / "multi_node.sh"), *argv], cwd=tmp_path, env=run.env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, (result.returncode, result.stderr)


def _stub_venv(tmp_path: Path, run: MultiNode) -> Path:
    """A STUB environment: the real python, and `vllm` / `accelerate` that record argv (and env) instead of
    serving or training, since `vllm serve` with NCCL weight transfer and server-mode training need CUDA."""
    bin_dir = tmp_path / "stub-venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\nexec {sys.executable} "$@"\n')  # keeps the venv's packages
    record = tmp_path / "argv"
    record.mkdir()
    recorder = tmp_path / "record_argv.py"
    recorder.write_text(
        "import json, os, sys\n"
        "name, argv = sys.argv[1], sys.argv[2:]\n"
        "if name == 'accelerate':\n"
        "    name += '-' + argv[argv.index('--machine_rank') + 1]\n"
        f"with open(os.path.join({str(record)!r}, name + '.json'), 'w') as fh:\n"
        "    json.dump({'argv': argv, 'dev_mode': os.environ.get('VLLM_SERVER_DEV_MODE'),\n"
        "               'env': {k: os.environ.get(k) for k in ('VLLM_HOST_IP', 'PYTORCH_CUDA_ALLOC_CONF')}}, fh)\n"
    )
    (bin_dir / "vllm").write_text(
        f'#!/usr/bin/env bash\n{sys.executable} {recorder} vllm "$@"\nexec {run.stub_server()}\n'
    )
    (bin_dir / "accelerate").write_text(f'#!/usr/bin/env bash\nexec {sys.executable} {recorder} accelerate "$@"\n')
    for tool in ("python", "vllm", "accelerate"):
        (bin_dir / tool).chmod(0o755)
    return tmp_path / "stub-venv"


def test_multi_node_default_commands_match_trl(tmp_path, tiny_model_dir):
    """The default server command is TRL 1.16's `vllm serve` (its build_command's flags), the training command
    parses with the project's TrlParser and points at that server."""
    trl_serve = pytest.importorskip("trl.scripts.vllm_serve")
    from test_training import parse

    run = MultiNode(tmp_path, model=tiny_model_dir)
    venv = _stub_venv(tmp_path, run)
    # 4 completions per step = 1 per device x 2 processes x 2 accumulation steps (the parse below sees 1 process)
    result = run.run(VENV=str(venv), ALLOW_NO_CUDA="1", VLLM_TP="1", VLLM_SERVE_ARGS="--enforce-eager",
                     COMPLETIONS_PER_STEP="4", PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True,max_split_size_mb:512")  # fmt: skip
    assert result.returncode == 0, result.stderr
    served = json.loads((tmp_path / "argv" / "vllm.json").read_text())
    assert served["dev_mode"] == "1"  # TRL's weight-transfer endpoints live behind vLLM's dev mode
    ours = served["argv"]
    assert ours[:2] == ["serve", tiny_model_dir] and ours[-1] == "--enforce-eager"
    theirs = trl_serve.build_command(
        trl_serve.ScriptArguments(model=tiny_model_dir, port=run.port, host="0.0.0.0", max_model_len=43008)
    )
    theirs = theirs[theirs.index("serve") :]

    def options(argv: list[str]) -> dict:
        found, i = {}, 0
        while i < len(argv):
            if argv[i].startswith("--"):
                has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
                found[argv[i]] = argv[i + 1] if has_value else True
                i += 2 if has_value else 1
            else:
                i += 1
        return found

    mine, trl = options(ours), options(theirs)
    assert json.loads(mine.pop("--weight-transfer-config")) == json.loads(trl.pop("--weight-transfer-config"))
    for flag in ("--logprobs-mode", "--max-logprobs", "--host", "--port", "--tensor-parallel-size",
                 "--data-parallel-size", "--max-model-len", "--gpu-memory-utilization"):  # fmt: skip
        assert mine[flag] == trl[flag], flag
    assert ("--enable-scale-out" in mine) == ("--enable-scale-out" in trl)
    assert set(mine) - set(trl) == {"--enforce-eager"}  # nothing TRL does not pass, besides VLLM_SERVE_ARGS

    for rank in (0, 1):
        argv = json.loads((tmp_path / "argv" / f"accelerate-{rank}.json").read_text())["argv"]
        script = argv.index("train/grpo_agg.py")
        launch = dict(zip(argv[1:script:2], argv[2:script:2]))
        assert argv[0] == "launch" and launch == {
            "--config_file": "configs/accelerate/multi_node.yaml", "--num_machines": "2", "--num_processes": "2",
            "--machine_rank": str(rank), "--main_process_ip": "node-a", "--main_process_port": "29500"}  # fmt: skip
        config = argv[script + 2]
        script_args, training_args, _ = parse(argv[script + 1 :])
        assert config == str(SMOKE)
        assert (training_args.use_vllm, training_args.vllm_mode) == (True, "server")
        assert (training_args.vllm_server_host, training_args.vllm_server_port) == ("127.0.0.1", run.port)
        assert training_args.vllm_group_port == 51216
        assert (training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps) == (1, 2)
        env = json.loads((tmp_path / "argv" / f"accelerate-{rank}.json").read_text())["env"]
        # the weight-sync NCCL group is opened on the first training host, at its address towards the server
        assert env["VLLM_HOST_IP"] == ("127.0.0.1" if rank == 0 else None)
        assert env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"  # expandable segments break sleep mode
    served_env = json.loads((tmp_path / "argv" / "vllm.json").read_text())["env"]
    assert served_env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512" and served_env["VLLM_HOST_IP"] is None
    run.assert_all_stopped()


@pytest.mark.skipif(bool(__import__("shutil").which("nvidia-smi")), reason="checks the refusal on a CPU machine")
def test_multi_node_refuses_server_mode_without_a_gpu(tmp_path):
    run = MultiNode(tmp_path / "default-training")
    # the real default training command on the training nodes, a stub server: the nodes refuse before accelerate
    result = run.run(SERVER_CMD=run.stub_server())
    assert result.returncode == 3, result.stderr
    assert "failed (exit 3)" in result.stderr
    assert "vLLM server mode needs CUDA" in result.stderr and "NCCL" in result.stderr
    run.assert_all_stopped()
    # and the default server command refuses too, before any training node starts
    run = MultiNode(tmp_path / "default-server")
    result = run.run(TRAIN_CMD=run.children("0=ok,1=ok"))
    assert result.returncode == 3, result.stderr
    assert "vllm_server on" in result.stderr and "ALLOW_NO_CUDA=1" in result.stderr
    assert not list(run.out.iterdir())


# ----- multi_node.sh against a real vLLM server (slow) --------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fail", [False, True], ids=["children-succeed", "rank1-fails"])
def test_multi_node_with_a_real_vllm_server(tmp_path, tiny_model_dir, fail):
    pytest.importorskip("vllm")
    run = MultiNode(tmp_path, model=tiny_model_dir)
    server = (f"{sys.executable} -m vllm.entrypoints.openai.api_server --model {tiny_model_dir} "
              f"--served-model-name tiny --host 127.0.0.1 --port {run.port} --dtype float32 --max-model-len 1024 "
              "--kv-cache-memory-bytes 268435456 --enforce-eager --distributed-executor-backend uni")  # fmt: skip
    actions = "0=sleep,1=fail:9" if fail else "0=ok,1=ok"
    result = run.run(timeout=600, SERVER_CMD=server, HEALTH_TIMEOUT="400",
                     TRAIN_CMD=run.children(actions, url=f"http://127.0.0.1:{run.port}/v1"))  # fmt: skip
    assert result.returncode == (9 if fail else 0), result.stderr[-3000:]
    texts = [run.rank(r)["text"] for r in (0, 1)]
    assert texts[0] == texts[1] and texts[0], "both nodes got the same greedy completion from the real server"
    assert "vLLM server healthy" in result.stderr and "stopping the vLLM server" in result.stderr
    run.assert_all_stopped()


# ----- single_node_colocate.sh ----------------------------------------------------------------------------------
def test_single_node_dry_run_prints_a_command_that_parses(tmp_path):
    from test_training import parse

    zero3 = REPO / "configs" / "accelerate" / "zero3.yaml"
    result = subprocess.run(["bash", str(LAUNCH / "single_node_colocate.sh"), str(SMOKE), str(zero3), "--max_steps",
                             "7"], env={**os.environ, "DRY_RUN": "1", "NUM_GPUS": "4", "VENV": VENV,
                                        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "dropping expandable_segments (it breaks vLLM's sleep mode)" in result.stderr
    argv = shlex.split(result.stdout)
    assert argv[:6] == [f"{VENV}/bin/accelerate", "launch", "--config_file", str(zero3), "--num_processes", "4"]
    assert argv[6] == "train/grpo_agg.py"
    assert parse(argv[7:])[1].max_steps == 7


@pytest.mark.parametrize(("env", "args", "message"), [
    ({"NUM_GPUS": "0"}, [], "no GPU found"),
    ({"NUM_GPUS": "2"}, ["no/such.yaml"], "recipe no/such.yaml not found"),
    ({"NUM_GPUS": "2"}, [str(SMOKE), "no/such.yaml"], "accelerate config no/such.yaml not found"),
])  # fmt: skip
def test_single_node_bad_input_exits_2(env, args, message):
    result = subprocess.run(["bash", str(LAUNCH / "single_node_colocate.sh"), *args],
                            env={**os.environ, "DRY_RUN": "1", **env}, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and message in result.stderr


# ----- eval_sweep.sh: real `rsa eval` runs on copies of the tiny model -----------------------------------------
EVAL_ARGS = ["--engine", "hf", "--dataset", "rg:basic_arithmetic", "--limit", "2", "--population", "2", "--k", "2",
             "--steps", "2", "--max-new-tokens", "8", "--dtype", "float32", "--no-progress"]  # fmt: skip


@pytest.mark.slow
def test_eval_sweep_skips_finished_resumes_and_skips_lora(tmp_path, tiny_model_dir):
    import shutil

    output = tmp_path / "outputs" / "toy"
    for step in (10, 2):
        shutil.copytree(tiny_model_dir, output / f"checkpoint-{step}")
    lora = output / "checkpoint-20"  # an adapter-only checkpoint: no config.json
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (output / "checkpoint-final-copy").mkdir()  # not checkpoint-N: ignored
    runs = tmp_path / "sweep"
    env = {**os.environ, "VENV": VENV, "RUNS_DIR": str(runs), "PYTHONPATH": str(REPO)}

    def sweep():
        result = subprocess.run(["bash", str(LAUNCH / "eval_sweep.sh"), str(output), *EVAL_ARGS], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=900)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr

    first = sweep()
    order = [line.split(":")[0] for line in first.splitlines() if line.startswith("== checkpoint-")]
    assert order == ["== checkpoint-2", "== checkpoint-10", "== checkpoint-20"]  # step order, not text order
    assert "checkpoint-20: no config.json (a LoRA adapter?)" in first
    assert sorted(p.name for p in runs.iterdir()) == ["checkpoint-10", "checkpoint-2", "report"]
    for name in ("checkpoint-2", "checkpoint-10"):
        manifest = json.loads((runs / name / "manifest.json").read_text())  # the run of that checkpoint
        assert (manifest["model"]["path"], manifest["engine"]) == (str(output / name), "hf")
        config = manifest["config"]
        assert (config["population"], config["k"], config["steps"], config["dataset"]) == (
            2,
            2,
            2,
            "rg:basic_arithmetic",
        )
        assert manifest["problems"]["count"] == 2  # --limit 2
        assert (runs / name / "final.json").is_file()
    report = (runs / "report" / "report.md").read_text()
    assert "checkpoint-2" in report and "checkpoint-10" in report
    finished = {name: (runs / name / "final.json").read_bytes() for name in ("checkpoint-2", "checkpoint-10")}

    # an interrupted run: the manifest is there, the final record is not -> resumed (rsa eval --resume_if_exists
    # decides), the finished one left as it is
    (runs / "checkpoint-10" / "final.json").unlink()
    second = sweep()
    assert (
        f"checkpoint-10: rsa eval --model {output / 'checkpoint-10'} --out {runs / 'checkpoint-10'} --resume_if_exists"
        in second
    )
    assert f"{runs / 'checkpoint-10'}: all 2 steps are already done" in second  # only final.json is written again
    assert (runs / "checkpoint-2" / "final.json").read_bytes() == finished["checkpoint-2"]
    assert json.loads((runs / "checkpoint-10" / "final.json").read_text()) == json.loads(finished["checkpoint-10"])


def test_eval_sweep_without_checkpoints_exits_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(["bash", str(LAUNCH / "eval_sweep.sh"), str(empty)], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "VENV": VENV}, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "no checkpoint-*/ directories" in result.stderr
    result = subprocess.run(["bash", str(LAUNCH / "eval_sweep.sh"), str(tmp_path / "missing")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "is not a directory" in result.stderr


# ----- SLURM scripts: syntax, #SBATCH lines, and runs with stub scontrol / srun --------------------------------
SBATCH = sorted((LAUNCH / "slurm").glob("*.sbatch"))


@pytest.mark.parametrize("script", SBATCH, ids=lambda p: p.name)
def test_sbatch_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    lines = script.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    directives = [line for line in lines if line.startswith("#SBATCH")]
    # sbatch reads #SBATCH lines only before the first command
    assert directives and all(line in lines[:first_command] for line in directives)
    assert all(re.fullmatch(r"#SBATCH --[a-z-]+(=\S+)?", line) for line in directives), directives
    assert "#SBATCH --requeue" in directives


def _slurm_stubs(tmp_path: Path, hosts: list[str]) -> dict:
    """STUB scontrol (prints HOSTS) and srun (records its argv, drops its options and runs the step here)."""
    stubs = tmp_path / "slurm-stubs"
    stubs.mkdir()
    (stubs / "scontrol").write_text("#!/usr/bin/env bash\n" + "".join(f"echo {h}\n" for h in hosts))
    (stubs / "srun").write_text(
        "#!/usr/bin/env bash\n"
        f"printf '%s\\n' \"$*\" >> {tmp_path}/srun.argv\n"
        'while [[ "$1" == --* ]]; do shift; done\n'
        'exec "$@"\n'
    )
    for tool in ("scontrol", "srun"):
        (stubs / tool).chmod(0o755)
    work = tmp_path / "submit"  # the submission directory (the scripts write logs/ there)
    work.mkdir()
    (work / "launch").symlink_to(LAUNCH)
    return {"PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[0-2]", "SLURM_JOB_ID": "4242"}


def test_multi_node_sbatch_under_stub_slurm(tmp_path):
    run = MultiNode(tmp_path)
    # the first "node" is this machine's loopback address, so that the health check reaches the stub server
    env = {**run.env, **_slurm_stubs(tmp_path, ["127.0.0.1", "gpu-1", "gpu-2"]), "SLURM_GPUS_ON_NODE": "1",
           "SERVER_CMD": run.stub_server(), "TRAIN_CMD": run.children("0=ok,1=ok")}  # fmt: skip
    for key in ("LAUNCHER", "TRAIN_HOSTS", "GPUS_PER_NODE", "LOG_DIR", "VLLM_HOST"):
        env.pop(key)  # the sbatch script sets them from the allocation
    result = subprocess.run(["bash", str(LAUNCH / "slurm" / "multi_node.sbatch"), str(SMOKE)], cwd=tmp_path / "submit",
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    logs = tmp_path / "submit" / "logs" / "multi_node-4242"
    steps = sorted((tmp_path / "srun.argv").read_text().splitlines())  # the nodes' steps start concurrently
    assert steps == [
        f"--nodes=1 --ntasks=1 --nodelist=127.0.0.1 --gpus-per-node=1 setsid -w bash {logs}/vllm_server.sh",
        f"--nodes=1 --ntasks=1 --nodelist=gpu-1 --gpus-per-node=1 setsid -w bash {logs}/train_node0.sh",
        f"--nodes=1 --ntasks=1 --nodelist=gpu-2 --gpus-per-node=1 setsid -w bash {logs}/train_node1.sh",
    ]
    assert [run.rank(r)["health"] for r in (0, 1)] == [200, 200]
    assert "--main_process_port" not in (logs / "train_node0.sh").read_text()  # TRAIN_CMD replaced accelerate
    run.logs = logs
    run.assert_all_stopped()


def test_single_node_sbatch_under_stub_slurm(tmp_path):
    env = {**os.environ, **_slurm_stubs(tmp_path, ["gpu-0"]), "SLURM_GPUS_ON_NODE": "4", "DRY_RUN": "1", "VENV": VENV}
    zero2 = REPO / "configs" / "accelerate" / "zero2.yaml"
    result = subprocess.run(["bash", str(LAUNCH / "slurm" / "single_node.sbatch"), str(SMOKE), str(zero2)],
                            cwd=tmp_path / "submit", env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout)[1:6] == ["launch", "--config_file", str(zero2), "--num_processes", "4"]


# ----- every shell launcher parses; gpu_check.sh refuses a machine without CUDA ---------------------------------
@pytest.mark.parametrize("script", sorted(LAUNCH.glob("*.sh")), ids=lambda p: p.name)
def test_shell_launchers_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(bool(__import__("shutil").which("nvidia-smi")), reason="checks the refusal on a CPU machine")
def test_gpu_check_refuses_a_machine_without_cuda(tmp_path):
    result = subprocess.run(["bash", str(LAUNCH / "gpu_check.sh")], env={**os.environ, "OUT": str(tmp_path),
                            "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1
    assert "FAIL environment" in result.stdout and "torch.cuda.is_available() is False" in result.stderr
