"""Aggregation-aware RL datasets: sample candidates once, wrap them into aggregation prompts, mix with plain ones.

The paper's data augmentation (and AggLM's balanced variant), as a resumable build:

1. Check everything that needs no model: the options, gold answers, and that every question fits the
   length budget (`prompt + max completion <= max model length`, counted with the training model's
   tokenizer and chat template).
2. Sample M candidates per problem from the reference policy (temperature 1.0 by default), in shards: one
   `engine.generate` call per shard of problems, one seed per request (`rsa.loop.request_seed(seed, 1,
   problem_index, j)`, so the candidates are the step-1 population an `rsa eval` run with the same seed,
   engine and problem order would draw). Every candidate is scored by its task's scorer. Each shard is
   written atomically to `OUT/candidates/shard_NNNNN.jsonl`; `OUT/manifest.json` records the configuration.
   A killed build resumes by skipping finished shards and refuses a different configuration, naming the keys.
3. Build examples (`build_examples`): one plain prompt per problem and aggregation prompts over candidate
   sets of K (fixed or a range) drawn without replacement within a set, several distinct sets per problem.
   Each set is classified like AggLM: *easy* (its majority answer is right), *hard* (majority wrong, at
   least one candidate right) or *all_wrong*; sets are selected to meet target class fractions, and plain
   prompts are subsampled so aggregation prompts make up the requested fraction. Candidates that overflow
   the budget are shortened around a visible marker (`rsa.loop.PromptBuilder`, shared with RSA evaluation)
   or the set is dropped (`overflow="drop"`); no prompt over budget is ever written.
4. Write `OUT/train.parquet` (the columns of docs/FORMATS.md plus `set_class`, `truncated_candidates`,
   `prompt_tokens`) and `OUT/build_report.json` (achieved fractions, shortfalls, length histogram).

`import_verl` converts an already-built public aggregation dataset in verl's parquet layout to the same columns.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import statistics
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from rsa.engines.base import Engine, SamplingParams
from rsa.loop import TRUNCATION_MARKER, ContextBudgetError, Member, PromptBuilder, request_seed
from rsa.runs import package_versions, problems_digest, read_jsonl, write_json_atomic, write_jsonl_atomic
from rsa.tasks import Conversation, Problem, Task, get_task
from rsa.tasks.base import PROMPT_VERSION

logger = logging.getLogger(__name__)

CLASSES = ("easy", "hard", "all_wrong")
OVERFLOW_MODES = ("cap", "drop")
SHORTFALL_MODES = ("shrink", "fill")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "rsa-augment/1"
CANDIDATES_DIR = "candidates"
DATASET_FILE = "train.parquet"
REPORT_FILE = "build_report.json"
#: a candidate is "right" when its score reaches 1 (partial Reasoning Gym credit is not right)
CORRECT_SCORE = 1.0 - 1e-9
#: with a balance target, this many distinct sets per wanted set are drawn per problem to choose from
POOL_FACTOR = 4
#: engine options that change how fast candidates are generated, not which: they may differ on resume
OPERATIONAL_ENGINE_OPTIONS = frozenset(
    {
        "batch_size",
        "tensor_parallel_size",
        "gpu_memory_utilization",
        "kv_cache_memory_bytes",
        "enforce_eager",
        "multiprocessing",
        "base_urls",
        "api_key",
        "max_concurrency",
        "max_retries",
        "timeout",
    }
)


# ----- configuration ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KRange:
    """Candidates per aggregation prompt: fixed (`low == high`) or drawn uniformly from `low..high`."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low < 1 or self.high < self.low:
            raise ValueError(f"K range {self.low}-{self.high} is invalid: need 1 <= low <= high")

    @classmethod
    def parse(cls, value: int | str | KRange) -> KRange:
        """A KRange from 4, "4" or "2-4"; ValueError naming the value otherwise."""
        if isinstance(value, KRange):
            return value
        if isinstance(value, int):
            return cls(value, value)
        text = str(value).strip()
        match = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", text)
        if not match:
            raise ValueError(f"K {value!r}: expected a number like 4 or a range like 2-4")
        low = int(match.group(1))
        return cls(low, int(match.group(2)) if match.group(2) else low)

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True)
class Balance:
    """Target fractions of easy, hard and all-wrong candidate sets among aggregation prompts (sum 1)."""

    easy: float = 0.0
    hard: float = 0.0
    all_wrong: float = 0.0

    def __post_init__(self) -> None:
        for name in CLASSES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"balance {name}={getattr(self, name)} must be in [0, 1]")
        total = self.easy + self.hard + self.all_wrong
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"balance fractions must sum to 1 (easy + hard + all_wrong), got {total:g}")

    @classmethod
    def parse(cls, value: str | Mapping[str, float] | Balance) -> Balance:
        """A Balance from "easy=0.5,hard=0.5" (missing classes are 0) or a mapping."""
        if isinstance(value, Balance):
            return value
        if isinstance(value, Mapping):
            items = dict(value)
        else:
            items = {}
            for part in str(value).split(","):
                name, sep, number = part.partition("=")
                if not sep:
                    raise ValueError(f"balance {value!r}: expected class=fraction pairs, e.g. easy=0.5,hard=0.5")
                try:
                    items[name.strip()] = float(number)
                except ValueError:
                    raise ValueError(f"balance {value!r}: {number.strip()!r} is not a number") from None
        unknown = sorted(set(items) - set(CLASSES))
        if unknown:
            raise ValueError(f"balance: unknown class(es) {', '.join(unknown)}; classes are {', '.join(CLASSES)}")
        return cls(**{k: float(v) for k, v in items.items()})

    def targets(self) -> dict[str, float]:
        """The target fraction of every class."""
        return {name: getattr(self, name) for name in CLASSES}

    def __str__(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in self.targets().items())


