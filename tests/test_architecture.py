"""The module layering of docs/ARCHITECTURE.md, enforced: what each module may not import.

Every `import rsa...` anywhere in a module counts (also inside functions), except under
`if TYPE_CHECKING:`, which is for annotations only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rsa"

# module prefix -> rsa modules it must not import (prefix match); "rsa" alone forbids every rsa import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "rsa.types": ("rsa",),
    "rsa.jsonl": ("rsa",),
    "rsa.stats": ("rsa",),
    "rsa.memory": ("rsa",),
    "rsa.progress": ("rsa",),
    "rsa.seeds": ("rsa",),
    "rsa.methods": ("rsa",),
    "rsa.sandbox": ("rsa.tasks", "rsa.engines", "rsa.loop", "rsa.runs", "rsa.grpo_setup", "rsa.configs"),
    "rsa.tasks": (
        "rsa.engines",
        "rsa.loop",
        "rsa.runs",
        "rsa.augment",
        "rsa.grpo_setup",
        "rsa.configs",
        "rsa.evaluate",
        "rsa.rewards",
        "rsa.rows",
        "rsa.data",
    ),  # fmt: skip
    "rsa.engines": ("rsa.tasks", "rsa.loop", "rsa.runs", "rsa.augment", "rsa.grpo_setup", "rsa.configs", "rsa.data"),
    "rsa.fitting": ("rsa.loop", "rsa.prompts", "rsa.runs", "rsa.augment", "rsa.configs", "rsa.engines"),
    "rsa.prompts": ("rsa.loop", "rsa.schedule", "rsa.runs", "rsa.augment", "rsa.grpo_setup", "rsa.configs", "rsa.data"),
    "rsa.schedule": (
        "rsa.loop",
        "rsa.tasks",
        "rsa.runs",
        "rsa.augment",
        "rsa.grpo_setup",
        "rsa.configs",
        "rsa.evaluate",
        "rsa.data",
    ),  # fmt: skip
    "rsa.loop": ("rsa.runs", "rsa.augment", "rsa.grpo_setup", "rsa.configs", "rsa.evaluate", "rsa.data"),
    "rsa.metrics": ("rsa.engines", "rsa.runs", "rsa.augment", "rsa.grpo_setup", "rsa.configs"),
    "rsa.rows": ("rsa.augment", "rsa.grpo_setup", "rsa.rewards", "rsa.engines", "rsa.loop", "rsa.data"),
    "rsa.rewards": ("rsa.grpo_setup", "rsa.augment", "rsa.engines", "rsa.loop", "rsa.runs"),
    "rsa.data": ("rsa.engines", "rsa.loop", "rsa.runs", "rsa.augment", "rsa.grpo_setup", "rsa.configs"),
    "rsa.runs": ("rsa.augment", "rsa.grpo_setup", "rsa.configs", "rsa.evaluate"),
    "rsa.augment": ("rsa.configs", "rsa.evaluate", "rsa.grpo_setup", "rsa.build_dataset", "rsa.toyworld"),
    "rsa.configs": ("rsa.evaluate", "rsa.build_dataset", "rsa.grpo_setup", "rsa.toyworld"),
    "rsa.grpo_setup": ("rsa.augment", "rsa.configs", "rsa.evaluate", "rsa.toyworld", "rsa.loop"),
    "rsa.report": ("rsa.engines", "rsa.loop", "rsa.grpo_setup", "rsa.augment"),
    "rsa.publish": ("rsa.engines", "rsa.loop", "rsa.grpo_setup", "rsa.configs"),
    "rsa.serve": ("rsa.grpo_setup", "rsa.evaluate", "rsa.runs", "rsa.toyworld"),
}
# no library module reaches up into the command-line layer
CLI_LAYER = ("rsa.cli", "rsa.commands")
# heavy stacks that `import rsa.<module>` must not pull in at import time (the trainer module excepted)
HEAVY = ("trl", "deepspeed", "peft", "accelerate", "vllm", "torch", "transformers")
HEAVY_ALLOWED = ("rsa.grpo_setup",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(every imported module name outside TYPE_CHECKING blocks, the module-level ones)."""
    everywhere, top = set(), set()

    def visit(node: ast.AST, level: int) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, level)
            return
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        everywhere.update(names)
        if level == 0:
            top.update(names)
        nested = level + isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        for child in ast.iter_child_nodes(node):
            visit(child, nested)

    for statement in tree.body:
        visit(statement, 0)
    return everywhere, top


MODULES = {_module_name(p): _imports(ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PACKAGE.rglob("*.py"))}


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layering_violations(modules: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    """Every import that the rules above forbid, as 'module imports name' lines."""
    problems = []
    for module, (everywhere, top) in modules.items():
        own = module if module.count(".") < 2 else ".".join(module.split(".")[:2])
        for prefix, forbidden in FORBIDDEN.items():
            if not _matches(module, prefix):
                continue
            for name in everywhere:
                if name.startswith("rsa") and not _matches(name, own) and any(_matches(name, f) for f in forbidden):
                    problems.append(f"{module} imports {name} ({prefix} must not import {', '.join(forbidden)})")
        if not any(_matches(module, layer) for layer in CLI_LAYER):
            problems += [f"{module} imports {n} (the CLI layer)" for n in everywhere if n.startswith(CLI_LAYER)]
        if module not in HEAVY_ALLOWED:
            problems += [f"{module} imports {n} at module level" for n in top if n.split(".")[0] in HEAVY]
    return sorted(problems)


def test_module_layering():
    assert len(MODULES) > 40  # the walk found the package
    assert not layering_violations(MODULES), "\n".join(layering_violations(MODULES))


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from rsa.loop import RSALoop", "rsa.engines.hf", "rsa.engines.hf imports rsa.loop"),
        ("def f():\n    from rsa.cli import main", "rsa.runs", "rsa.runs imports rsa.cli (the CLI layer)"),
        ("import torch", "rsa.metrics", "rsa.metrics imports torch at module level"),
        ("import rsa.tasks", "rsa.types", "rsa.types imports rsa.tasks"),
        ("from rsa.engines import Engine", "rsa.seeds", "rsa.seeds imports rsa.engines"),
        ("from rsa.loop import Member", "rsa.schedule", "rsa.schedule imports rsa.loop"),
        ("from rsa.loop import Member", "rsa.prompts", "rsa.prompts imports rsa.loop"),
    ],
)
def test_layering_rules_catch_violations(source, module, expected):
    found = layering_violations({module: _imports(ast.parse(source))})
    assert any(p.startswith(expected) for p in found), found


def test_type_checking_imports_do_not_count():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rsa.loop import Member\n"
    assert layering_violations({"rsa.fitting": _imports(ast.parse(source))}) == []


def test_every_sandbox_module_is_under_the_sandbox_rule_and_the_harness_imports_nothing_from_rsa():
    sandbox = sorted(m for m in MODULES if _matches(m, "rsa.sandbox"))
    assert {"rsa.sandbox.isolation", "rsa.sandbox.grading", "rsa.sandbox.cleanup", "rsa.sandbox.runner"} <= set(sandbox)
    # the harness runs inside bubblewrap as `python -I -S harness.py`, where no `rsa` exists (docs/SANDBOX.md)
    everywhere, _ = MODULES["rsa.sandbox.harness"]
    assert everywhere and not [n for n in everywhere if _matches(n, "rsa")], everywhere
