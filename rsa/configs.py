"""Configs of `rsa eval` and `rsa augment`: dataclasses whose fields are the command-line options.

    from rsa.configs import EvalConfig
    config = EvalConfig(model="models/tiny", engine="hf", dataset="rg:basic_arithmetic", out="runs/tiny")

The command line parses them like training does (`TrlParser`, a `transformers.HfArgumentParser`): every
field is an option (`--max_new_tokens` or `--max-new-tokens`), `--config file.yaml` sets any of them, and
options given on the command line win. Defaults live here only. `__post_init__` checks every value that can
be checked without a model, so that a bad option is reported before an engine is built.

Shared option groups: `EngineOptions` (backend and its options, mapped to `make_engine` keywords by
`EngineOptions.engine_kwargs`), `SamplingOptions` and `DataOptions`. `EvalConfig` and `AugmentConfig`
compose them by inheritance.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rsa.augment import CandidateConfig, MixConfig
from rsa.loop import DEFAULT_STOP_AGREEMENT, FINAL_RULES, METHODS, SCHEDULES, THINKING_MODES, LoopConfig

ENGINES = ("hf", "vllm", "openai")
#: `max_new_tokens` when the model's context is unknown or large: the auto value is min(this, context // 2)
MAX_NEW_TOKENS_CAP = 8192

# Config field -> {engine: its `make_engine` keyword}. An option set for an engine that lacks it is an error.
ENGINE_OPTION_FIELDS: dict[str, dict[str, str]] = {
    "dtype": {"hf": "dtype", "vllm": "dtype"},
    "max_model_len": {"hf": "max_model_len", "vllm": "max_model_len", "openai": "max_model_len"},
    "batch_size": {"hf": "batch_size", "openai": "max_concurrency"},
    "tensor_parallel_size": {"vllm": "tensor_parallel_size"},
    "gpu_memory_utilization": {"vllm": "gpu_memory_utilization"},
    "base_url": {"openai": "base_urls"},
    "api_key": {"openai": "api_key"},
    "max_retries": {"openai": "max_retries"},
}


def _default(cls: type, name: str) -> Any:
    """The default of field `name` of the library dataclass `cls`, so that each default is written once."""
    value = next(f.default for f in fields(cls) if f.name == name)
    return str(value) if name == "k" and cls is MixConfig else value  # KRange(4, 4) -> "4"


def flag(name: str) -> str:
    """The command-line spelling of config field `name` (`max_new_tokens` -> `--max-new-tokens`)."""
    return "--" + name.replace("_", "-")


def _stop_agreement_field(what: str) -> Any:
    """The `stop_agreement` option of `rsa eval` and `rsa serve`: `what` it does, then its default and bare-flag value."""
    return field(
        default=None,
        metadata={
            "help": f"{what}. Off by default; the bare flag means {DEFAULT_STOP_AGREEMENT:g} (unanimous), the setting "
            "docs/ARCHITECTURE.md measured to save tokens without costing Pass@1; lower shares save more and cost "
            "Pass@1",
            "nargs": "?",
            "const": DEFAULT_STOP_AGREEMENT,
            "metavar": "SHARE",
        },
    )


def _check_number(name: str, value: float | int | None, *, low: float, low_inclusive: bool = True) -> None:
    """Raise ValueError unless `value` (when set) is a finite number above `low`."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{flag(name)} must be a finite number, got {value!r}")
    if value < low or (value == low and not low_inclusive):
        bound = f">= {low:g}" if low_inclusive else f"> {low:g}"
        raise ValueError(f"{flag(name)} must be {bound}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{flag(name)} {value!r}: choose one of {', '.join(choices)}")


