"""Recursive self-aggregation (RSA) over a generation engine, as the paper describes it.

Parameters: population size N, aggregation-set size K, steps T.

* Step 1: for every problem, sample N independent answers to the task's plain prompt.
* Step t > 1: for each of the N slots, draw an aggregation set of K members of the previous population,
  uniformly at random and without replacement within the set (sets are drawn independently of each
  other). The question plus the K candidate solutions go into the task's aggregation prompt and the
  model writes one improved solution. The N new solutions replace the previous population: no elitism,
  no selection, no verifier. K = 1 is self-refinement and uses the task's refinement wording.
* End: the answer is a uniformly random member of the last population (the paper's Pass@1), or the
  majority-vote answer.

Every step is ONE batched `engine.generate` call holding all problems and all slots. Each request gets
its own sampling seed, derived from (run seed, step, problem index, slot), and aggregation sets are
drawn from a numpy Generator seeded from (run seed, step, problem index); so a run resumed from a saved
population reproduces the uninterrupted run on engines that honour per-request seeds.

Candidates that would overflow the context (`engine.max_model_len - max_new_tokens` tokens for the
prompt) are shortened, each to an equal share of what the question leaves free, keeping their beginning
and end around a visible `TRUNCATION_MARKER`; a candidate is never dropped and the question is never cut
(if the question itself does not fit, `ContextBudgetError` is raised before anything is generated).

Budget-matched baselines (`LoopConfig.method`), all spending N * T generations per problem:

* ``rsa``        the algorithm above.
* ``sample``     T independent rounds of N plain samples; step t's population is round t alone.
* ``majority``   the same samples, but step t's population is the pool of all N * t samples so far,
                 so the last step is a majority vote over N * T samples.
* ``refine``     N independent self-refinement chains: slot i refines its own previous answer (K = 1).
* ``single-agg`` a single aggregation step (T = 2 in effect): step 1 samples a pool of N * (T - 1)
                 answers, step 2 writes N aggregations of K candidates drawn from that pool.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from rsa.engines.base import Engine, SamplingParams
from rsa.fitting import TRUNCATION_MARKER, ContextBudgetError, PromptBuilder  # noqa: F401  (the first two re-exported)
from rsa.tasks import Conversation, Problem, get_task

logger = logging.getLogger(__name__)

METHODS = ("rsa", "sample", "majority", "refine", "single-agg")
FINAL_RULES = ("random", "majority")
THINKING_MODES = ("strip", "keep")

_SEED_MODULUS = 2**31 - 1  # request seeds fit a signed 32-bit int, which every backend accepts


@dataclass(frozen=True)
class LoopConfig:
    """What to run: method, population N, aggregation-set size K, steps T, seed and sampling settings."""

    method: str = "rsa"
    population: int = 16
    k: int = 4
    steps: int = 10
    seed: int = 1234
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8192
    final: str = "random"  # how the final answer is chosen: a random member or the majority vote
    thinking: str = "strip"  # whether a thinking model's reasoning goes into aggregation prompts

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.population < 1:
            raise ValueError(f"population N must be >= 1, got {self.population}")
        if self.steps < 1:
            raise ValueError(f"steps T must be >= 1 (step 1 is the initial sampling), got {self.steps}")
        if self.k < 1:
            raise ValueError(f"aggregation-set size K must be >= 1, got {self.k}")
        if self.method == "rsa" and self.k > self.population:
            raise ValueError(
                f"K={self.k} is larger than the population N={self.population}: an aggregation set draws K "
                "distinct members, so use K <= N"
            )
        if self.method == "single-agg":
            if self.steps < 2:
                raise ValueError("method single-agg needs steps T >= 2 (its budget is N * T generations)")
            if self.k > self.population * (self.steps - 1):
                raise ValueError(
                    f"K={self.k} is larger than single-agg's candidate pool N*(T-1)={self.population * (self.steps - 1)}"
                )
        if self.final not in FINAL_RULES:
            raise ValueError(f"unknown final-answer rule {self.final!r}; choose one of {', '.join(FINAL_RULES)}")
        if self.thinking not in THINKING_MODES:
            raise ValueError(f"unknown thinking mode {self.thinking!r}; choose one of {', '.join(THINKING_MODES)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def num_steps(self) -> int:
        """Steps actually run: T, except single-agg which always has 2 (pool, then one aggregation)."""
        return 2 if self.method == "single-agg" else self.steps

    @property
    def aggregation_size(self) -> int:
        """Candidates per aggregation prompt: K, or 1 for self-refinement."""
        return 1 if self.method == "refine" else self.k

    def generations_at(self, step: int) -> int:
        """How many answers step `step` generates per problem."""
        if self.method == "single-agg" and step == 1:
            return self.population * (self.steps - 1)
        return self.population

    @property
    def budget_per_problem(self) -> int:
        """Total generations per problem over the whole run (N * T for every method)."""
        return sum(self.generations_at(t) for t in range(1, self.num_steps + 1))

    def to_dict(self) -> dict:
        """The configuration as a plain JSON-ready dict."""
        return asdict(self)


@dataclass
class Member:
    """One answer in a population: what was generated, how it scored, and which members it aggregated."""

    text: str
    num_tokens: int
    extracted: str | None
    score: float
    parents: tuple[int, ...] = ()  # indices into the previous population (empty for a plain sample)
    finish_reason: str = "stop"
    reasoning: str | None = None
    truncated_parents: int = 0  # how many of the parents had to be shortened to fit the context
    seed: int | None = None
    _prompt_tokens: int | None = field(default=None, repr=False, compare=False)


Population = list[Member]  # one problem's population at one step


@dataclass
class StepResult:
    """The outcome of one step: each problem's new members, plus cost figures."""

    step: int
    generated: list[Population]  # per problem, the members generated at this step
    tokens_generated: int
    wall_time_s: float
    truncated_candidates: int


