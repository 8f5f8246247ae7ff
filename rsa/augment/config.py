"""`rsa augment` settings: file names, set classes, `Balance`, `CandidateConfig`, `MixConfig`, checks."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rsa.engines.base import SamplingParams
from rsa.seeds import KRange
from rsa.tasks import Problem

CLASSES = ("easy", "hard", "all_wrong")
OVERFLOW_MODES = ("cap", "drop")
SHORTFALL_MODES = ("shrink", "fill")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "rsa-augment/1"
CANDIDATES_DIR = "candidates"
DATASET_FILE = "train.parquet"
REPORT_FILE = "build_report.json"
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
                f"--train-context-len {self.max_model_len} leaves no room for a prompt next to "
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