@dataclass(frozen=True)
class CandidateConfig:
    """What candidates are sampled: data, reference policy, engine, M, sampling and sharding.

    Everything here shapes the candidate shards, so a resumed build must use the same values (engine
    options in `OPERATIONAL_ENGINE_OPTIONS` excepted).
    """

    model: str
    dataset: str
    engine: str = "vllm"
    engine_options: dict[str, Any] = field(default_factory=dict)
    num_candidates: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    candidate_max_tokens: int = 8192
    seed: int = 1234
    shard_size: int = 256
    task: str | None = None
    limit: int | None = None
    size: int | None = None
    data_seed: int = 0

    def __post_init__(self) -> None:
        if self.num_candidates < 1:
            raise ValueError(
                f"num_candidates (M) must be >= 1, got {self.num_candidates}: the candidate set would be empty "
                "and there would be nothing to aggregate"
            )
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1 problem, got {self.shard_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        SamplingParams(self.temperature, self.top_p, self.candidate_max_tokens)  # validates the sampling values

    def sampling_params(self) -> SamplingParams:
        """The engine sampling settings of candidate generation."""
        return SamplingParams(self.temperature, self.top_p, self.candidate_max_tokens, self.seed)

    def resume_keys(self) -> dict[str, Any]:
        """The values a resumed build must repeat, flattened (`engine_options.<name>`)."""
        values = {k: v for k, v in asdict(self).items() if k != "engine_options"}
        for name, value in self.engine_options.items():
            if name not in OPERATIONAL_ENGINE_OPTIONS:
                values[f"engine_options.{name}"] = value
        return json.loads(json.dumps(values, default=str))


@dataclass(frozen=True)
class MixConfig:
    """How the dataset is built from the candidates: mixture, K, sets per problem, balance, length budget."""

    max_model_len: int
    max_completion_length: int
    aggregate_fraction: float = 0.5
    k: KRange = KRange(4, 4)
    sets_per_problem: int = 1
    balance: Balance | None = None
    shortfall: str = "shrink"
    overflow: str = "cap"
    seed: int = 1234

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", KRange.parse(self.k))
        if self.balance is not None:
            object.__setattr__(self, "balance", Balance.parse(self.balance))
        if not 0.0 <= self.aggregate_fraction <= 1.0:
            raise ValueError(f"aggregate_fraction must be in [0, 1], got {self.aggregate_fraction}")
        if self.sets_per_problem < 1:
            raise ValueError(f"sets_per_problem must be >= 1, got {self.sets_per_problem}")
        if self.shortfall not in SHORTFALL_MODES:
            raise ValueError(f"shortfall {self.shortfall!r}: choose one of {', '.join(SHORTFALL_MODES)}")
        if self.overflow not in OVERFLOW_MODES:
            raise ValueError(f"overflow {self.overflow!r}: choose one of {', '.join(OVERFLOW_MODES)}")
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {self.max_completion_length}")
        if self.max_model_len <= self.max_completion_length:
            raise ValueError(
                f"max_model_len {self.max_model_len} leaves no room for a prompt next to "
                f"max_completion_length {self.max_completion_length}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values."""
        values = asdict(self)
        values["k"] = str(self.k)
        values["balance"] = str(self.balance) if self.balance else None
        return values


def check_k_fits(k: KRange, num_candidates: int) -> None:
    """Raise ValueError when an aggregation set of K cannot be drawn from M candidates."""
    if k.high > num_candidates:
        raise ValueError(
            f"K={k} is larger than the M={num_candidates} candidates sampled per problem: a set draws K distinct "
            "candidates, so use K <= M (raise --num-candidates or lower --k)"
        )


def check_gold_answers(problems: Sequence[Problem]) -> None:
    """Raise ValueError naming the first problems that have no gold answer (nothing to reward)."""
    missing = [p.id for p in problems if p.answer is None or not str(p.answer).strip()]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"{len(missing)} problem(s) have no gold answer (field 'answer'): {shown}; "
            "training rewards need one for every problem"
        )


# ----- length budget ------------------------------------------------------------------------------------------
class LengthBudget:
    """Prompt lengths under the training model's tokenizer and chat template.

    A prompt fits when its templated length (generation prompt included) plus `max_completion_length`
    is at most `max_model_len`. It also offers the engine-like `count_tokens`/`max_model_len` that
    `rsa.loop.PromptBuilder` needs, so candidate capping is the code RSA evaluation uses.
    """

    def __init__(self, tokenizer: Any, max_model_len: int, max_completion_length: int) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; training prompts are "
                "chat conversations, so pass the training model's tokenizer (--tokenizer)"
            )
        self.tokenizer = tokenizer
        self._max_model_len = int(max_model_len)
        self.max_completion_length = int(max_completion_length)
        self.prompt_limit = self._max_model_len - self.max_completion_length
        self.template_overhead = self.prompt_tokens([{"role": "user", "content": ""}])
        self.content_budget = self.prompt_limit - self.template_overhead

    @classmethod
    def from_pretrained(cls, name: str, max_model_len: int | None, max_completion_length: int) -> LengthBudget:
        """The budget of the tokenizer at `name`; `max_model_len` None reads the model config's context length."""
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"could not load the tokenizer {name!r} for length budgeting: {exc}. Pass --tokenizer with the "
                "training model's local directory"
            ) from exc
        if max_model_len is None:
            max_model_len = default_max_model_len(name)
        return cls(tokenizer, max_model_len, max_completion_length)

    @property
    def max_model_len(self) -> int:
        """Longest prompt plus completion, in tokens."""
        return self._max_model_len

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens_many(self, texts: Sequence[str], chunk: int = 256) -> list[int]:
        """Tokens of each text, counted in batched tokenizer calls (parallel in fast tokenizers)."""
        counts: list[int] = []
        for start in range(0, len(texts), chunk):
            encoded = self.tokenizer(list(texts[start : start + chunk]), add_special_tokens=False)["input_ids"]
            counts.extend(len(ids) for ids in encoded)
        return counts

    def prompt_tokens(self, conversation: Conversation) -> int:
        """Tokens of `conversation` under the chat template, assistant turn opened."""
        text = self.tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        return self.count_tokens(text)

    def prompt_builder(self) -> PromptBuilder:
        """A `PromptBuilder` that caps candidates so the prompt's text fits this budget exactly."""
        builder = PromptBuilder(self, max_new_tokens=1)  # type: ignore[arg-type]
        builder.prompt_budget = self.content_budget  # exact: the template's own tokens are measured, not reserved
        return builder

    def over_budget_message(self, problem: Problem, what: str, tokens: int) -> str:
        """An error text naming the problem and the token counts."""
        return (
            f"problem {problem.id!r}: {what} has {tokens} tokens; with max_completion_length "
            f"{self.max_completion_length} that is {tokens + self.max_completion_length} > max_model_len "
            f"{self._max_model_len}. The question is never cut: raise --max-model-len or lower "
            "--max-completion-length" + (" / --k" if "candidate" in what else "")
        )

    def check_questions(self, problems: Sequence[Problem], k: int | None, overflow: str) -> None:
        """Raise ContextBudgetError naming the problem and token counts when a question cannot fit.

        Checked: the plain prompt, and (when `k` is given) the aggregation prompt around K candidates, empty
        for `overflow="drop"` or each reduced to the truncation marker for `overflow="cap"`.
        """
        for problem in problems:
            task = get_task(problem.task)
            tokens = self.prompt_tokens(task.plain_prompt(problem))
            if tokens > self.prompt_limit:
                raise ContextBudgetError(self.over_budget_message(problem, "its plain prompt", tokens))
            if k:
                filler = TRUNCATION_MARKER if overflow == "cap" else ""
                tokens = self.prompt_tokens(task.aggregation_prompt(problem, [filler] * k))
                if tokens > self.prompt_limit:
                    what = f"its aggregation prompt with {k} candidate(s) reduced to nothing"
                    if overflow == "cap":
                        what = f"its aggregation prompt with {k} candidate(s), each cut to the truncation marker,"
                    raise ContextBudgetError(self.over_budget_message(problem, what, tokens))