# ----- shared option groups -----------------------------------------------------------------------------------
@dataclass
class EngineOptions:
    """The generation backend and its options (each belongs to the engines listed in `ENGINE_OPTION_FIELDS`)."""

    engine: str = field(default="vllm", metadata={"help": "generation backend", "choices": ENGINES})
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "hf, vllm: model dtype: auto, bfloat16 (bf16), float16 (fp16, half), float32 (fp32, float) "
            "(engine default when omitted)"
        },
    )
    max_model_len: int | None = field(
        default=None,
        metadata={"help": "the engine's context length (prompt + completion) in tokens (default: the model's)"},
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "hf: sequences per micro-batch; openai: requests in flight"}
    )
    tensor_parallel_size: int | None = field(default=None, metadata={"help": "vllm: GPUs per model"})
    gpu_memory_utilization: float | None = field(
        default=None, metadata={"help": "vllm: fraction of GPU memory to use, in (0, 1]"}
    )
    base_url: list[str] | None = field(
        default=None,
        metadata={
            "help": "openai: server URL(s); repeat the option or list several (command-line URLs add to the file's)",
            "action": "extend",
        },
    )
    api_key: str | None = field(default=None, metadata={"help": "openai: API key"})
    max_retries: int | None = field(
        default=None, metadata={"help": "openai: retries per request (timeouts, connection errors, 5xx)"}
    )
    engine_arg: list[str] | None = field(
        default=None,
        metadata={
            "help": "any other engine keyword argument as KEY=VALUE, the value parsed as YAML (repeatable), "
            "e.g. enforce_eager=true",
            "action": "extend",
            "metavar": "KEY=VALUE",
        },
    )

    def check_engine_options(self) -> None:
        """Raise ValueError for a bad engine name, option value, or an option of another engine."""
        if isinstance(self.base_url, str):
            self.base_url = [self.base_url]
        if isinstance(self.engine_arg, str):
            self.engine_arg = [self.engine_arg]
        _check_choice("engine", self.engine, ENGINES)
        if self.dtype is not None:
            from rsa.engines.base import canonical_dtype

            self.dtype = canonical_dtype(self.dtype)
        for name in ("max_model_len", "batch_size", "tensor_parallel_size"):
            _check_number(name, getattr(self, name), low=1)
        _check_number("max_retries", self.max_retries, low=0)
        _check_number("gpu_memory_utilization", self.gpu_memory_utilization, low=0, low_inclusive=False)
        if self.gpu_memory_utilization is not None and self.gpu_memory_utilization > 1:
            raise ValueError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        self.engine_kwargs()  # options of another engine, malformed --engine-arg

    def engine_kwargs(self) -> dict[str, Any]:
        """The engine options that are set, as `rsa.engines.make_engine` keyword arguments.

        Raises ValueError naming the option when it belongs to another engine, or when an `--engine-arg` is
        not KEY=VALUE.
        """
        import yaml

        options: dict[str, Any] = {}
        for name, keywords in ENGINE_OPTION_FIELDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if self.engine not in keywords:
                raise ValueError(
                    f"{flag(name)} is an option of the {' / '.join(keywords)} engine, not of {self.engine}; "
                    f"drop it or choose --engine {next(iter(keywords))}"
                )
            options[keywords[self.engine]] = value
        for item in self.engine_arg or []:
            key, sep, text = item.partition("=")
            if not sep or not key.strip().isidentifier():
                raise ValueError(f"--engine-arg {item!r}: expected KEY=VALUE, e.g. enforce_eager=true")
            options[key.strip()] = yaml.safe_load(text)
        return options


@dataclass
class SamplingOptions:
    """Sampling of every generation request."""

    temperature: float = field(
        default=_default(LoopConfig, "temperature"), metadata={"help": "sampling temperature, >= 0 (0 = greedy)"}
    )
    top_p: float = field(default=_default(LoopConfig, "top_p"), metadata={"help": "nucleus sampling mass, in (0, 1]"})
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": f"tokens generated per request (default: auto = min({MAX_NEW_TOKENS_CAP}, half the context: "
            "--max-model-len, else the model's config.json)"
        },
    )
    seed: int = field(
        default=_default(LoopConfig, "seed"),
        metadata={"help": "run seed; request seeds and aggregation sets derive from it"},
    )

    def check_sampling(self) -> None:
        """Raise ValueError for a sampling value out of range (NaN included)."""
        _check_number("temperature", self.temperature, low=0)
        _check_number("top_p", self.top_p, low=0, low_inclusive=False)
        if self.top_p > 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        _check_number("max_new_tokens", self.max_new_tokens, low=1)


