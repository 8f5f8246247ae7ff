"""The module layering of docs/ARCHITECTURE.md, enforced: what each module may not import.

Every `import rsa...` anywhere in a module counts (also inside functions), except under
`if TYPE_CHECKING:`, which is for annotations only. Imports are followed transitively: a module that
imports `b`, which imports `c`, imports `c` too, and importing `a.b.c` runs the packages `a` and `a.b`
first. So a rule such as "training does not import the loop" fails however the loop is reached.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rsa"

# module prefix -> rsa modules it must not import (prefix match); "rsa" alone forbids every rsa import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "rsa.types": ("rsa",),
    "rsa.jsonl": ("rsa",),
    "rsa.provenance": (
        "rsa.loop",
        "rsa.engines",
        "rsa.runs",
        "rsa.evaluate",
        "rsa.augment",
        "rsa.grpo_setup",
        "rsa.configs",
    ),
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
    "rsa.augment": ("rsa.configs", "rsa.evaluate", "rsa.grpo_setup", "rsa.build_dataset", "rsa.toyworld", "rsa.runs"),
    "rsa.configs": ("rsa.evaluate", "rsa.build_dataset", "rsa.grpo_setup", "rsa.toyworld"),
    "rsa.grpo_setup": ("rsa.augment", "rsa.configs", "rsa.evaluate", "rsa.toyworld", "rsa.loop", "rsa.runs"),
    "rsa.report": ("rsa.engines", "rsa.loop", "rsa.grpo_setup", "rsa.augment"),
    "rsa.publish": ("rsa.engines", "rsa.loop", "rsa.grpo_setup", "rsa.configs"),
    "rsa.serve": ("rsa.grpo_setup", "rsa.evaluate", "rsa.runs", "rsa.toyworld"),
}
# no library module reaches up into the command-line layer
CLI_LAYER = ("rsa.cli", "rsa.commands")
# heavy stacks that `import rsa.<module>` must not pull in at import time (the trainer module excepted)
HEAVY = ("trl", "deepspeed", "peft", "accelerate", "vllm", "torch", "transformers")
HEAVY_ALLOWED = ("rsa.grpo_setup", "rsa.train")  # the GRPO parts, and the training entry that runs them


def _module_name(path: Path, base: Path = REPO) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
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


def package_imports(root: Path) -> dict[str, tuple[set[str], set[str]]]:
    """module name -> its imports (`_imports`), for every module of the package in `root`."""
    return {
        _module_name(p, root.parent): _imports(ast.parse(p.read_text(encoding="utf-8")))
        for p in sorted(root.rglob("*.py"))
    }


MODULES = package_imports(PACKAGE)


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# (module prefix, forbidden prefix) -> why the module may reach it INDIRECTLY (a direct import still fails)
INDIRECT_ALLOWED: dict[tuple[str, str], str] = {
    ("rsa.report", "rsa.loop"): "a run's records are read back as rsa.loop.Member (through rsa.runs)",
    ("rsa.report", "rsa.engines"): "rsa.loop's engine interface, reached through rsa.runs",
    ("rsa.publish", "rsa.loop"): "through rsa.report (run records) and the rsa.augment package (the candidate store)",
    ("rsa.publish", "rsa.engines"): "through rsa.report and the rsa.augment package (candidates are sampled by one)",
}


def _packages(name: str) -> list[str]:
    """`name` and the packages above it, outermost first: importing `a.b.c` runs `a` and `a.b` first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_graph(modules: dict[str, tuple[set[str], set[str]]], *, top_level: bool = False) -> dict[str, set[str]]:
    """module -> the modules of `modules` that importing it runs directly (`top_level`: at import time only)."""
    graph = {}
    for module, (everywhere, top) in modules.items():
        names = top if top_level else everywhere
        graph[module] = {p for name in names for p in _packages(name) if p in modules and p != module}
    return graph


def reached(graph: dict[str, set[str]], module: str) -> dict[str, list[str]]:
    """Every module that importing `module` runs, transitively, with the import chain that reaches it first."""
    chains = {module: [module]}
    queue = deque([module])
    while queue:
        current = queue.popleft()
        for name in sorted(graph.get(current, ())):
            if name not in chains:
                chains[name] = [*chains[current], name]
                queue.append(name)
    return chains


def _via(chain: list[str]) -> str:
    return f" (via {' -> '.join(chain[1:-1])})" if len(chain) > 2 else ""


