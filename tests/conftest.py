"""Shared test fixtures. Everything runs offline: no model or dataset is downloaded."""

from __future__ import annotations

import os

# Offline before anything imports huggingface_hub / transformers / datasets.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


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
def fake_engine():
    """Factory of `FakeEngine` instances (see its docstring): `fake_engine(max_model_len=..., fail_on_call=...)`."""
    return FakeEngine