@dataclass
class DataOptions:
    """Which problems: a dataset spec (`rsa.data.load_problems`) and its selection."""

    # The training recipes name the same selection `problems`, `problems_limit`, ... (rsa.training): those names
    # are accepted here too, so a recipe's problem selection can be pasted into `rsa eval` unchanged.
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "problems: file, built-in name (aime25, ...), hf:<repo>[:<split>], rg:<task>[+<task>...]",
            "aliases": ["--problems"],
        },
    )
    limit: int | None = field(
        default=None,
        metadata={"help": "use the first L problems", "aliases": ["--problems_limit", "--problems-limit"]},
    )
    size: int | None = field(
        default=None,
        metadata={
            "help": "problems to generate for procedural Reasoning Gym sets (rg:, rg-games)",
            "aliases": ["--problems_size", "--problems-size"],
        },
    )
    data_seed: int = field(
        default=0,
        metadata={
            "help": "seed of procedural Reasoning Gym generation",
            "aliases": ["--problems_seed", "--problems-seed"],
        },
    )
    task: str | None = field(
        default=None,
        metadata={
            "help": "task family of every row (math, rg, mcq, ...); inferred per row by default",
            "aliases": ["--problems_task", "--problems-task"],
        },
    )

    def check_data(self) -> None:
        """Raise ValueError for a bad selection or an unknown task."""
        from rsa.tasks import task_names

        _check_number("limit", self.limit, low=1)
        _check_number("size", self.size, low=1)
        if self.task is not None:
            _check_choice("task", self.task, tuple(task_names()))
            if self.dataset and self.dataset.startswith("rg:") and self.task != "rg":
                raise ValueError(
                    f"--task {self.task} with --dataset {self.dataset}: Reasoning Gym problems are graded by the "
                    "rg task; drop --task"
                )


# ----- rsa eval -----------------------------------------------------------------------------------------------
@dataclass
class EvalConfig(SamplingOptions, EngineOptions, DataOptions):
    """`rsa eval`: a model, a dataset, the RSA loop (or a budget-matched baseline), a run directory."""

    model: str | None = field(
        default=None, metadata={"help": "model directory, hub name, or the served model name (openai engine)"}
    )
    method: str = field(
        default=_default(LoopConfig, "method"),
        metadata={"help": "rsa, or a budget-matched baseline", "choices": METHODS},
    )
    population: int = field(
        default=_default(LoopConfig, "population"), metadata={"help": "population size N", "aliases": ["-N"]}
    )
    k: int = field(
        default=_default(LoopConfig, "k"),
        metadata={"help": "aggregation-set size K (1 = self-refinement)", "aliases": ["-K"]},
    )
    steps: int = field(
        default=_default(LoopConfig, "steps"),
        metadata={"help": "steps T, step 1 being the initial sampling", "aliases": ["-T"]},
    )
    final: str = field(
        default=_default(LoopConfig, "final"),
        metadata={"help": "final answer: a random member or the majority vote", "choices": FINAL_RULES},
    )
    thinking: str = field(
        default=_default(LoopConfig, "thinking"),
        metadata={"help": "keep or strip a thinking model's reasoning in candidates", "choices": THINKING_MODES},
    )
    out: str | None = field(default=None, metadata={"help": "run directory"})
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue the run in --out from its last completed step; the other options default to the run's "
            "(manifest.json), and a larger --steps extends a finished run"
        },
    )
    resume_if_exists: bool = field(
        default=False,
        metadata={"help": "resume the run in --out when there is one (as --resume), else start it (for sweeps)"},
    )
    log_prompts: bool = field(
        default=False,
        metadata={"help": "store the prompt each member was generated from in its population record (larger files)"},
    )
    progress: bool = field(
        default=True, metadata={"help": "progress bar (--no-progress, or off a terminal: a log line every minute)"}
    )
    schedule: str = field(
        default=_default(LoopConfig, "schedule"),
        metadata={
            "help": "async: each problem moves to its next step as soon as its population is complete; barrier: "
            "one step at a time over all problems. Same results either way",
            "choices": SCHEDULES,
        },
    )
    stop_agreement: float | None = _stop_agreement_field(
        "early stopping (method rsa): a problem stops evolving once this share of its members agree on the majority "
        "answer; its population is carried to later steps"
    )
    islands: int = field(
        default=_default(LoopConfig, "islands"),
        metadata={"help": "method rsa: M islands of N/M members that aggregate among themselves (1 = plain RSA)"},
    )
    migrate_every: int = field(
        default=_default(LoopConfig, "migrate_every"),
        metadata={"help": "with --islands: every this many steps one member of each island moves to the next"},
    )
    allow_existing_dir: bool = field(
        default=False,
        metadata={"help": "start a run in a non-empty --out folder that holds no run (its other files are left alone)"},
    )
    repair: bool = field(
        default=False,
        metadata={
            "help": "with --resume: rebuild a corrupt metrics.jsonl from the population files (old kept as .bad)"
        },
    )
    report_to: list[str] | None = field(
        default=None,
        metadata={
            "help": "trackers for the per-step metrics, as in the training recipes: tensorboard (event files in "
            "OUT/tensorboard), wandb (needs rsa-rl[wandb]) or none (default)",
            "action": "extend",
        },
    )

    def __post_init__(self) -> None:
        from rsa.tracking import check_report_to

        self.report_to = check_report_to(self.report_to)
        for name in ("model", "dataset", "out"):
            if not getattr(self, name):
                raise ValueError(f"{flag(name)} is required")
        self.out = str(self.out)
        if self.repair and not (self.resume or self.resume_if_exists):
            raise ValueError("--repair works on an existing run: pass it with --resume")
        self.check_engine_options()
        self.check_sampling()
        self.check_data()
        # method, N, K, T, final rule, thinking mode, schedule: checked by LoopConfig, the one place that does
        self.loop_config(self.max_new_tokens or 1)
        check_out_dir(Path(self.out), "--out")

    def loop_config(self, max_new_tokens: int | None = None) -> LoopConfig:
        """The `rsa.loop.LoopConfig` of this evaluation (`max_new_tokens` overrides an unresolved auto value).

        `rsa.evaluate.prepare_eval` builds it once `max_new_tokens` is known and carries it to the engine call."""
        return LoopConfig(
            method=self.method,
            population=self.population,
            k=self.k,
            steps=self.steps,
            seed=self.seed,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            final=self.final,
            thinking=self.thinking,
            schedule=self.schedule,
            stop_agreement=self.stop_agreement,
            islands=self.islands,
            migrate_every=self.migrate_every,
        )