def default_max_model_len(name: str) -> int:
    """The context length in the model config at `name` (`max_position_embeddings`); ValueError if unknown."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--max-model-len not given and the model config of {name!r} cannot be read: {exc}") from exc
    value = getattr(config, "max_position_embeddings", None)
    if not value:
        raise ValueError(f"--max-model-len not given and the config of {name!r} has no max_position_embeddings")
    return int(value)


def format_histogram(values: Sequence[int], limit: int, bins: int = 10, width: int = 40) -> str:
    """A text histogram of token lengths over `0..limit` in `bins` equal bins."""
    if not values:
        return "(no prompts)"
    top = max(limit, max(values))
    step = max(1, math.ceil((top + 1) / bins))
    counts = Counter(min(v // step, bins - 1) for v in values)
    peak = max(counts.values())
    lines = []
    for b in range(bins):
        lo, hi = b * step, min((b + 1) * step - 1, top) if b < bins - 1 else top
        n = counts.get(b, 0)
        bar = "#" * (round(width * n / peak) if n else 0)
        lines.append(f"{lo:>7}-{hi:<7} |{bar:<{width}} {n}")
    return "\n".join(lines)


# ----- candidates ---------------------------------------------------------------------------------------------
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
        differences = manifest_differences(old, new)
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
            for lineno, record in enumerate(read_jsonl(path), 1):
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

    def record_build(self, mix: MixConfig, report: BuildReport) -> None:
        """Note the latest dataset build (its mixture options and counts) in the manifest."""
        manifest = self.manifest() or {}
        manifest["last_build"] = {"mix": mix.to_dict(), "rows": report.plain + report.aggregate}
        write_json_atomic(self.manifest_path, manifest)


def manifest_differences(old: dict, new: dict) -> list[str]:
    """`key: build has X, now Y` for every candidate-shaping value that differs between two manifests."""
    diffs = []
    old_cfg, new_cfg = old.get("candidates", {}), new.get("candidates", {})
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key) != new_cfg.get(key):
            diffs.append(f"{key}: build has {old_cfg.get(key)!r}, now {new_cfg.get(key)!r}")
    for section, key in (("problems", "count"), ("problems", "sha256")):
        before, now = old.get(section, {}).get(key), new.get(section, {}).get(key)
        if before != now:
            diffs.append(f"{section}.{key}: build has {before!r}, now {now!r}")
    if old.get("prompt_version") != new.get("prompt_version"):
        diffs.append(f"prompt_version: build has {old.get('prompt_version')!r}, now {new.get('prompt_version')!r}")
    return diffs


# ----- candidate sets -----------------------------------------------------------------------------------------
@dataclass
class CandidateSet:
    """An aggregation set of one problem: candidate indices in prompt order, and its AggLM class."""

    problem_index: int
    members: tuple[int, ...]
    majority_correct: bool
    set_class: str
    tokens: int = 0  # approximate prompt-text tokens with every candidate in full


def set_class(correct: Sequence[bool], majority_correct: bool) -> str:
    """easy (majority right), hard (majority wrong, one or more right) or all_wrong (none right)."""
    if majority_correct:
        return "easy"
    return "hard" if any(correct) else "all_wrong"


def cluster_labels(problem: Problem, candidates: Sequence[Candidate]) -> list[int | None]:
    """Each candidate's answer cluster (`rsa.voting.cluster_answers` over all M), None without an answer."""
    from rsa.voting import cluster_answers

    labels: list[int | None] = [None] * len(candidates)
    for label, cluster in enumerate(
        cluster_answers(get_task(problem.task), [c.extracted for c in candidates], problem)
    ):
        for member in cluster.members:
            labels[member] = label
    return labels


def majority_is_correct(members: Sequence[int], labels: Sequence[int | None], candidates: Sequence[Candidate]) -> bool:
    """Whether the largest answer cluster within `members` is right (ties: the cluster seen first)."""
    counts: Counter = Counter()
    first: dict[int, int] = {}
    for m in members:
        if labels[m] is not None:
            counts[labels[m]] += 1
            first.setdefault(labels[m], m)
    if not counts:
        return False
    best = max(counts, key=lambda label: (counts[label], -members.index(first[label])))
    return candidates[first[best]].correct


