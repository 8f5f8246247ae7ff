"""An environment report for bug reports (`rsa env`): rsa-rl, Python, platform, the packages that shape results,
and what the machine offers (CUDA, vLLM, the sandbox's bubblewrap)."""

from __future__ import annotations

import importlib.util
import platform
import shutil

from rsa import __version__
from rsa.provenance import package_versions


def environment_report() -> dict[str, str]:
    """Name -> value lines describing this installation and machine (packages not installed say so)."""
    report = {
        "rsa-rl": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "cpu cores": str(_cpu_count()),
    }
    for name, version in package_versions().items():
        if name not in ("python", "rsa-rl"):
            report[name] = version or "not installed"
    report["torch device"] = _torch_device()
    report["vllm module"] = "present" if importlib.util.find_spec("vllm") is not None else "absent"
    report["bubblewrap (code sandbox)"] = shutil.which("bwrap") or "not found (the sandbox falls back to rlimits)"
    return report


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _torch_device() -> str:
    """`cuda x N (<first GPU>, CUDA <version>)`, or `cpu` with the reason CUDA is unavailable."""
    if importlib.util.find_spec("torch") is None:
        return "torch not installed"
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return f"cuda x {torch.cuda.device_count()} ({name}, CUDA {torch.version.cuda})"
    built = torch.version.cuda
    return f"cpu (torch built {'with CUDA ' + built + ', no GPU visible' if built else 'for CPU only'})"


def format_report(report: dict[str, str]) -> str:
    """The report as Markdown list lines, ready to paste into an issue."""
    return "\n".join(f"- {name}: {value}" for name, value in report.items())