# ----- rsa augment --------------------------------------------------------------------------------------------
@dataclass
class AugmentConfig(SamplingOptions, EngineOptions, DataOptions):
    """`rsa augment`: sample candidates from the reference policy and mix plain and aggregation prompts.

    `max_model_len` is the generation engine's context (as in `rsa eval`); the training length budget is
    `train_context_len` with `max_completion_length`.
    """

    model: str | None = field(
        default=None, metadata={"help": "reference policy that samples the candidates (the model to be trained)"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "training model's tokenizer for length budgeting (default: --model)"}
    )
    num_candidates: int = field(
        default=_default(CandidateConfig, "num_candidates"),
        metadata={"help": "candidates sampled per problem (M)", "aliases": ["-M"]},
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "max new tokens per candidate (default: --max-completion-length)",
            "aliases": ["--candidate-max-tokens", "--candidate_max_tokens"],
        },
    )
    shard_size: int = field(
        default=_default(CandidateConfig, "shard_size"), metadata={"help": "problems per shard = per engine call"}
    )
    aggregate_fraction: float = field(
        default=_default(MixConfig, "aggregate_fraction"),
        metadata={"help": "fraction of aggregation prompts, in [0, 1]"},
    )
    k: str = field(
        default=_default(MixConfig, "k"),
        metadata={"help": "candidates per aggregation prompt: 4, or a range like 2-4", "aliases": ["-K"]},
    )
    sets_per_problem: int = field(
        default=_default(MixConfig, "sets_per_problem"),
        metadata={"help": "aggregation prompts per problem (distinct sets)"},
    )
    balance: str | None = field(
        default=None,
        metadata={"help": "target fractions of candidate-set classes, e.g. easy=0.5,hard=0.5,all_wrong=0 (AggLM)"},
    )
    shortfall: str = field(
        default=_default(MixConfig, "shortfall"),
        metadata={"help": "a class short of its target: shrink the set count to keep the fractions, or fill"},
    )
    train_context_len: int | None = field(
        default=None,
        metadata={
            "help": "training length budget: a prompt fits when its tokens + --max-completion-length <= this "
            "(default: the training model's max_position_embeddings)"
        },
    )
    max_completion_length: int | None = field(
        default=None,
        metadata={
            "help": f"training completion length (default: auto = min({MAX_NEW_TOKENS_CAP}, half of "
            "--train-context-len))"
        },
    )
    overflow: str = field(
        default=_default(MixConfig, "overflow"), metadata={"help": "over-long candidates: cap with a marker, or drop"}
    )
    out: str | None = field(default=None, metadata={"help": "output directory"})
    resume: bool = field(default=False, metadata={"help": "continue the build in --out (finished shards are kept)"})
    import_file: str | None = field(
        default=None,
        metadata={"help": "convert a verl-layout parquet file instead of building", "aliases": ["--import"]},
    )
    progress: bool = field(default=True, metadata={"help": "progress bars (--no-progress: none)"})
    # Hub options are named as in TRL's TrainingArguments (push_to_hub is a boolean, the repo is hub_model_id)
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "after the build, push OUT as the Hub dataset repo --hub_model_id with a card of its "
                  "provenance and mixture; needs a token (HF_TOKEN or `hf auth login`)"},
    )  # fmt: skip
    hub_model_id: str | None = field(
        default=None, metadata={"help": "with --push_to_hub: the dataset repo, e.g. me/agg-data"}
    )
    hub_private_repo: bool = field(
        default=False,
        metadata={"help": "with --push_to_hub: create the repo private", "aliases": ["--hub_private", "--hub-private"]},
    )
    hub_revision: str | None = field(default=None, metadata={"help": "with --push_to_hub: branch to push to"})

    def __post_init__(self) -> None:
        from rsa.augment import Balance
        from rsa.seeds import KRange

        if not self.out:
            raise ValueError("--out is required")
        self.out = str(self.out)
        self.k = str(self.k)
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs the dataset repo: pass --hub_model_id ORG/NAME")
        if self.hub_model_id and not self.push_to_hub:
            raise ValueError("--hub_model_id names the repo to push to: add --push_to_hub (or drop --hub_model_id)")
        if self.import_file is None:
            for name in ("model", "dataset"):
                if not getattr(self, name):
                    raise ValueError(f"{flag(name)} is required (or --import FILE)")
            if self.engine == "openai" and not self.tokenizer:
                raise ValueError(
                    "--engine openai serves a model by name: pass --tokenizer (the training model's directory)"
                )
        elif self.train_context_len and not self.tokenizer:
            raise ValueError("--train-context-len with --import needs --tokenizer to count prompt tokens")
        if self.num_candidates < 1:
            raise ValueError(
                f"num_candidates (M) must be >= 1 (--num-candidates / -M), got {self.num_candidates}: the candidate "
                "set would be empty and there would be nothing to aggregate"
            )
        _check_number("shard_size", self.shard_size, low=1)
        _check_number("sets_per_problem", self.sets_per_problem, low=1)
        _check_number("aggregate_fraction", self.aggregate_fraction, low=0)
        if self.aggregate_fraction > 1:
            raise ValueError(f"--aggregate-fraction must be in [0, 1], got {self.aggregate_fraction}")
        _check_number("train_context_len", self.train_context_len, low=2)
        _check_number("max_completion_length", self.max_completion_length, low=1)
        try:
            KRange.parse(self.k)
        except ValueError as exc:
            raise ValueError(f"--k {self.k}: {exc}") from None
        if self.balance is not None:
            try:
                Balance.parse(self.balance)
            except ValueError as exc:
                raise ValueError(f"--balance {self.balance}: {exc}") from None
        # the mixture's own checks (shortfall, overflow modes), with placeholder lengths resolved later
        MixConfig(
            max_model_len=2,
            max_completion_length=1,
            aggregate_fraction=self.aggregate_fraction,
            k=self.k,
            sets_per_problem=self.sets_per_problem,
            balance=self.balance,
            shortfall=self.shortfall,
            overflow=self.overflow,
        )
        self.check_engine_options()
        self.check_sampling()
        self.check_data()
        check_out_dir(Path(self.out), "--out")


