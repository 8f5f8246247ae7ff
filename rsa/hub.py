"""Hugging Face Hub plumbing shared by `rsa publish` and the dataset push: names, path scrubbing, upload.

What reaches the Hub must not carry the publisher's machine: models and datasets are named by their Hub id
when they have one, else by their folder or file name (`hub_name`), and JSON metadata files are written as
copies whose absolute paths are cut to their last component (`scrub_paths`). `find_leaks` checks a staged
folder byte for byte for given local paths. `push_folder` refuses before any work when no token is found
or the Hub is switched offline (`check_can_push`), then creates the repository (private if asked), creates
the branch `revision` if needed, and uploads the folder as one commit.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from rsa.jsonl import read_jsonl

logger = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on")
#: a path component: no spaces, quotes or markup (`</think></answer>` in a chat template is not a path)
_COMPONENT = r"[^\s/'\"<>{}|()\[\]*?;,:=]+"
#: an absolute POSIX path (two components or more) or a home-relative one, inside any string
_ABSOLUTE_PATH = re.compile(rf"(?<![\w.:/~-])(?:~|/(?={_COMPONENT}/))(?:/?{_COMPONENT})+/?")
#: keys whose values are templates or text, never paths: kept verbatim
_VERBATIM_KEYS = frozenset({"chat_template"})
#: keys whose values are credentials: a staged copy holds None there (runs made before `rsa eval` stopped
#: recording its `api_key` still carry the key in their manifest)
SECRET_KEYS = frozenset({"api_key", "backend_api_key", "hub_token"})
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def is_hub_id(name: str | None) -> bool:
    """Whether `name` looks like a Hub repository id (`org/name` or `name`) rather than a local path."""
    if not name or name.startswith((".", "/", "~")) or Path(name).exists():
        return False
    return _HUB_ID.fullmatch(name) is not None and ".." not in name


def hub_name(name: str | None) -> str | None:
    """`name` as the card may show it: a Hub id unchanged, a local path reduced to its folder or file name."""
    if name is None:
        return None
    name = str(name)
    if is_hub_id(name):
        return name
    if name.startswith("hf:"):  # rsa.data spec of a Hub dataset: hf:<repo>[:<split>]
        return name
    return Path(name.rstrip("/")).name or name


def scrub_paths(value: Any) -> Any:
    """`value` (JSON-like) with every absolute or home-relative path in its strings cut to its last component, and
    the string value of every credential key (`SECRET_KEYS`) replaced by None."""
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(lambda m: Path(m.group(0).rstrip("/")).name or "", value)
    if isinstance(value, dict):
        return {
            k: None if k in SECRET_KEYS and isinstance(v, str) else v if k in _VERBATIM_KEYS else scrub_paths(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub_paths(v) for v in value]
    return value


def write_scrubbed_json(src: Path, dst: Path) -> bool:
    """Copy the JSON (or JSONL) file `src` to `dst` with paths scrubbed; returns whether anything changed."""
    text = src.read_text(encoding="utf-8")
    if src.suffix == ".jsonl":
        lines = read_jsonl(src)  # split on "\n" only; a bad line is named
        scrubbed = [scrub_paths(x) for x in lines]
        changed = scrubbed != lines
        out = "".join(json.dumps(x) + "\n" for x in scrubbed) if changed else text
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{src}: invalid JSON ({exc.msg}); fix or remove the file before publishing") from None
        scrubbed = scrub_paths(data)
        changed = scrubbed != data
        out = json.dumps(scrubbed, indent=2, ensure_ascii=False) + "\n" if changed else text
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    dst.write_text(out, encoding="utf-8")
    return changed


def local_roots(*paths: str | Path) -> list[str]:
    """The absolute folders whose names must not be uploaded: those of `paths`, the working directory, home."""
    roots = {str(Path(p).resolve()) for p in paths}
    roots |= {str(Path(p).resolve().parent) for p in paths}
    roots |= {str(Path.cwd()), str(Path.home())}
    # one-component folders (/tmp, /root) are common words of tokenizer vocabularies: too short to be evidence
    return sorted(r for r in roots if len(Path(r).parts) > 2)


def find_leaks(folder: str | Path, roots: list[str]) -> list[str]:
    """`file: root` for every file under `folder` whose bytes contain one of the absolute folders `roots`."""
    needles = [(r, r.encode()) for r in roots]
    leaks = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            data = _metadata_bytes(path)
            leaks += [f"{path.relative_to(folder)}: {r}" for r, b in needles if b in data]
    return leaks


def _metadata_bytes(path: Path) -> bytes:
    """The bytes of `path` that can hold text: a safetensors file's JSON header; other weight files are skipped."""
    if path.suffix == ".safetensors":
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            return f.read(min(size, 100 << 20))
    if path.suffix in (".bin", ".pt", ".pth", ".gguf") and path.stat().st_size > 64 << 20:
        logger.debug("%s: a large binary, not searched for local paths", path)
        return b""
    return path.read_bytes()


def hub_offline() -> bool:
    """Whether the Hub is switched offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, now or at import)."""
    if any(os.environ.get(v, "0").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def resolve_token(token: str | None = None) -> str | None:
    """The Hugging Face token: `token`, else HF_TOKEN, else the one saved by `hf auth login`."""
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def check_can_push(token: str | None) -> str:
    """Return the token to push with; ValueError when there is none or the Hub is offline (call before any work)."""
    if hub_offline():
        raise ValueError(
            "the Hugging Face Hub is switched offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): unset it to "
            "push, or use --dry-run to only write the folder and its card"
        )
    token = resolve_token(token)
    if not token:
        raise ValueError(
            "no Hugging Face token: log in with `hf auth login`, set HF_TOKEN, or pass --token; "
            "use --dry-run to only write the folder and its card"
        )
    return token


def push_folder(
    folder: str | Path,
    repo_id: str,
    token: str | None,
    *,
    repo_type: str = "model",
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload with rsa-rl",
) -> str:
    """Create `repo_id` (private if asked; kept if it exists), the branch `revision` if given, upload `folder`.

    Returns the commit URL. ValueError before any request when there is no token or the Hub is offline.
    """
    token = check_can_push(token)
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        repo_type=repo_type,
        folder_path=str(folder),
        revision=revision,
        commit_message=commit_message,
    )
    url = getattr(info, "commit_url", None) or str(info)
    logger.info(
        "pushed %s to %s (%s%s)", folder, url, "private" if private else "public", f", {revision}" * bool(revision)
    )
    return url
