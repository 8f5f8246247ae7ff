"""The RSA loop: subset sampling, one batched call per step, K=1 refinement wording, truncation, baselines,
and the loop for real on the tiny model through the hf engine."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from rsa.fitting import TRUNCATION_MARKER, ContextBudgetError
from rsa.loop import LoopConfig, Member, RSALoop, evaluated_population, final_answers
from rsa.seeds import draw_aggregation_sets, request_seed, subset_rng
from rsa.tasks import Problem, get_task


def math_problems(n: int) -> list[Problem]:
    return [Problem(id=f"m{i}", task="math", question=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(n)]


def run_all(loop: RSALoop) -> list:
    return list(loop.run())


# ----- subset sampling ----------------------------------------------------------------------------------------
def test_aggregation_sets_without_replacement_and_uniform():
    population, k, draws = 8, 3, 20000
    sets = np.array(draw_aggregation_sets(np.random.default_rng(0), population, draws, k))
    assert sets.shape == (draws, k)
    assert all(len(set(row)) == k for row in sets.tolist())  # without replacement within a set
    assert sets.min() >= 0 and sets.max() < population
    # marginals: every member equally likely; chi-square with 7 dof (p = 1e-4 at ~29.9)
    counts = np.bincount(sets.ravel(), minlength=population)
    expected = draws * k / population
    assert ((counts - expected) ** 2 / expected).sum() < 30
    # whole subsets: all C(8,3) = 56 subsets equally likely; chi-square with 55 dof (p = 1e-4 at ~97)
    subsets = Counter(tuple(sorted(row)) for row in sets.tolist())
    assert len(subsets) == 56
    expected = draws / 56
    assert sum((subsets[s] - expected) ** 2 / expected for s in itertools.combinations(range(8), 3)) < 100
    # position within a set carries no preference either
    first = np.bincount(sets[:, 0], minlength=population)
    assert ((first - draws / population) ** 2 / (draws / population)).sum() < 30


def test_aggregation_sets_are_independent_across_slots():
    # with N=2, K=1 the two slots' picks agree half of the time when sets are drawn independently
    agree = sum(
        int(s[0][0] == s[1][0])
        for s in (draw_aggregation_sets(subset_rng(7, 2, p), 2, 2, 1) for p in range(4000))  # new rng per problem
    )
    assert abs(agree / 4000 - 0.5) < 0.04


def test_aggregation_sets_reject_k_above_population():
    with pytest.raises(ValueError, match="cannot draw 5 distinct members from a population of 4"):
        draw_aggregation_sets(np.random.default_rng(0), 4, 2, 5)


def test_seeds_are_deterministic_and_distinct():
    assert request_seed(1234, 3, 7, 2) == request_seed(1234, 3, 7, 2)
    seeds = {request_seed(1234, t, p, s) for t in range(1, 5) for p in range(20) for s in range(16)}
    assert len(seeds) == 4 * 20 * 16
    assert all(0 <= s < 2**31 for s in seeds)
    a = subset_rng(1234, 2, 5).random(4)
    assert np.array_equal(a, subset_rng(1234, 2, 5).random(4))
    assert not np.array_equal(a, subset_rng(1234, 2, 6).random(4))


# ----- the loop on a fake engine: orchestration only ----------------------------------------------------------
def test_one_batched_call_per_step_with_valid_parents(fake_engine):
    engine = fake_engine()
    problems = math_problems(5)
    steps = run_all(RSALoop(engine, problems, LoopConfig(population=6, k=3, steps=4, max_new_tokens=64)))
    assert len(engine.calls) == 4  # one engine call per step, all problems and slots together
    assert [len(conversations) for conversations, _ in engine.calls] == [30] * 4
    assert [s.step for s in steps] == [1, 2, 3, 4]
    for result in steps[1:]:
        for population in result.generated:
            assert len(population) == 6
            for member in population:
                assert len(member.parents) == 3 and len(set(member.parents)) == 3
                assert all(0 <= i < 6 for i in member.parents)
    # requests are ordered by (problem, slot) and carry the derived seeds
    _, seeds = engine.calls[1]
    assert seeds == [request_seed(1234, 2, p, s) for p in range(5) for s in range(6)]


def test_aggregation_prompt_holds_the_chosen_candidates(fake_engine):
    engine = fake_engine()
    problems = math_problems(2)
    steps = run_all(RSALoop(engine, problems, LoopConfig(population=4, k=2, steps=2, max_new_tokens=64)))
    task = get_task("math")
    conversations, _ = engine.calls[1]
    member = steps[1].generated[1][3]
    candidates = [steps[0].generated[1][i].text for i in member.parents]
    assert conversations[1 * 4 + 3] == task.aggregation_prompt(problems[1], candidates)


def test_k1_uses_refinement_wording(fake_engine):
    engine = fake_engine()
    problems = math_problems(2)
    steps = run_all(RSALoop(engine, problems, LoopConfig(population=3, k=1, steps=2, max_new_tokens=64)))
    task = get_task("math")
    conversations, _ = engine.calls[1]
    for pi, problem in enumerate(problems):
        for slot in range(3):
            (parent,) = steps[1].generated[pi][slot].parents
            expected = task.aggregation_prompt(problem, [steps[0].generated[pi][parent].text])
            text = conversations[pi * 3 + slot][-1]["content"]
            assert conversations[pi * 3 + slot] == expected
            assert "one candidate solution" in text and "Candidate solution 1" not in text


def test_refine_baseline_keeps_chains(fake_engine):
    engine = fake_engine()
    steps = run_all(
        RSALoop(engine, math_problems(2), LoopConfig(method="refine", population=3, k=4, steps=3, max_new_tokens=64))
    )
    assert all(m.parents == (slot,) for r in steps[1:] for pop in r.generated for slot, m in enumerate(pop))
    assert "one candidate solution" in engine.calls[2][0][0][-1]["content"]


def test_sampling_baselines_use_plain_prompts_and_pool(fake_engine):
    engine = fake_engine()
    problems = math_problems(3)
    history = [
        r.generated
        for r in RSALoop(
            engine, problems, LoopConfig(method="majority", population=4, steps=3, max_new_tokens=64)
        ).run()
    ]
    plain = [get_task("math").plain_prompt(p) for p in problems]
    for conversations, _ in engine.calls:
        assert conversations == [c for c in plain for _ in range(4)]
    pool = evaluated_population("majority", history)
    assert [len(p) for p in pool] == [12, 12, 12]
    assert evaluated_population("sample", history) == history[-1]


def test_single_aggregation_baseline_is_budget_matched(fake_engine):
    engine = fake_engine()
    config = LoopConfig(method="single-agg", population=4, k=3, steps=5, max_new_tokens=64)
    steps = run_all(RSALoop(engine, math_problems(2), config))
    assert [len(c) for c, _ in engine.calls] == [2 * 16, 2 * 4]  # a pool of N*(T-1), then N aggregations
    assert config.budget_per_problem == 4 * 5 == LoopConfig(population=4, steps=5).budget_per_problem
    assert all(max(m.parents) < 16 for pop in steps[1].generated for m in pop)


def test_config_errors():
    with pytest.raises(ValueError, match="K=5 is larger than the population N=4"):
        LoopConfig(population=4, k=5)
    with pytest.raises(ValueError, match="steps T must be >= 1"):
        LoopConfig(steps=0)
    with pytest.raises(ValueError, match="unknown method 'best-of-n'"):
        LoopConfig(method="best-of-n")
    with pytest.raises(ValueError, match="single-agg needs steps T >= 2"):
        LoopConfig(method="single-agg", steps=1)
    LoopConfig(method="sample", population=2, k=4)  # K is unused by plain sampling


def test_final_answers_random_and_majority():
    problems = math_problems(1)
    population = [[Member("a", 1, "2", 0.0), Member("b", 1, "0", 1.0), Member("c", 1, "2", 0.0)]]
    majority = final_answers(problems, population, "majority", seed=1)
    assert majority[0] | {"answer": "2", "score": 0.0, "member": 0} == majority[0]
    picks = {final_answers(problems, population, "random", seed=s)[0]["member"] for s in range(30)}
    assert picks == {0, 1, 2}
    assert final_answers(problems, population, "random", 5) == final_answers(problems, population, "random", 5)


# ----- context budget and truncation --------------------------------------------------------------------------
def long_candidate(seed, conversation):
    # step-1 answers are long: 300 words that start and end with recognisable markers
    words = " ".join(f"w{seed % 1000}_{i}" for i in range(300))
    return f"BEGIN{seed} {words} END{seed} <answer>{seed % 3}</answer>"


def test_long_candidates_are_truncated_with_marker_not_dropped(fake_engine):
    engine = fake_engine(max_model_len=700, text_fn=long_candidate)
    problems = math_problems(2)
    config = LoopConfig(population=3, k=3, steps=2, max_new_tokens=100)
    steps = run_all(RSALoop(engine, problems, config))
    budget = 700 - 100 - 64  # max_model_len - max_new_tokens - chat-template reserve
    conversations, _ = engine.calls[1]
    for pi in range(2):
        for slot in range(3):
            text = conversations[pi * 3 + slot][-1]["content"]
            assert engine.count_tokens(text) <= budget
            assert text.count(TRUNCATION_MARKER.strip()) == 3  # every candidate shortened, none dropped
            assert problems[pi].question in text  # the question is intact
            member = steps[1].generated[pi][slot]
            assert member.truncated_parents == 3
            for parent in member.parents:  # beginning and end of every candidate survive
                seed = steps[0].generated[pi][parent].text.split()[0]
                assert seed in text and f"END{seed[5:]}" in text
    assert steps[1].truncated_candidates == 6 * 3


def test_question_too_long_fails_before_generating(fake_engine):
    engine = fake_engine(max_model_len=300)
    problems = [Problem(id="huge", task="math", question="word " * 400, answer="1")]
    with pytest.raises(ContextBudgetError, match="problem 'huge'.*question is never truncated"):
        run_all(RSALoop(engine, problems, LoopConfig(population=2, k=2, steps=2, max_new_tokens=50)))
    assert engine.calls == []
    with pytest.raises(ContextBudgetError, match="leaves no room for a prompt"):
        RSALoop(engine, math_problems(1), LoopConfig(population=2, k=2, steps=2, max_new_tokens=300))


# ----- the loop for real: tiny model, hf engine ---------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir):
    from rsa.engines import make_engine

    engine = make_engine("hf", tiny_model_dir, dtype="float32")
    yield engine
    engine.close()


class CountingEngine:
    """Wraps a real engine and records its generate calls (the real engine does all the work)."""

    def __init__(self, engine):
        self.engine = engine
        self.calls = []

    def generate(self, conversations, params, seeds=None):
        self.calls.append(len(conversations))
        return self.engine.generate(conversations, params, seeds)

    def count_tokens(self, text):
        return self.engine.count_tokens(text)

    @property
    def max_model_len(self):
        return self.engine.max_model_len


def test_rsa_on_tiny_model_hf(hf_engine):
    from rsa.data import load_problems

    problems = load_problems("rg:basic_arithmetic", limit=3)
    engine = CountingEngine(hf_engine)
    config = LoopConfig(population=4, k=2, steps=3, max_new_tokens=12, seed=7)
    steps = run_all(RSALoop(engine, problems, config))
    assert engine.calls == [12, 12, 12]
    for result in steps:
        assert [len(p) for p in result.generated] == [4, 4, 4]
        assert result.tokens_generated == sum(m.num_tokens for p in result.generated for m in p) > 0
        for population in result.generated:
            for member in population:
                assert 0 < member.num_tokens <= 12
                assert 0.0 <= member.score <= 1.0
                assert len(member.parents) == (0 if result.step == 1 else 2)
    # seeded sampling: the same run again gives the same texts
    again = run_all(RSALoop(hf_engine, problems, config))
    assert [[m.text for m in p] for p in again[-1].generated] == [[m.text for m in p] for p in steps[-1].generated]


@pytest.mark.vllm
@pytest.mark.slow
def test_rsa_on_tiny_model_vllm(vllm_engine, tmp_path):
    from rsa.data import load_problems
    from rsa.evaluate import evaluate
    from rsa.report import write_report
    from rsa.runs import RunDirectory, build_manifest

    problems = load_problems("rg:basic_arithmetic", limit=10)
    engine = CountingEngine(vllm_engine)
    config = LoopConfig(population=4, k=2, steps=3, max_new_tokens=32, seed=3)
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.create(build_manifest({}, model="tiny", engine="vllm", revision=None, problems=problems, seed=3), problems)
    summaries = evaluate(engine, problems, config, run_dir, progress=False)
    assert engine.calls == [40, 40, 40]  # one batched call per step
    assert [s["step"] for s in summaries] == [1, 2, 3]
    paths = write_report([run_dir.path], tmp_path / "report")
    assert paths["rsa_steps"].read_bytes()[:4] == b"\x89PNG"
    # per-request seeds: the same step-1 batch again gives the same completions
    again = RSALoop(vllm_engine, problems, config).run_step(1, None)
    stored = run_dir.load_population(1, problems, config)
    assert [[m.text for m in p] for p in again.generated] == [[m.text for m in p] for p in stored]


@pytest.mark.parametrize("thinking", ["strip", "keep"])
def test_thinking_mode_decides_whether_reasoning_enters_candidates(fake_engine, thinking):
    from rsa.engines.base import Generation

    class ThinkingEngine(fake_engine().__class__):
        def generate(self, conversations, params, seeds=None):
            self.calls.append((list(conversations), list(seeds)))
            return [Generation(text=f"ANSWER{s}", num_tokens=5, reasoning=f"THOUGHT{s}") for s in seeds]

    engine = ThinkingEngine()
    config = LoopConfig(population=2, k=2, steps=2, max_new_tokens=64, thinking=thinking)
    steps = run_all(RSALoop(engine, math_problems(1), config))
    prompt = engine.calls[1][0][0][-1]["content"]
    first = steps[0].generated[0][0]
    assert f"ANSWER{first.seed}" in prompt
    assert (f"<think>\nTHOUGHT{first.seed}\n</think>" in prompt) == (thinking == "keep")
    assert first.reasoning == f"THOUGHT{first.seed}"