# ----- checks and defaults that read files (no model is loaded) -------------------------------------------------
def check_out_dir(path: Path, option: str) -> None:
    """Raise ValueError when `path` exists but is not a directory (a run or build folder goes there)."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a directory; choose a directory for the output")


def read_manifest(path: Path) -> dict:
    """The JSON object in the manifest file `path`; ValueError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON manifest ({exc}); restore it or start a new --out") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a JSON object, found a {type(data).__name__}; restore it or start a new --out"
        )
    return data


def check_model(model: str, engine: str) -> str:
    """The model argument, made absolute when it is a local path; ValueError when it cannot be used."""
    if engine == "openai":
        return model  # a name the server knows; nothing to check locally
    path = Path(model).expanduser()
    if not _looks_local(model):
        if _hub_config(model):
            return model  # cached: the engine loads it without the network
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise FileNotFoundError(
                f"--model {model}: no such directory ({path.absolute()}), and not in the Hugging Face cache (HF_HUB_OFFLINE is set)"
                f"{_build_hint(model)}"
            )
        _check_on_hub(model)  # one quick request instead of the engine's minute of retries
        return model  # a hub name, resolved by the engine
    if not path.exists():
        raise FileNotFoundError(f"--model {model}: no such directory ({path.absolute()}){_build_hint(model)}")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ValueError(f"--model {model}: not a model directory (expected a config.json inside)")
    if not os.access(path / "config.json", os.R_OK):
        raise ValueError(f"--model {model}: config.json is not readable")
    return str(path.resolve())


