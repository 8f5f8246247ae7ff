"""Sampled candidates: scoring, and the resumable shard store `OUT/candidates/shard_NNNNN.jsonl` + manifest."""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsa.augment.config import CANDIDATES_DIR, MANIFEST, MANIFEST_FORMAT, CandidateConfig, MixConfig
from rsa.engines.base import Engine
from rsa.jsonl import read_jsonl, read_records, write_json_atomic, write_jsonl_atomic
from rsa.provenance import manifest_differences, package_versions, problems_digest
from rsa.seeds import request_seed
from rsa.tasks import CORRECT_SCORE, Problem, get_task
from rsa.tasks.base import PROMPT_VERSION

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One sampled solution of a problem: its text, extracted answer and score."""

    index: int
    text: str
    extracted: str | None
    score: float
    num_tokens: int = 0
    finish_reason: str = "stop"
    seed: int | None = None

    @property
    def correct(self) -> bool:
        """Whether the candidate scores full marks."""
        return self.score >= CORRECT_SCORE


def score_candidate(problem: Problem, index: int, text: str, **fields: Any) -> Candidate:
    """A Candidate of `problem` graded by its task's scorer."""
    task = get_task(problem.task)
    extracted = task.extract(text)
    return Candidate(index, text, extracted, float(task.score_extracted(extracted, problem)), **fields)


def _candidate_record(problem_index: int, problem: Problem, candidate: Candidate, reasoning: str | None) -> dict:
    record = {
        "problem_index": problem_index,
        "problem_id": problem.id,
        "candidate_id": candidate.index,
        "seed": candidate.seed,
        "text": candidate.text,
        "extracted": candidate.extracted,
        "score": candidate.score,
        "num_tokens": candidate.num_tokens,
        "finish_reason": candidate.finish_reason,
    }
    if reasoning:
        record["reasoning"] = reasoning
    return record