def layering_violations(modules: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    """Every import, direct or indirect, that the rules above forbid, as 'module imports name (via ...)' lines."""
    graph, top_graph = import_graph(modules), import_graph(modules, top_level=True)
    problems = []
    for module, (everywhere, top) in modules.items():
        own = module if module.count(".") < 2 else ".".join(module.split(".")[:2])
        # what importing `module` runs: the imported names (also those outside `modules`) and what they import
        chains = {name: [module, name] for name in everywhere if name.startswith("rsa")}
        for name, chain in reached(graph, module).items():
            chains.setdefault(name, chain)
        chains.pop(module, None)
        for name in _packages(module)[:-1]:  # its own packages run first; they are not its choice
            chains.pop(name, None)
        for prefix, forbidden in FORBIDDEN.items():
            if not _matches(module, prefix):
                continue
            for name, chain in sorted(chains.items()):
                if _matches(name, own) or not any(_matches(name, f) for f in forbidden):
                    continue
                if len(chain) > 2 and any(_matches(module, m) and _matches(name, f) for m, f in INDIRECT_ALLOWED):
                    continue
                problems.append(
                    f"{module} imports {name}{_via(chain)} ({prefix} must not import {', '.join(forbidden)})"
                )
        if not any(_matches(module, layer) for layer in CLI_LAYER):
            problems += [
                f"{module} imports {name}{_via(chain)} (the CLI layer)"
                for name, chain in sorted(chains.items())
                if name.startswith(CLI_LAYER)
            ]
        if module not in HEAVY_ALLOWED:
            at_import = {n: [module, n] for n in top}
            for name, chain in reached(top_graph, module).items():
                if name != module:
                    at_import.update({n: [*chain, n] for n in modules[name][1]})
            problems += [
                f"{module} imports {name}{_via(chain)} at module level"
                for name, chain in sorted(at_import.items())
                if name.split(".")[0] in HEAVY
            ]
    return sorted(set(problems))


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


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root / "rsa"


def test_indirect_import_is_caught(tmp_path):
    """A throw-away `rsa` package where the training setup reaches the loop only through another module, lazily."""
    package = _write_package(
        tmp_path,
        {
            "rsa/__init__.py": "",
            "rsa/loop.py": "",
            "rsa/records.py": "def load():\n    from rsa.loop import Member\n",
            "rsa/grpo_setup.py": "from rsa.records import load\n",
        },
    )
    found = layering_violations(package_imports(package))
    assert [p.split(" (rsa.grpo_setup must")[0] for p in found] == ["rsa.grpo_setup imports rsa.loop (via rsa.records)"]
    (package / "records.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import rsa.loop\n")
    assert layering_violations(package_imports(package)) == []  # annotations only: not an import


def test_package_init_counts_as_imported():
    """Importing `rsa.augment.config` runs `rsa/augment/__init__.py` first, and whatever that imports."""
    modules = {
        "rsa.augment": ({"rsa.augment.store"}, {"rsa.augment.store"}),
        "rsa.augment.store": ({"rsa.engines"}, {"rsa.engines"}),
        "rsa.augment.config": (set(), set()),
        "rsa.engines": ({"torch"}, {"torch"}),
        "rsa.metrics": ({"rsa.augment.config"}, set()),
    }
    found = layering_violations(modules)
    assert any(p.startswith("rsa.metrics imports rsa.engines (via rsa.augment -> rsa.augment.store) (") for p in found)
    assert "rsa.augment.store imports torch (via rsa.engines) at module level" in found, found


def test_indirect_exceptions_are_still_needed():
    """Each INDIRECT_ALLOWED entry excuses a path that exists: drop it once the code no longer needs it."""
    graph = import_graph(MODULES)
    for (module, target), why in INDIRECT_ALLOWED.items():
        reach = {name for m in MODULES if _matches(m, module) for name in reached(graph, m)}
        assert any(_matches(name, target) for name in reach), f"{module} no longer reaches {target} ({why})"


def test_every_sandbox_module_is_under_the_sandbox_rule_and_the_harness_imports_nothing_from_rsa():
    sandbox = sorted(m for m in MODULES if _matches(m, "rsa.sandbox"))
    assert {"rsa.sandbox.isolation", "rsa.sandbox.grading", "rsa.sandbox.cleanup", "rsa.sandbox.runner"} <= set(sandbox)
    # the harness runs inside bubblewrap as `python -I -S harness.py`, where no `rsa` exists (docs/SANDBOX.md)
    everywhere, _ = MODULES["rsa.sandbox.harness"]
    assert everywhere and not [n for n in everywhere if _matches(n, "rsa")], everywhere