def _looks_local(model: str) -> bool:
    """Whether `model` names a local folder rather than a Hub repo id: it exists, starts like a path (., /, ~),
    its parent folder exists, or it is not of the Hub's `name` / `org/name` form."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(model).expanduser()
    if model.startswith((".", "/", "~")) or path.exists() or os.sep != "/" and os.sep in model:
        return True
    if len(path.parts) > 1 and path.parent.is_dir():
        return True
    try:
        validate_repo_id(model)
    except HFValidationError:
        return True
    return False


def _build_hint(model: str) -> str:
    """How to make the tiny test model at `model`'s path (the README's first command)."""
    return f"; to build the tiny test model there: rsa tiny-model --out {model}"


def _check_on_hub(repo_id: str) -> None:
    """FileNotFoundError when the Hub cannot be reached or has no model `repo_id` (one request, 10 s at most);
    any other answer leaves the decision to the engine."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        model_info(repo_id, timeout=10)
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"--model {repo_id}: no such local folder, and no model {repo_id!r} on the Hugging Face Hub"
            f"{_build_hint(repo_id)}"
        ) from None
    except Exception as exc:  # noqa: BLE001  (httpx and hub errors share no base): only a connection failure counts
        if any(cls.__name__ in ("TransportError", "ConnectionError") for cls in type(exc).__mro__):
            raise FileNotFoundError(
                f"--model {repo_id}: no such local folder ({Path(repo_id).absolute()}), not in the Hugging Face "
                f"cache, and the Hub cannot be reached ({exc}){_build_hint(repo_id)}"
            ) from None


