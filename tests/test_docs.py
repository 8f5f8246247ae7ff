"""The docs cannot drift from the code: every `rsa` command and flag, every training-script option, every
`make` target and every repository path shown in README.md and docs/*.md must exist.

`check_docs` is also run on a deliberately wrong document, to show that it catches each kind of drift.
"""

from __future__ import annotations

import functools
import glob
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOP_LEVEL = (
    "rsa",
    "train",
    "configs",
    "launch",
    "data",
    "docs",
    "benchmarks",
    "experiments",
    "tests",
    "constraints",
    ".ci",
)

_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_INLINE = re.compile(r"`([^`\n]+)`")
_FLAG = re.compile(r"(?<![\w-])(--[a-zA-Z][\w-]*)")
_PATH = re.compile(
    rf"(--out\w*[ =]|output_dir:? ?)?(?<![\w./-])((?:{'|'.join(re.escape(d) for d in TOP_LEVEL)})/[\w./*-]*)"
)
_RSA = re.compile(r"(?:^|[\s;(`=]|\.venv/bin/)rsa\s+([a-z][\w-]*)((?:[^\n|`;#]*))")
_TRAIN = re.compile(r"(?:train/grpo_agg\.py|rsa\s+train|-m\s+rsa\.train)((?:[^\n|`;#]*))")
_MAKE = re.compile(r"(?:^|[\s`(])make\s+([a-z][\w-]*)")


def code_snippets(text: str) -> list[str]:
    """Fenced blocks (backslash continuations joined) and inline code spans of a markdown text."""
    blocks = [block.replace("\\\n", " ") for block in _FENCE.findall(text)]
    prose = _FENCE.sub("", text)
    return blocks + _INLINE.findall(prose)


@functools.cache
def _help(argv: tuple[str, ...]) -> str:
    proc = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, timeout=300, cwd=REPO)
    return proc.stdout + proc.stderr if proc.returncode == 0 else ""


def rsa_commands() -> set[str]:
    """The subcommands `rsa --help` lists."""
    text = _help(("-m", "rsa.cli"))
    listing = text.split("positional arguments:", 1)[-1]
    return set(re.findall(r"^ {4}([a-z][\w-]*)(?:\s|$)", listing, re.M))


def rsa_flags(command: str) -> set[str]:
    """Every option string that `rsa COMMAND --help` shows."""
    return set(_FLAG.findall(_help(("-m", "rsa.cli", command))))


@functools.cache
def training_flags() -> set[str]:
    """Options of the training entry (its TrlParser dataclasses), dashed and underscored."""
    from trl import ModelConfig

    from rsa.grpo_setup import GRPOAggConfig, GRPOAggScriptArguments

    names = set()
    for cls in (GRPOAggScriptArguments, GRPOAggConfig, ModelConfig):
        for name in cls.__dataclass_fields__:
            names |= {f"--{name}", f"--{name.replace('_', '-')}"}
    return names | {"--config", "--help"}


def make_targets() -> set[str]:
    """Targets defined in the Makefile."""
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


def _path_exists(path: str) -> bool:
    path = path.rstrip(".,:)")
    if any(mark in path for mark in ("<", "...", "{")):
        return True  # a placeholder, not a concrete path
    if "*" in path:
        return bool(glob.glob(str(REPO / path)))
    return (REPO / path).exists()


def check_docs(texts: dict[str, str]) -> list[str]:
    """Problems found in the given markdown texts (name -> text): unknown commands, flags, targets, paths."""
    commands = rsa_commands()
    problems = []
    for name, text in texts.items():
        for snippet in code_snippets(text):
            for command, rest in _RSA.findall(snippet):
                if command not in commands:
                    problems.append(f"{name}: `rsa {command}` is not an rsa command")
                    continue
                if command == "train":
                    continue  # the training options are checked below
                known = rsa_flags(command)
                problems += [f"{name}: `rsa {command} {flag}` is not an option" for flag in _FLAG.findall(rest)
                             if flag not in known]  # fmt: skip
            for rest in _TRAIN.findall(snippet):
                problems += [f"{name}: training option {flag} does not exist" for flag in _FLAG.findall(rest)
                             if flag not in training_flags()]  # fmt: skip
            for target in _MAKE.findall(snippet):
                if target not in make_targets():
                    problems.append(f"{name}: `make {target}` is not a Makefile target")
        for output, path in _PATH.findall(text):
            if not output and not _path_exists(path):  # an output folder need not exist
                problems.append(f"{name}: path {path} does not exist")
    return problems


def test_docs_name_only_existing_commands_flags_and_paths():
    problems = check_docs({str(doc.relative_to(REPO)): doc.read_text(encoding="utf-8") for doc in DOCS})
    assert not problems, "\n".join(problems)


def test_the_docs_check_catches_drift():
    wrong = """
Run `rsa eval --model m --no-such-flag` and `rsa frobnicate --x`.

```bash
rsa eval --model M \\
    --dataset aime25 --populaton 16
python train/grpo_agg.py --config configs/recipes/cpu_smoke.yaml --learning_rat 1e-3
make demo-fast
```
See configs/recipes/no_such_recipe.yaml and docs/NOPE.md; configs/recipes/*.yaml is fine.
"""
    problems = check_docs({"WRONG.md": wrong})
    expected = [
        "`rsa eval --no-such-flag` is not an option",
        "`rsa frobnicate` is not an rsa command",
        "`rsa eval --populaton` is not an option",
        "training option --learning_rat does not exist",
        "`make demo-fast` is not a Makefile target",
        "path configs/recipes/no_such_recipe.yaml does not exist",
        "path docs/NOPE.md does not exist",
    ]
    for message in expected:
        assert any(message in p for p in problems), (message, problems)
    assert len(problems) == len(expected), problems