def draw_sets(
    rng: np.random.Generator, num_candidates: int, k: KRange, wanted: int
) -> tuple[list[tuple[int, ...]], bool]:
    """Up to `wanted` distinct candidate sets (distinct as sets), each K distinct candidates in random order.

    Returns the sets and whether fewer distinct sets exist than wanted. When they are few, all are
    enumerated; otherwise they are drawn at random (K uniform in the range).
    """
    sizes = range(k.low, k.high + 1)
    distinct = sum(math.comb(num_candidates, s) for s in sizes)
    if distinct <= wanted:
        every = [c for s in sizes for c in combinations(range(num_candidates), s)]
        order = rng.permutation(len(every))
        return [tuple(int(x) for x in rng.permutation(every[i])) for i in order], distinct < wanted
    found: dict[frozenset, tuple[int, ...]] = {}
    for _ in range(wanted * 20):
        size = int(rng.integers(k.low, k.high + 1))
        members = tuple(int(x) for x in rng.permutation(num_candidates)[:size])
        found.setdefault(frozenset(members), members)
        if len(found) == wanted:
            break
    return list(found.values()), len(found) < wanted


def apportion(total: int, targets: Mapping[str, float]) -> dict[str, int]:
    """Split `total` into integer counts proportional to `targets` (largest remainder)."""
    raw = {c: total * w for c, w in targets.items()}
    counts = {c: int(math.floor(v + 1e-9)) for c, v in raw.items()}
    rest = total - sum(counts.values())
    order = sorted((c for c in targets if targets[c] > 0), key=lambda c: (-(raw[c] - counts[c]), CLASSES.index(c)))
    for c in order[:rest]:
        counts[c] += 1
    return counts


def _round_robin(
    pools: Sequence[list[CandidateSet]],
    order: Sequence[int],
    used: list[int],
    taken: set[int],
    limit: int,
    per_problem: int,
    accept: Callable[[CandidateSet], bool],
) -> list[CandidateSet]:
    """Take up to `limit` sets passing `accept`, one per problem per pass (spreads sets over problems)."""
    chosen: list[CandidateSet] = []
    progress = True
    while len(chosen) < limit and progress:
        progress = False
        for p in order:
            if len(chosen) >= limit:
                break
            if used[p] >= per_problem:
                continue
            pick = next((s for s in pools[p] if id(s) not in taken and accept(s)), None)
            if pick is not None:
                taken.add(id(pick))
                used[p] += 1
                chosen.append(pick)
                progress = True
    return chosen


def select_sets(
    pools: Sequence[list[CandidateSet]],
    wanted: int,
    per_problem: int,
    balance: Balance | None,
    shortfall: str,
    rng: np.random.Generator,
) -> tuple[list[CandidateSet], list[str]]:
    """Choose `wanted` sets (at most `per_problem` per problem) meeting the balance targets when given.

    A class with too few sets is reported (the returned messages, also logged as warnings). With
    `shortfall="shrink"` the total shrinks so every class keeps its target fraction; with "fill" other
    classes fill the gap. ValueError when shrinking leaves no set at all.
    """
    order = [int(p) for p in rng.permutation(len(pools))]
    used = [0] * len(pools)
    taken: set[int] = set()
    if balance is None:
        return _round_robin(pools, order, used, taken, wanted, per_problem, lambda s: True), []
    targets = balance.targets()
    want = apportion(wanted, targets)
    available = Counter(s.set_class for pool in pools for s in pool)
    # scarcest class first, so sets that could serve several problems' quotas go where they are needed
    by_scarcity = sorted((c for c in CLASSES if want[c] > 0), key=lambda c: (available[c] / want[c], CLASSES.index(c)))
    chosen: dict[str, list[CandidateSet]] = {c: [] for c in CLASSES}
    for c in by_scarcity:
        chosen[c] = _round_robin(pools, order, used, taken, want[c], per_problem, lambda s, c=c: s.set_class == c)
    messages = []
    short = [c for c in CLASSES if len(chosen[c]) < want[c]]
    for c in short:
        messages.append(
            f"balance: class {c!r} is short: wanted {want[c]} of {wanted} aggregation sets "
            f"({targets[c]:.0%}), found {len(chosen[c])} (distinct {c} sets drawn: {available[c]})"
        )
    if short and shortfall == "shrink":
        total = min(math.floor(len(chosen[c]) / targets[c] + 1e-9) for c in CLASSES if targets[c] > 0)
        while total > 0 and any(n > len(chosen[c]) for c, n in apportion(total, targets).items()):
            total -= 1
        if total == 0:
            raise ValueError(
                "; ".join(messages) + ". Shrinking to keep the target fractions leaves no aggregation set: change "
                "--balance, sample more candidates (--num-candidates), or use --shortfall fill"
            )
        keep = apportion(total, targets)
        messages.append(f"balance: shrinking to {total} aggregation sets to keep the target fractions")
        chosen = {c: chosen[c][: keep[c]] for c in CLASSES}
    elif short:
        gap = wanted - sum(len(v) for v in chosen.values())
        extra = _round_robin(pools, order, used, taken, gap, per_problem, lambda s: True)
        messages.append(
            f"balance: filling {len(extra)} of the {gap} missing sets with other classes (--shortfall fill)"
        )
        for s in extra:
            chosen[s.set_class].append(s)
    for message in messages:
        logger.warning("%s", message)
    return [s for c in CLASSES for s in chosen[c]], messages


