"""The toy world's task families ("worlds"): what pre-training imitates and what the diagnostics check.

- `add` (task `toy`): multi-term addition with written partial sums. Checking a candidate's lines and writing
  one's own are the same skill there, so plain RL sharpens aggregation as much as aggregation training does
  (docs/TOYWORLD.md keeps that negative result).
- `pick` (task `pick`): name two listed numbers that sum to a target. Plain answers are the pair alone (a search
  the tiny model does poorly); aggregation answers check each candidate with one written sum, which plain
  answers never exercise.

A world turns a problem into pre-training targets (a weak model's plain answer, and a weak aggregator's answer
over candidates of the same kind) and judges outputs for the diagnostics. The pre-training settings it reads
are those of `rsa.toyworld.pretrain.PretrainConfig`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rsa.tasks import Problem, get_task
from rsa.tasks import pick as pick_task
from rsa.tasks import toy as add_task


class World:
    """One toy task family; subclasses fill in the task-specific parts."""

    name = ""
    task = ""
    difficulties: tuple[str, ...] = ()
    #: every family the tokenizer's corpus covers (fixed, so that tokenizers stay the same across mixes)
    tokenizer_difficulties: tuple[str, ...] = ()
    #: the tokenizer's corpus holds aggregation answers too (the `add` world's are copies of candidates)
    corpus_aggregation_answers = True
    #: the gate also measures coverage (plain Pass@N) and requires it
    gate_coverage = False

    def generate(self, n: int, seed: int, difficulties: Sequence[str], prefix: str) -> list[Problem]:
        """`n` problems from `seed`, cycling through `difficulties` (deterministic)."""
        raise NotImplementedError

    def plain_target(self, problem: Problem, rng: random.Random, config) -> str:
        """A weak solver's answer to the plain prompt (also the candidates of aggregation prompts)."""
        raise NotImplementedError

    def aggregation_target(self, problem: Problem, candidates: Sequence[str], rng: random.Random, config) -> str:
        """A weak aggregator's answer over `candidates`."""
        raise NotImplementedError

    def valid(self, problem: Problem, text: str) -> bool:
        """Whether an output is fully right (every line checks, and so does the answer)."""
        raise NotImplementedError

    def difficulty_of(self, question: str) -> str:
        """The difficulty label of a question."""
        raise NotImplementedError

    def aggregation_record(self, problem: Problem, candidates: Sequence[str], output: str) -> dict:
        """How one aggregation output relates to its candidates: `valid`, `exact_copy` (it reproduces a candidate,
        see `copied`), `has_valid_candidate`, `copies_valid` (it reproduces a valid one), `resolves` (its answer is
        none of the candidates' answers: it solved anew), and for worlds that write checks `checks` and
        `verdicts_right` (None otherwise)."""
        task = get_task(self.task)
        keys = [task.equivalence_key(task.extract(c), problem) for c in candidates]
        mine = task.equivalence_key(task.extract(output), problem)
        valid = [self.valid(problem, c) for c in candidates]
        copied = self.copied(candidates, output)
        return {
            "valid": self.valid(problem, output),
            "exact_copy": bool(copied),
            "has_valid_candidate": any(valid),
            "copies_valid": any(valid[i] for i in copied),
            "resolves": mine is not None and mine not in keys,
            "checks": None,
            "verdicts_right": None,
        }

    def copied(self, candidates: Sequence[str], output: str) -> list[int]:
        """The candidates that `output` reproduces: the same text, by default."""
        text = (output or "").strip()
        return [i for i, c in enumerate(candidates) if c.strip() == text]

    def tokenizer_corpus(self, seed: int) -> list[str]:
        """Texts of every kind the world produces, for its tokenizer."""
        task = get_task(self.task)
        rng = random.Random(seed)
        corpus = []
        config = _corpus_config()
        for problem in self.generate(400, seed + 1, self.tokenizer_difficulties, "tok"):
            candidates = [self.plain_target(problem, rng, config) for _ in range(3)]
            corpus.append(problem.question + "\n" + candidates[0])
            corpus.append(task.aggregation_prompt(problem, candidates)[0]["content"])
            corpus.append(task.aggregation_prompt(problem, candidates[:1])[0]["content"])
            if self.corpus_aggregation_answers:
                corpus.append(self.aggregation_target(problem, candidates, rng, config))
        return corpus + ["user", "assistant", "system"]