def _hub_config(repo_id: str) -> str | None:
    """Path of the cached config.json of hub model `repo_id`, when there is one."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return found if isinstance(found, str) else None


def model_context_length(model: str) -> int | None:
    """`max_position_embeddings` from the config.json of a local model or a cached hub model, when known."""
    local = Path(model).expanduser() / "config.json"
    config_file = str(local) if local.is_file() else _hub_config(model)
    if config_file is None:
        return None
    try:
        config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if value is None and isinstance(config, dict) and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("max_position_embeddings")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else None


def auto_max_new_tokens(context: int) -> int:
    """The default generation length for a context of `context` tokens: min(8192, half the context)."""
    return max(1, min(MAX_NEW_TOKENS_CAP, context // 2))


def config_fields(cls: type) -> list[str]:
    """Names of the options of config class `cls` (the keys a `--config` YAML file may hold)."""
    return [f.name for f in fields(cls)]


# ----- rsa serve ----------------------------------------------------------------------------------------------
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: the environment variable `rsa serve` reads its API key from when `--api-key` is not given
SERVE_API_KEY_ENV = "RSA_SERVE_API_KEY"


@dataclass
class ServeConfig(SamplingOptions, EngineOptions):
    """`rsa serve`: an OpenAI-compatible chat-completions server that answers every request with RSA.

    N, K, T, the final rule and the sampling settings are the server's defaults; a request overrides them in
    its `rsa` object and its OpenAI sampling fields (see docs/SERVE.md). `api_key` is the key clients must
    send (`Authorization: Bearer KEY`); the openai engine's own key for its backends is `backend_api_key`.
    """

    model: str | None = field(
        default=None, metadata={"help": "model directory, hub name, or the backends' served model name (openai)"}
    )
    task: str = field(
        default="math", metadata={"help": "task family whose prompts, answer extraction and equivalence RSA uses"}
    )
    population: int = field(
        default=_default(LoopConfig, "population"), metadata={"help": "default population size N", "aliases": ["-N"]}
    )
    k: int = field(default=_default(LoopConfig, "k"), metadata={"help": "default aggregation-set size K"})
    steps: int = field(default=_default(LoopConfig, "steps"), metadata={"help": "default RSA steps T"})
    final: str = field(
        default="majority",
        metadata={"help": "default final answer: the majority vote or a random member", "choices": FINAL_RULES},
    )
    thinking: str = field(
        default=_default(LoopConfig, "thinking"),
        metadata={"help": "keep or strip a thinking model's reasoning in candidates", "choices": THINKING_MODES},
    )
    stop_agreement: float | None = _stop_agreement_field(
        "default early stopping: a request's RSA stops once this share of its members agree (its population is the "
        "answer's from then on); a request sets or clears it with rsa.stop_agreement"
    )
    served_model_name: str | None = field(
        default=None, metadata={"help": "the model name clients send and /v1/models lists (default: --model)"}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; any but loopback needs an API key"})
    port: int = field(default=8000, metadata={"help": "TCP port to bind (0: any free port)"})
    api_key: str | None = field(
        default=None,
        metadata={"help": f"the key clients must send as 'Authorization: Bearer KEY' (or set {SERVE_API_KEY_ENV})"},
    )
    backend_api_key: str | None = field(default=None, metadata={"help": "openai engine: the backends' API key"})
    max_active: int = field(default=64, metadata={"help": "RSA requests running at once (they share the engine)"})
    max_queue: int = field(
        default=256, metadata={"help": "requests waiting beyond --max-active; more are refused with 429"}
    )
    request_timeout: float = field(
        default=600.0, metadata={"help": "seconds one request may take (a request's rsa.timeout may lower it)"}
    )
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body accepted, in bytes"})
    log_prompts: bool = field(default=False, metadata={"help": "log each request's messages (off: only sizes)"})

    def __post_init__(self) -> None:
        from rsa.tasks import task_names

        if not self.model:
            raise ValueError("--model is required")
        self.api_key = self.api_key or os.environ.get(SERVE_API_KEY_ENV) or None
        if self.host not in LOOPBACK_HOSTS and not self.api_key:
            raise ValueError(
                f"--host {self.host} exposes the server beyond this machine: set --api-key (or {SERVE_API_KEY_ENV}), "
                "or bind 127.0.0.1"
            )
        _check_choice("task", self.task, tuple(task_names()))
        _check_choice("final", self.final, FINAL_RULES)
        _check_choice("thinking", self.thinking, THINKING_MODES)
        _check_number("port", self.port, low=0)
        for name in ("max_active", "max_body_bytes"):
            _check_number(name, getattr(self, name), low=1)
        _check_number("max_queue", self.max_queue, low=0)
        _check_number("request_timeout", self.request_timeout, low=0, low_inclusive=False)
        self.check_engine_options()
        self.check_sampling()
        self.loop_config(self.max_new_tokens or 1)  # population, K, steps

    def engine_kwargs(self) -> dict[str, Any]:
        """The engine's keyword arguments; the backends' key is `backend_api_key` (`api_key` is the server's)."""
        server_key, self.api_key = self.api_key, self.backend_api_key
        try:
            return super().engine_kwargs()
        finally:
            self.api_key = server_key

    def loop_config(self, max_new_tokens: int | None = None, **overrides: Any) -> LoopConfig:
        """The RSA settings of one request: the server's defaults with `overrides` (LoopConfig field names)."""
        values = {
            "method": "rsa",
            "population": self.population,
            "k": self.k,
            "steps": self.steps,
            "seed": self.seed,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": max_new_tokens or self.max_new_tokens,
            "final": self.final,
            "thinking": self.thinking,
            "schedule": "async",
            "stop_agreement": self.stop_agreement,
        }
        values.update(overrides)
        return LoopConfig(**values)
