"""Run directories: the inspectable, resumable record of an evaluation (`rsa.evaluate` is what writes one).

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
naming the file and line, and nothing committed is ever deleted (`rsa eval --resume --repair`,
`rsa.evaluate.repair_metrics`, rebuilds `metrics.jsonl` from the population files). Failed requests are members with an `error`; on resume
the steps from the first one holding a failure are reopened (their lines go back to pending files) and
only the failed members, and the members built on them, are generated again.

One writer at a time: `create` and `check_resumable` take an `flock` on `.lock` in the folder and hold it until
the process ends (the kernel drops it when the process dies, even by kill -9, so it never stays stuck); a
second writer is refused with a RunFolderError naming the holder's pid and host, which the lock file records.

Only the run's own temporary files (`.<name>.<random>.tmp` next to the run's files) are ever removed.
A new run refuses a non-empty folder that holds no run unless asked (`allow_existing`).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import platform
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rsa.jsonl import append_jsonl, cut_torn_tail, read_jsonl, read_jsonl_lines, write_json_atomic, write_jsonl_atomic
from rsa.loop import LoopConfig, Member, Population
from rsa.methods import METHOD_TABLE
from rsa.provenance import manifest_differences, package_versions, problems_digest
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


class RunFolderError(FileExistsError, ValueError):
    """`--out` cannot take a new run: it holds one already, or other files, or is a file."""


# ----- the manifest -------------------------------------------------------------------------------------------
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
    if member.carried_from is not None:  # early stopping: the problem stopped; this is its member of that step
        record["carried_from"] = member.carried_from
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
        carried_from=record.get("carried_from"),
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
            and not METHOD_TABLE[manifest.get("config", {}).get("method", "rsa")].single_aggregation
        )  # fmt: skip
        diffs = [
            d
            for d in manifest_differences(self.manifest, manifest, ignore=OPERATIONAL_KEYS)
            if not (extend and d.startswith("config.steps:"))
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
        cut_torn_tail(path, good)
        for record in lines:
            if not self.step_file(POPULATION_DIR, record["step"]).exists():
                raise ValueError(f"{self.path}: step {record['step']} is committed but its population file is missing")
        return lines

    def read_pending(self, step: int, num_problems: int) -> dict[int, Population]:
        """The (problem index -> members) groups of `step`'s pending file (a later line wins)."""
        path = self.pending_file(step)
        if not path.exists():
            return {}
        lines, good = read_jsonl_lines(path, what="pending group")
        cut_torn_tail(path, good)
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
