"""Task registry: `get_task(name)` returns the shared `Task` object for a task family."""

from __future__ import annotations

import importlib

from rsa.tasks.base import CORRECT_SCORE, Conversation, Message, Problem, Task

# name -> "module:Class"; modules are imported on first use so `import rsa` stays light.
_REGISTRY: dict[str, str] = {
    "math": "rsa.tasks.math:MathTask",
    "rg": "rsa.tasks.reasoning_gym:ReasoningGymTask",
    "mcq": "rsa.tasks.mcq:MultipleChoiceTask",
    "toy": "rsa.tasks.toy:ToyArithmeticTask",
    "pick": "rsa.tasks.pick:PickTask",
    "code": "rsa.tasks.code:CodeTask",
}
_ALIASES = {"reasoning_gym": "rg", "reasoning-gym": "rg", "multiple_choice": "mcq"}
_INSTANCES: dict[str, Task] = {}


def register_task(name: str, target: str) -> None:
    """Register a task class given as "module:Class" under `name`."""
    _REGISTRY[name] = target
    _INSTANCES.pop(name, None)


def task_names() -> list[str]:
    """Names of all registered tasks."""
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """The task registered under `name` (aliases allowed); ValueError listing known names otherwise."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    if key not in _INSTANCES:
        module_name, class_name = _REGISTRY[key].split(":")
        _INSTANCES[key] = getattr(importlib.import_module(module_name), class_name)()
    return _INSTANCES[key]


__all__ = ["CORRECT_SCORE", "Conversation", "Message", "Problem", "Task", "get_task", "register_task", "task_names"]