# ----- building the dataset -----------------------------------------------------------------------------------
@dataclass
class BuildReport:
    """What a build produced: counts, achieved vs target fractions, shortfalls, length figures."""

    problems: int = 0
    plain: int = 0
    aggregate: int = 0
    aggregate_fraction_target: float = 0.0
    aggregate_fraction: float = 0.0
    classes: dict[str, int] = field(default_factory=dict)
    class_fractions: dict[str, float] = field(default_factory=dict)
    class_targets: dict[str, float] | None = None
    sets_drawn: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    problems_short_of_sets: int = 0
    capped_prompts: int = 0
    capped_candidates: int = 0
    dropped_over_budget: int = 0
    prompt_limit: int = 0
    prompt_tokens: dict[str, float] = field(default_factory=dict)
    histogram: str = ""

    def summary(self) -> str:
        """A multi-line text summary for the console."""
        lines = [
            f"problems: {self.problems}; rows: {self.plain + self.aggregate} "
            f"({self.plain} plain, {self.aggregate} aggregate)",
            f"aggregate fraction: {self.aggregate_fraction:.3f} (target {self.aggregate_fraction_target:.3f})",
        ]
        if self.aggregate:
            parts = []
            for c in CLASSES:
                target = f", target {self.class_targets[c]:.3f}" if self.class_targets else ""
                parts.append(f"{c} {self.classes.get(c, 0)} ({self.class_fractions.get(c, 0.0):.3f}{target})")
            lines.append("aggregation sets: " + "; ".join(parts))
            drawn = ", ".join(f"{c} {self.sets_drawn.get(c, 0)}" for c in CLASSES)
            lines.append(f"distinct sets drawn to choose from: {drawn}")
        lines.append(
            f"length: {self.capped_prompts} prompt(s) with {self.capped_candidates} candidate(s) capped, "
            f"{self.dropped_over_budget} set(s) dropped as over budget; prompt limit {self.prompt_limit} tokens"
        )
        if self.prompt_tokens:
            t = self.prompt_tokens
            lines.append(f"prompt tokens: min {t['min']:.0f}, median {t['median']:.0f}, max {t['max']:.0f}")
        lines.append(self.histogram)
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as JSON-ready values."""
        return asdict(self)


def _base_row(problem: Problem, reference_model: str, seed: int | None) -> dict:
    entry, tests = problem.meta.get("entry"), problem.meta.get("tests")
    return {
        "task": problem.task,
        "answer": str(problem.answer),
        "dataset_name": problem.meta.get("dataset_name"),
        "entry": entry if entry is None or isinstance(entry, str) else json.dumps(entry, ensure_ascii=False),
        "tests": tests if tests is None or isinstance(tests, str) else json.dumps(tests, ensure_ascii=False),
        "problem_id": problem.id,
        "reference_model": reference_model,
        "seed": seed,
    }


def build_examples(
    problems: Sequence[Problem],
    candidates: Sequence[Sequence[Candidate]],
    mix: MixConfig,
    budget: LengthBudget,
    *,
    reference_model: str,
    sampling_seed: int | None,
) -> tuple[list[dict], BuildReport]:
    """Training rows (plain and aggregation prompts, every one within `budget`) and the build report.

    `candidates[i]` are problem i's scored candidates. Aggregate rows: `aggregate_fraction * P / (1 -
    aggregate_fraction)` sets (at most `sets_per_problem` per problem) chosen per `mix.balance`; plain rows:
    as many problems as keep the requested fraction. Rows come out shuffled (seeded by `mix.seed`).
    """
    if len(candidates) != len(problems):
        raise ValueError(f"got candidates for {len(candidates)} problems, expected {len(problems)}")
    if not problems:
        raise ValueError("no problems to build examples from")
    check_gold_answers(problems)
    if mix.aggregate_fraction > 0:
        for problem, found in zip(problems, candidates):
            try:
                check_k_fits(mix.k, len(found))
            except ValueError as exc:
                raise ValueError(f"problem {problem.id!r}: {exc}") from None
    rng = np.random.default_rng([mix.seed % 2**63, 0xA6])
    tasks: list[Task] = [get_task(p.task) for p in problems]
    n = len(problems)
    f = mix.aggregate_fraction
    report = BuildReport(problems=n, aggregate_fraction_target=f, prompt_limit=budget.prompt_limit)
    report.class_targets = mix.balance.targets() if mix.balance else None

    rows: list[dict] = []
    wanted = n * mix.sets_per_problem if f >= 1 else min(n * mix.sets_per_problem, round(f * n / (1 - f)))
    if f > 0 and wanted == 0:
        message = f"aggregate_fraction {f} of {n} problems rounds to no aggregation prompt; building plain prompts only"
        logger.warning("%s", message)
        report.warnings.append(message)
        f = 0.0
    if f > 0:
        rows = _aggregate_rows(
            problems, tasks, candidates, mix, wanted, budget, rng, report, reference_model, sampling_seed
        )
        if not rows:
            raise ValueError(
                "no aggregation prompt could be built (every candidate set was over the length budget with "
                "--overflow drop?); see the warnings above"
            )
    num_aggregate = len(rows)
    num_plain = n if f == 0 else min(n, round(num_aggregate * (1 - f) / f))
    plain_problems = sorted(int(i) for i in rng.permutation(n)[:num_plain])
    for pi in plain_problems:
        prompt = tasks[pi].plain_prompt(problems[pi])
        tokens = budget.prompt_tokens(prompt)
        if tokens > budget.prompt_limit:  # check_questions guards this before any generation
            raise ContextBudgetError(budget.over_budget_message(problems[pi], "its plain prompt", tokens))
        rows.append(
            {
                "prompt": prompt,
                **_base_row(problems[pi], reference_model, sampling_seed),
                "kind": "plain",
                "k": 0,
                "candidate_ids": [],
                "candidate_scores": [],
                "majority_correct": None,
                "mean_candidate_accuracy": None,
                "set_class": None,
                "truncated_candidates": 0,
                "prompt_tokens": tokens,
            }
        )
    rows = [rows[int(i)] for i in rng.permutation(len(rows))]

    report.plain = num_plain
    report.aggregate = num_aggregate
    report.aggregate_fraction = num_aggregate / len(rows) if rows else 0.0
    report.classes = {c: sum(1 for r in rows if r["set_class"] == c) for c in CLASSES}
    report.class_fractions = {c: (report.classes[c] / num_aggregate if num_aggregate else 0.0) for c in CLASSES}
    lengths = [r["prompt_tokens"] for r in rows]
    if lengths:
        report.prompt_tokens = {
            "min": float(min(lengths)),
            "median": float(statistics.median(lengths)),
            "max": float(max(lengths)),
        }
    report.histogram = (
        f"prompt tokens (limit {budget.prompt_limit} = max_model_len {budget.max_model_len} - "
        f"max_completion_length {budget.max_completion_length}):\n" + format_histogram(lengths, budget.prompt_limit)
    )
    if report.capped_prompts:
        logger.info("%d candidate(s) in %d prompt(s) capped to fit", report.capped_candidates, report.capped_prompts)
    if report.dropped_over_budget:
        logger.warning("%d candidate set(s) dropped: over the length budget", report.dropped_over_budget)
    return rows, report


def _aggregate_rows(
    problems: Sequence[Problem],
    tasks: Sequence[Task],
    candidates: Sequence[Sequence[Candidate]],
    mix: MixConfig,
    wanted: int,
    budget: LengthBudget,
    rng: np.random.Generator,
    report: BuildReport,
    reference_model: str,
    sampling_seed: int | None,
) -> list[dict]:
    """The aggregation rows: draw each problem's pool of sets, select `wanted` of them, build fitted prompts."""
    s = mix.sets_per_problem
    pool_size = s * POOL_FACTOR if mix.balance else s
    builder = budget.prompt_builder()
    members_of: list[list[Member]] = []
    pools: list[list[CandidateSet]] = []
    scaffold: dict[tuple[int, int], int] = {}
    drawn: Counter = Counter()
    counts = budget.count_tokens_many([c.text for found in candidates for c in found])
    offsets = np.cumsum([0] + [len(found) for found in candidates]).tolist()
    for pi, (problem, task, found) in enumerate(zip(problems, tasks, candidates)):
        members = [
            Member(c.text, c.num_tokens, c.extracted, c.score, _prompt_tokens=counts[offsets[pi] + j])
            for j, c in enumerate(found)
        ]
        members_of.append(members)
        labels = cluster_labels(problem, found)
        sets, _ = draw_sets(np.random.default_rng([mix.seed % 2**63, 0x5E7, pi]), len(found), mix.k, pool_size)
        pool = []
        for chosen in sets:
            key = (pi, len(chosen))
            if key not in scaffold:
                scaffold[key] = budget.count_tokens(task.aggregation_prompt(problem, [""] * len(chosen))[-1]["content"])
            tokens = scaffold[key] + sum(members[m]._prompt_tokens or 0 for m in chosen)
            if mix.overflow == "drop" and tokens > budget.content_budget:
                report.dropped_over_budget += 1
                continue
            majority = majority_is_correct(chosen, labels, found)
            candidate_set = CandidateSet(pi, chosen, majority, set_class([found[m].correct for m in chosen], majority))
            candidate_set.tokens = tokens
            pool.append(candidate_set)
            drawn[candidate_set.set_class] += 1
        pools.append(pool)
        report.problems_short_of_sets += int(len(pool) < s)
    report.sets_drawn = {c: drawn[c] for c in CLASSES}
    if report.problems_short_of_sets:
        message = (
            f"{report.problems_short_of_sets} problem(s) have fewer than {s} distinct candidate sets of K={mix.k} "
            "(few candidates or many dropped as over budget); they get fewer aggregation prompts"
        )
        logger.warning("%s", message)
        report.warnings.append(message)
    chosen_sets, messages = select_sets(pools, wanted, s, mix.balance, mix.shortfall, rng)
    report.warnings.extend(messages)

    rows = []
    for candidate_set in chosen_sets:
        pi = candidate_set.problem_index
        problem, task, found = problems[pi], tasks[pi], candidates[pi]
        chosen = [members_of[pi][m] for m in candidate_set.members]
        conversation, truncated, tokens = _fitted_aggregation(builder, budget, task, problem, chosen, mix.overflow)
        if tokens > budget.prompt_limit:  # drop mode only: the pool's estimate was a few tokens short
            report.dropped_over_budget += 1
            continue
        if truncated:
            report.capped_prompts += 1
            report.capped_candidates += truncated
        scores = [found[m].score for m in candidate_set.members]
        rows.append(
            {
                "prompt": conversation,
                **_base_row(problem, reference_model, sampling_seed),
                "kind": "aggregate",
                "k": len(candidate_set.members),
                "candidate_ids": [found[m].index for m in candidate_set.members],
                "candidate_scores": scores,
                "majority_correct": candidate_set.majority_correct,
                "mean_candidate_accuracy": float(sum(scores) / len(scores)),
                "set_class": candidate_set.set_class,
                "truncated_candidates": truncated,
                "prompt_tokens": tokens,
            }
        )
    return rows


def _fitted_aggregation(
    builder: PromptBuilder,
    budget: LengthBudget,
    task: Task,
    problem: Problem,
    chosen: Sequence[Member],
    overflow: str,
) -> tuple[Conversation, int, int]:
    """The aggregation prompt over `chosen`: (prompt, candidates capped, templated tokens).

    With `overflow="cap"` the candidates are shortened until the templated prompt fits exactly; with
    "drop" the full prompt is returned and the caller drops it when its tokens are over the limit.
    """
    conversation = task.aggregation_prompt(problem, [m.text for m in chosen])
    tokens = budget.prompt_tokens(conversation)
    if tokens <= budget.prompt_limit or overflow == "drop":
        return conversation, 0, tokens
    original = builder.prompt_budget
    try:
        for _ in range(4):  # the template and token merges at the cuts can add a few tokens: tighten until it fits
            conversation, truncated = builder.aggregation(task, problem, chosen)
            tokens = budget.prompt_tokens(conversation)
            if tokens <= budget.prompt_limit:
                return conversation, truncated, tokens
            builder.prompt_budget -= tokens - budget.prompt_limit
    finally:
        builder.prompt_budget = original
    raise ContextBudgetError(
        f"problem {problem.id!r}: could not cap the candidates to fit {budget.prompt_limit} tokens"
    )


# ----- parquet output -----------------------------------------------------------------------------------------
def dataset_schema() -> Any:
    """The Arrow schema of training datasets (docs/FORMATS.md, plus set_class, truncated_candidates, prompt_tokens)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("task", pa.string()),
            ("answer", pa.string()),
            ("dataset_name", pa.string()),
            ("entry", pa.string()),
            ("tests", pa.string()),
            ("kind", pa.string()),
            ("problem_id", pa.string()),
            ("k", pa.int64()),
            ("candidate_ids", pa.list_(pa.int64())),
            ("candidate_scores", pa.list_(pa.float64())),
            ("majority_correct", pa.bool_()),
            ("mean_candidate_accuracy", pa.float64()),
            ("reference_model", pa.string()),
            ("seed", pa.int64()),
            ("set_class", pa.string()),
            ("truncated_candidates", pa.int64()),
            ("prompt_tokens", pa.int64()),
        ]
    )


class _AtomicParquet:
    """A parquet file written in batches to a temporary file, fsynced and renamed into place on `close`."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self.writer = pq.ParquetWriter(self.tmp, dataset_schema())
        self.rows = 0

    def write(self, rows: Sequence[dict]) -> None:
        import pyarrow as pa

        if rows:
            self.writer.write_table(pa.Table.from_pylist(list(rows), schema=dataset_schema()))
            self.rows += len(rows)

    def close(self) -> None:
        self.writer.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.writer.close()
        Path(self.tmp).unlink(missing_ok=True)


def write_dataset(rows: Sequence[dict], path: str | Path) -> Path:
    """Write training rows as parquet, atomically; returns the path."""
    out = _AtomicParquet(Path(path))
    try:
        out.write(rows)
    except BaseException:
        out.abort()
        raise
    out.close()
    return out.path


# ----- the whole build ----------------------------------------------------------------------------------------
def build_augmented_dataset(
    config: CandidateConfig,
    mix: MixConfig | None,
    out_dir: str | Path,
    *,
    tokenizer: str | None = None,
    max_model_len: int | None = None,
    max_completion_length: int = 8192,
    resume: bool = False,
    engine: Engine | None = None,
    progress: bool = True,
) -> BuildReport:
    """Load, check, sample (resumable shards), build and write `OUT/train.parquet`; returns the report.

    `mix` None builds a MixConfig from `max_model_len` (None: the model config's context length) and
    `max_completion_length` with default mixture options. `engine` is used as given (not closed);
    otherwise one is made with `make_engine` only if some shard is missing, and closed after sampling.
    """
    from rsa.data import load_problems

    # 1. everything that needs no model
    if mix is None:
        mix = MixConfig(
            max_model_len=max_model_len or default_max_model_len(tokenizer or config.model),
            max_completion_length=max_completion_length,
        )
    if mix.aggregate_fraction > 0:
        check_k_fits(mix.k, config.num_candidates)
    problems = load_problems(
        config.dataset, limit=config.limit, task=config.task, size=config.size, seed=config.data_seed
    )
    if not problems:
        raise ValueError(f"dataset {config.dataset!r} holds no problems")
    check_gold_answers(problems)
    logger.info("%d problems from %s", len(problems), config.dataset)
    budget = LengthBudget.from_pretrained(tokenizer or config.model, mix.max_model_len, mix.max_completion_length)
    budget.check_questions(problems, mix.k.high if mix.aggregate_fraction > 0 else None, mix.overflow)
    store = CandidateStore(out_dir)
    store.prepare(config, problems, resume=resume)

    # 2. candidates, shard by shard
    missing = store.missing_shards(problems, config.shard_size, config.num_candidates)
    if missing:
        owned = engine is None
        if owned:
            from rsa.engines import make_engine

            engine = make_engine(config.engine, config.model, **config.engine_options)
        try:
            store.generate(engine, problems, config, missing, progress=progress)
        finally:
            if owned:
                engine.close()
    else:
        logger.info(
            "all %d candidate shards present; building the dataset", store.num_shards(len(problems), config.shard_size)
        )

    # 3. examples and the dataset
    candidates = store.load(problems, config.shard_size, config.num_candidates)
    rows, report = build_examples(
        problems, candidates, mix, budget, reference_model=config.model, sampling_seed=config.seed
    )
    write_dataset(rows, store.out / DATASET_FILE)
    write_json_atomic(store.out / REPORT_FILE, report.to_dict())
    store.record_build(mix, report)
    return report


# ----- importing a verl-layout aggregation dataset ------------------------------------------------------------
#: candidate headers of aggregation prompts: ours ("---- Candidate solution 2 ----") and the RSA
#: reference code's ("---- Solution 2 ----", "---- Candidate ----")
_CANDIDATE_HEADER = re.compile(
    r"^-{2,}\s*(?:candidate\s+solution|solution|candidate)(?:\s+(\d+))?\s*-{2,}\s*$", re.I | re.M
)
_KIND_FLAGS = ("is_aggregation", "aggregation", "is_agg", "agg")


def detect_aggregation(prompt_text: str, extra: Mapping[str, Any]) -> tuple[str, int]:
    """(kind, K) of an imported prompt: from `extra_info` (`kind`, `k`, an is-aggregation flag) or its headers."""
    kind = extra.get("kind")
    k = extra.get("k", extra.get("num_candidates"))
    headers = _CANDIDATE_HEADER.findall(prompt_text or "")
    if kind not in ("plain", "aggregate"):
        flag = next((extra[f] for f in _KIND_FLAGS if f in extra and extra[f] is not None), None)
        kind = ("aggregate" if flag else "plain") if flag is not None else ("aggregate" if headers else "plain")
    if kind == "plain":
        return "plain", 0
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > 0:
        return kind, int(k)
    return kind, len(headers)


def _messages(prompt: Any, where: str) -> list[dict[str, str]]:
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if isinstance(prompt, str):
        try:
            prompt = json.loads(prompt) if prompt.strip().startswith("[") else [{"role": "user", "content": prompt}]
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: field 'prompt' holds invalid JSON ({exc.msg})") from None
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{where}: field 'prompt' must be a non-empty list of chat messages")
    out = []
    for i, message in enumerate(prompt):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str) or not message.get("role"):
            raise ValueError(f"{where}: field 'prompt' message {i} needs a 'role' and a text 'content'")
        out.append({"role": str(message["role"]), "content": message["content"]})
    return out


@dataclass
class ImportReport:
    """What an import produced: row counts by kind, dropped rows, length figures."""

    source: str = ""
    rows: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    dropped_over_budget: int = 0
    dropped_ids: list[str] = field(default_factory=list)
    prompt_limit: int | None = None
    histogram: str = ""

    def summary(self) -> str:
        """A multi-line text summary for the console."""
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))
        tasks = ", ".join(f"{k} {v}" for k, v in sorted(self.tasks.items()))
        lines = [f"imported {self.rows} rows from {self.source} ({kinds}; tasks: {tasks})"]
        if self.prompt_limit is not None:
            shown = ", ".join(self.dropped_ids[:5]) + (" ..." if len(self.dropped_ids) > 5 else "")
            lines.append(
                f"dropped {self.dropped_over_budget} row(s) over the prompt limit of {self.prompt_limit} tokens"
                + (f": {shown}" if shown else "")
            )
        if self.histogram:
            lines.append(self.histogram)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as JSON-ready values."""
        return asdict(self)


def convert_verl_row(row: Mapping[str, Any], where: str, default_id: str) -> dict:
    """One verl-layout row as a training row of our column contract; ValueError naming `where` and the field."""
    from rsa.data import row_to_problem

    problem = row_to_problem(row, where, default_id)  # validates the task and its fields
    if problem.answer is None or not str(problem.answer).strip():
        raise ValueError(f"{where}: field 'reward_model.ground_truth' (the gold answer) is missing or empty")
    raw_extra = row.get("extra_info") or {}
    extra = json.loads(raw_extra) if isinstance(raw_extra, str) and raw_extra.strip() else raw_extra
    extra = extra if isinstance(extra, Mapping) else {}
    prompt = _messages(row.get("prompt"), where)
    users = [m["content"] for m in prompt if m["role"] == "user"]
    kind, k = detect_aggregation(users[-1] if users else "", extra)

    def listed(name: str, cast: Callable[[Any], Any]) -> list:
        value = extra.get(name)
        if hasattr(value, "tolist"):
            value = value.tolist()
        return [cast(v) for v in value] if isinstance(value, list) else []

    scores = listed("candidate_scores", float)
    seed = extra.get("seed")
    majority = extra.get("majority_correct")
    mean = extra.get("mean_candidate_accuracy")
    return {
        "prompt": prompt,
        **_base_row(problem, str(extra.get("reference_model") or row.get("data_source") or "unknown"), None),
        "seed": int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None,
        "kind": kind,
        "k": k,
        "candidate_ids": listed("candidate_ids", int),
        "candidate_scores": scores,
        "majority_correct": bool(majority) if majority is not None else None,
        "mean_candidate_accuracy": float(mean) if mean is not None else (sum(scores) / len(scores) if scores else None),
        "set_class": extra.get("set_class") if extra.get("set_class") in CLASSES else None,
        "truncated_candidates": 0,
        "prompt_tokens": None,
    }


def import_verl(
    path: str | Path,
    out_dir: str | Path,
    *,
    budget: LengthBudget | None = None,
    batch_rows: int = 1024,
) -> ImportReport:
    """Convert a verl-layout parquet file to `OUT/train.parquet` in our column contract, streaming in batches.

    `prompt` is kept; `reward_model.ground_truth` becomes `answer`; `extra_info.dataset_name`/`entry`
    (and `tests`) become columns; kind and K come from `extra_info` or the candidate headers. With a
    `budget`, rows whose prompt is over it are dropped and counted (their candidates cannot be re-capped).
    """
    import pyarrow.parquet as pq

    path, out = Path(path), Path(out_dir)
    if not path.is_file():
        raise FileNotFoundError(f"--import {path}: no such file")
    if path.suffix.lower() != ".parquet":
        raise ValueError(f"--import {path}: expected a verl-layout .parquet file")
    if (out / MANIFEST).exists():
        raise ValueError(f"{out} holds an `rsa augment` build; import into another --out")
    try:
        source = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise ValueError(f"--import {path}: not a readable parquet file ({exc})") from exc
    columns = set(source.schema_arrow.names)
    if "prompt" not in columns:
        raise ValueError(f"--import {path}: no 'prompt' column; verl layout has prompt, reward_model, extra_info")
    report = ImportReport(source=str(path), prompt_limit=budget.prompt_limit if budget else None)
    kinds: Counter = Counter()
    tasks: Counter = Counter()
    lengths: list[int] = []
    writer = _AtomicParquet(out / DATASET_FILE)
    number = 0
    try:
        for batch in source.iter_batches(batch_size=batch_rows):
            converted = []
            for row in batch.to_pylist():
                number += 1
                converted_row = convert_verl_row(row, f"{path}: row {number}", f"{path.stem}-{number}")
                if budget is not None:
                    tokens = budget.prompt_tokens(converted_row["prompt"])
                    converted_row["prompt_tokens"] = tokens
                    if tokens > budget.prompt_limit:
                        report.dropped_over_budget += 1
                        report.dropped_ids.append(converted_row["problem_id"])
                        continue
                    lengths.append(tokens)
                kinds[converted_row["kind"]] += 1
                tasks[converted_row["task"]] += 1
                converted.append(converted_row)
            writer.write(converted)
        if writer.rows == 0:
            raise ValueError(f"--import {path}: no rows left to write (file empty, or every row over budget)")
    except BaseException:
        writer.abort()
        raise
    writer.close()
    report.rows = writer.rows
    report.kinds, report.tasks = dict(kinds), dict(tasks)
    if budget is not None:
        report.histogram = f"prompt tokens (limit {budget.prompt_limit}):\n" + format_histogram(
            lengths, budget.prompt_limit
        )
        if report.dropped_over_budget:
            logger.warning("%d imported row(s) over the prompt limit dropped", report.dropped_over_budget)
    write_json_atomic(out / REPORT_FILE, report.to_dict())
    return report