# ----- seeds and aggregation sets -----------------------------------------------------------------------------
def request_seed(run_seed: int, step: int, problem_index: int, slot: int) -> int:
    """The sampling seed of one request: a fixed hash of (run seed, step, problem index, slot)."""
    digest = hashlib.blake2b(f"{run_seed}/{step}/{problem_index}/{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _SEED_MODULUS


def subset_rng(run_seed: int, step: int, problem_index: int) -> np.random.Generator:
    """The Generator that draws one problem's aggregation sets at one step."""
    return np.random.default_rng([run_seed % 2**63, step, problem_index])


def draw_aggregation_sets(rng: np.random.Generator, population_size: int, num_sets: int, k: int) -> np.ndarray:
    """`num_sets` independent aggregation sets, each K distinct members drawn uniformly; shape (num_sets, K).

    Sorting i.i.d. uniforms gives a uniformly random permutation per row; its first K entries are a
    uniformly random K-subset (in random order), drawn without replacement within the row.
    """
    if not 1 <= k <= population_size:
        raise ValueError(f"cannot draw {k} distinct members from a population of {population_size}")
    return np.argsort(rng.random((num_sets, population_size)), axis=1)[:, :k]


# ----- the loop -----------------------------------------------------------------------------------------------
@dataclass
class _Request:
    problem_index: int
    slot: int
    conversation: Conversation
    parents: tuple[int, ...]
    truncated: int
    seed: int


class RSALoop:
    """RSA (and its baselines) for a list of problems on one engine; one batched engine call per step."""

    def __init__(self, engine: Engine, problems: Sequence[Problem], config: LoopConfig) -> None:
        if not problems:
            raise ValueError("no problems to run")
        self.engine = engine
        self.problems = list(problems)
        self.config = config
        self.tasks = [get_task(p.task) for p in self.problems]
        self.prompts = PromptBuilder(engine, config.max_new_tokens, config.thinking)
        self.params = SamplingParams(
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
        )

    def check_context(self) -> None:
        """Raise ContextBudgetError before generating when some question cannot fit its prompts."""
        aggregates = self.config.method in ("rsa", "refine", "single-agg") and self.config.num_steps > 1
        for task, problem in zip(self.tasks, self.problems):
            self.prompts.check_fits(task, problem, None)
            if aggregates:
                self.prompts.check_fits(task, problem, self.config.aggregation_size)

    def requests(self, step: int, previous: Sequence[Population] | None) -> list[_Request]:
        """The step's requests for every problem and slot, in (problem, slot) order."""
        cfg = self.config
        plain = step == 1 or cfg.method in ("sample", "majority")
        requests = []
        for pi, (task, problem) in enumerate(zip(self.tasks, self.problems)):
            size = cfg.generations_at(step)
            if plain:
                conversation = self.prompts.plain(task, problem)
                for slot in range(size):
                    requests.append(_Request(pi, slot, conversation, (), 0, request_seed(cfg.seed, step, pi, slot)))
                continue
            population = previous[pi]
            if cfg.method == "refine":
                aggregation_sets = [(slot,) for slot in range(size)]  # each chain refines its own answer
            else:
                rng = subset_rng(cfg.seed, step, pi)
                aggregation_sets = draw_aggregation_sets(rng, len(population), size, cfg.k).tolist()
            for slot, aggregation_set in enumerate(aggregation_sets):
                candidates = [population[i] for i in aggregation_set]
                conversation, truncated = self.prompts.aggregation(task, problem, candidates)
                requests.append(
                    _Request(
                        pi,
                        slot,
                        conversation,
                        tuple(aggregation_set),
                        truncated,
                        request_seed(cfg.seed, step, pi, slot),
                    )
                )
        return requests

    def run_step(self, step: int, previous: Sequence[Population] | None) -> StepResult:
        """Generate and score step `step` from the previous step's populations (None at step 1)."""
        if step > 1 and previous is None:
            raise ValueError(f"step {step} needs the previous step's populations")
        start = time.perf_counter()
        requests = self.requests(step, previous)
        generations = self.engine.generate(
            [r.conversation for r in requests], self.params, seeds=[r.seed for r in requests]
        )
        if len(generations) != len(requests):
            raise RuntimeError(f"engine returned {len(generations)} generations for {len(requests)} requests")
        generated: list[Population] = [[] for _ in self.problems]
        for request, generation in zip(requests, generations):
            task, problem = self.tasks[request.problem_index], self.problems[request.problem_index]
            extracted = task.extract(generation.text)
            generated[request.problem_index].append(
                Member(
                    text=generation.text,
                    num_tokens=generation.num_tokens,
                    extracted=extracted,
                    score=float(task.score_extracted(extracted, problem)),
                    parents=request.parents,
                    finish_reason=generation.finish_reason,
                    reasoning=generation.reasoning,
                    truncated_parents=request.truncated,
                    seed=request.seed,
                )
            )
        return StepResult(
            step=step,
            generated=generated,
            tokens_generated=sum(g.num_tokens for g in generations),
            wall_time_s=time.perf_counter() - start,
            truncated_candidates=sum(r.truncated for r in requests),
        )

    def run(self, previous: Sequence[Population] | None = None, start_step: int = 1) -> Iterator[StepResult]:
        """Yield steps `start_step`..T; `previous` is step `start_step - 1`'s populations (e.g. loaded on resume)."""
        if start_step > 1 and previous is None:
            raise ValueError(f"resuming at step {start_step} needs step {start_step - 1}'s populations")
        self.check_context()
        for step in range(start_step, self.config.num_steps + 1):
            result = self.run_step(step, previous)
            previous = result.generated
            yield result


def evaluated_population(method: str, history: Sequence[Sequence[Population]]) -> list[Population]:
    """What the metrics of the latest step in `history` look at, per problem.

    The latest population, except for `majority`, whose step t is the pool of all samples so far.
    """
    if method == "majority":
        return [[m for step in history for m in step[pi]] for pi in range(len(history[-1]))]
    return list(history[-1])


def final_answers(problems: Sequence[Problem], population: Sequence[Population], rule: str, seed: int) -> list[dict]:
    """The final answer per problem: a uniformly random member (seeded) or the majority-vote answer."""
    from rsa.voting import majority_answer

    answers = []
    for pi, (problem, members) in enumerate(zip(problems, population)):
        task = get_task(problem.task)
        if rule == "random":
            index = int(np.random.default_rng([seed % 2**63, 0, pi]).integers(len(members)))
            answer, score = members[index].extracted, members[index].score
        else:
            cluster = majority_answer(task, [m.extracted for m in members], problem)
            index = cluster.members[0] if cluster else None
            answer = cluster.answer if cluster else None
            score = members[index].score if cluster else 0.0
        answers.append({"problem_id": problem.id, "rule": rule, "member": index, "answer": answer, "score": score})
    return answers