class CandidateStore:
    """`OUT/manifest.json` and `OUT/candidates/shard_NNNNN.jsonl`: sampled candidates, one line each.

    Shard i holds the candidates of problems `i*shard_size .. (i+1)*shard_size - 1`, each written whole
    (temporary file, fsync, rename), so a shard file that exists is complete.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir)
        self.manifest_path = self.out / MANIFEST
        self.shard_dir = self.out / CANDIDATES_DIR

    def shard_path(self, shard: int) -> Path:
        """The file of shard `shard`."""
        return self.shard_dir / f"shard_{shard:05d}.jsonl"

    @staticmethod
    def num_shards(num_problems: int, shard_size: int) -> int:
        """How many shards `num_problems` problems make."""
        return (num_problems + shard_size - 1) // shard_size

    def manifest(self) -> dict | None:
        """The manifest, or None when the directory holds no build."""
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def prepare(self, config: CandidateConfig, problems: Sequence[Problem], *, resume: bool) -> None:
        """Create the manifest, or check it for a resumed build (ValueError naming every key that differs)."""
        new = {
            "format": MANIFEST_FORMAT,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "candidates": config.resume_keys(),
            "problems": {"count": len(problems), "sha256": problems_digest(problems)},
            "prompt_version": PROMPT_VERSION,
            "seeds": "request seed = rsa.loop.request_seed(seed, 1, problem_index, candidate_id)",
            "packages": package_versions(),
        }
        old = self.manifest()
        if old is None:
            if self.shard_dir.exists() and any(self.shard_dir.iterdir()):
                raise ValueError(f"{self.shard_dir} holds files but {self.manifest_path} is missing; use a new --out")
            if resume:
                logger.warning("--resume: %s holds no build yet; starting a new one", self.out)
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.manifest_path, new)
            return
        if not resume:
            raise ValueError(f"{self.out} already holds a build; pass --resume to continue it or choose another --out")
        differences = manifest_differences(
            old,
            new,
            config="candidates",
            checked=(("problems", "count"), ("problems", "sha256")),
            ignore=(),
            owner="build",
        )
        if differences:
            raise ValueError(
                f"cannot resume the build in {self.out}: it was made with a different configuration: "
                + "; ".join(differences)
                + ". Repeat the original options or choose another --out"
            )

    def missing_shards(self, problems: Sequence[Problem], shard_size: int, num_candidates: int) -> list[int]:
        """Shards without a complete file (a file with the wrong records is regenerated, with a warning)."""
        missing = []
        for shard in range(self.num_shards(len(problems), shard_size)):
            path = self.shard_path(shard)
            if not path.exists():
                missing.append(shard)
                continue
            start, stop = shard * shard_size, min((shard + 1) * shard_size, len(problems))
            try:
                records = read_jsonl(path)
            except ValueError as exc:
                logger.warning("shard %s is unreadable (%s); generating it again", path, exc)
                missing.append(shard)
                continue
            expected = [(i, problems[i].id) for i in range(start, stop) for _ in range(num_candidates)]
            if [(r.get("problem_index"), r.get("problem_id")) for r in records] != expected:
                logger.warning("shard %s does not hold the expected candidates; generating it again", path)
                missing.append(shard)
        return missing

    def generate(
        self,
        engine: Engine,
        problems: Sequence[Problem],
        config: CandidateConfig,
        shards: Sequence[int],
        *,
        progress: bool = True,
    ) -> None:
        """Sample, score and write the candidates of `shards`: one engine call per shard."""
        from tqdm.auto import tqdm

        for stale in self.shard_dir.glob(".shard_*.tmp"):  # leftovers of a build killed mid-write
            stale.unlink(missing_ok=True)
        total = self.num_shards(len(problems), config.shard_size)
        params = config.sampling_params()
        m = config.num_candidates
        bar = tqdm(
            total=total, initial=total - len(shards), desc="candidate shards", unit="shard", disable=not progress
        )
        try:
            for shard in shards:
                start, stop = shard * config.shard_size, min((shard + 1) * config.shard_size, len(problems))
                conversations, seeds, owners = [], [], []
                for pi in range(start, stop):
                    prompt = get_task(problems[pi].task).plain_prompt(problems[pi])
                    for j in range(m):
                        conversations.append(prompt)
                        seeds.append(request_seed(config.seed, 1, pi, j))
                        owners.append((pi, j))
                generations = engine.generate(conversations, params, seeds=seeds)
                if len(generations) != len(conversations):
                    raise RuntimeError(
                        f"engine returned {len(generations)} completions for {len(conversations)} requests"
                    )
                records = []
                for (pi, j), seed, generation in zip(owners, seeds, generations):
                    candidate = score_candidate(
                        problems[pi],
                        j,
                        generation.text,
                        num_tokens=generation.num_tokens,
                        finish_reason=generation.finish_reason,
                        seed=seed,
                    )
                    records.append(_candidate_record(pi, problems[pi], candidate, generation.reasoning))
                write_jsonl_atomic(self.shard_path(shard), records)
                logger.debug("wrote %s (%d candidates)", self.shard_path(shard), len(records))
                bar.update(1)
        finally:
            bar.close()

    def load(self, problems: Sequence[Problem], shard_size: int, num_candidates: int) -> list[list[Candidate]]:
        """Every problem's candidates, in candidate order; ValueError naming a shard that is missing or wrong."""
        candidates: list[list[Candidate]] = [[] for _ in problems]
        for shard in range(self.num_shards(len(problems), shard_size)):
            path = self.shard_path(shard)
            if not path.exists():
                raise ValueError(f"candidate shard {path} is missing; resume the build to generate it")
            for lineno, record in read_records(path):
                pi = record.get("problem_index")
                if (
                    not isinstance(pi, int)
                    or not 0 <= pi < len(problems)
                    or record.get("problem_id") != problems[pi].id
                ):
                    raise ValueError(
                        f"{path}: line {lineno}: field 'problem_index'/'problem_id' does not match the problems"
                    )
                candidates[pi].append(
                    Candidate(
                        index=int(record["candidate_id"]),
                        text=record["text"],
                        extracted=record.get("extracted"),
                        score=float(record["score"]),
                        num_tokens=int(record.get("num_tokens", 0)),
                        finish_reason=record.get("finish_reason", "stop"),
                        seed=record.get("seed"),
                    )
                )
        for problem, found in zip(problems, candidates):
            if len(found) != num_candidates:
                raise ValueError(
                    f"problem {problem.id!r} has {len(found)} candidates in the shards, expected {num_candidates}"
                )
        return candidates

    def record_build(self, mix: MixConfig, rows: int) -> None:
        """Note the latest dataset build (its mixture options and its number of `rows`) in the manifest."""
        manifest = self.manifest() or {}
        manifest["last_build"] = {"mix": mix.to_dict(), "rows": rows}
        write_json_atomic(self.manifest_path, manifest)