def _corpus_config():
    from rsa.toyworld.pretrain import PretrainConfig

    # noisier than any pre-training mix, so the corpus holds every error mode's text
    return PretrainConfig(slip_rate=0.3, addend_rate=0.1, chain_rate=0.1, valid_rate=0.3, check_slip_rate=0.3)


class AdditionWorld(World):
    """Multi-term addition with written partial sums (task `toy`)."""

    name = "add"
    task = "toy"
    difficulties = add_task.DIFFICULTIES
    tokenizer_difficulties = ("3x1", "4x1", "6x1", "4x2")
    corpus_aggregation_answers = False

    def generate(self, n, seed, difficulties, prefix):
        return add_task.generate_problems(n, seed, [add_task.ToySpec.parse(d) for d in difficulties], prefix)

    def plain_target(self, problem, rng, config):
        return add_task.noisy_solution(
            add_task.numbers_of(problem), rng, config.slip_rate, config.addend_rate, config.chain_rate
        )

    def aggregation_target(self, problem, candidates, rng, config):
        """With `copy_valid_prob` a copy of a candidate whose lines all check (when one exists), otherwise a copy
        of a random candidate."""
        numbers = add_task.numbers_of(problem)
        valid = [c for c in candidates if add_task.check_derivation(numbers, c).valid]
        if valid and rng.random() < config.copy_valid_prob:
            return rng.choice(valid)
        return rng.choice(list(candidates))

    def valid(self, problem, text):
        return add_task.check_derivation(add_task.numbers_of(problem), text).valid

    def difficulty_of(self, question):
        return add_task.difficulty_of(question)


class PickWorld(World):
    """Two listed numbers that sum to a target (task `pick`)."""

    name = "pick"
    task = "pick"
    difficulties = pick_task.DIFFICULTIES
    tokenizer_difficulties = ("p6", "p8")
    gate_coverage = True

    def generate(self, n, seed, difficulties, prefix):
        return pick_task.generate_problems(n, seed, [pick_task.PickSpec.parse(d) for d in difficulties], prefix)

    def plain_target(self, problem, rng, config):
        return pick_task.noisy_answer(pick_task.parse_question(problem.question), rng, config.valid_rate)

    def aggregation_target(self, problem, candidates, rng, config):
        """With `check_prob`, check every candidate with one written sum (slipping with `check_slip_rate`) and copy the
        first marked ok; otherwise copy a random candidate."""
        return pick_task.weak_aggregation(
            pick_task.parse_question(problem.question), candidates, rng, config.check_slip_rate, config.check_prob
        )

    def valid(self, problem, text):
        """The answer is right and every check line written is right."""
        return get_task("pick").score(text, problem) == 1.0 and pick_task.checks_hold(
            pick_task.parse_question(problem.question), text
        )

    def difficulty_of(self, question):
        return pick_task.difficulty_of(question)

    def copied(self, candidates, output):
        """The candidates whose answer `output` gives (its check lines differ from any candidate's text)."""
        task = get_task(self.task)
        mine = task.extract(output)
        return [i for i, c in enumerate(candidates) if mine is not None and task.extract(c) is not None
                and task.same_answer(task.extract(c), mine)]  # fmt: skip

    def aggregation_record(self, problem, candidates, output):
        record = super().aggregation_record(problem, candidates, output)
        checked = pick_task.check_record(pick_task.parse_question(problem.question), candidates, output)
        record["checks"] = checked.checks
        record["verdicts_right"] = checked.correct_verdicts
        return record


WORLDS: dict[str, World] = {world.name: world for world in (AdditionWorld(), PickWorld())}


def world_of_task(task: str) -> World:
    """The world whose problems carry task name `task`; ValueError otherwise."""
    for world in WORLDS.values():
        if world.task == task:
            return world
    raise ValueError(f"task {task!r} belongs to no toy world; known: {', '.join(w.task for w in WORLDS.values())}")


def get_world(name: str) -> World:
    """The world named `name`; ValueError listing the known worlds otherwise."""
    if name not in WORLDS:
        raise ValueError(f"unknown toy world {name!r}; known worlds: {', '.join(WORLDS)}")
    return WORLDS[name]
