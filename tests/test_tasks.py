"""Task scorers: correct, equivalent-but-different, wrong, missing and malformed answers; prompts."""

from __future__ import annotations

import json
import threading

import pytest

from rsa.data import generate_reasoning_gym
from rsa.tasks import Problem, get_task, task_names
from rsa.tasks.math import last_boxed
from rsa.voting import cluster_answers, majority_answer

MATH = get_task("math")
RG = get_task("rg")
MCQ = get_task("mcq")


def math_problem(answer: str) -> Problem:
    return Problem(id="m", task="math", question="Compute it.", answer=answer)


# ----- math -----------------------------------------------------------------------------------------
def test_last_boxed_handles_nesting_and_takes_the_last():
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{a}{b+\sqrt{2}}} end") == r"\frac{a}{b+\sqrt{2}}"
    assert last_boxed(r"\boxed {42}") == "42"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed("no answer here") is None
    assert last_boxed(r"\boxed{12") is None  # never closes
    assert last_boxed(r"\boxed{3} and a broken \boxed{4") == "3"  # falls back to the last balanced box


@pytest.mark.parametrize(
    ("gold", "completion"),
    [
        ("42", r"so \boxed{42}"),
        ("0.5", r"\boxed{\frac{1}{2}}"),
        (r"\frac{1}{2}", r"\boxed{0.5}"),
        (r"\frac{1}{2}", r"\boxed{\dfrac{2}{4}}"),
        ("3/4", r"\boxed{0.75}"),
        (r"\frac{\sqrt{2}}{2}", r"\boxed{\frac{1}{\sqrt{2}}}"),
        (r"x^2+2x+1", r"\boxed{(x+1)^2}"),
        ("70", r"\boxed{70.0}"),
        (r"\pi", r"\boxed{\pi}"),
        ("5", r"\boxed{\text{5}}"),
    ],
)
def test_math_correct_and_equivalent_answers_score_one(gold, completion):
    assert MATH.score(completion, math_problem(gold)) == 1.0


@pytest.mark.parametrize(
    ("gold", "completion"),
    [
        ("42", r"\boxed{43}"),
        (r"\frac{1}{2}", r"\boxed{\frac{1}{3}}"),
        ("x^2", r"\boxed{x^3}"),
        ("42", "I think it is 42"),  # missing box
        ("42", ""),  # empty
        ("42", r"\boxed{}"),  # empty box
        ("42", r"\boxed{42"),  # malformed: unbalanced
        ("42", r"\boxed{\frac{}{)(}"),  # malformed LaTeX
    ],
)
def test_math_wrong_missing_and_malformed_answers_score_zero(gold, completion):
    assert MATH.score(completion, math_problem(gold)) == 0.0


def test_math_gold_may_itself_be_boxed():
    assert MATH.score(r"\boxed{7}", math_problem(r"The answer is \boxed{7}")) == 1.0


def test_math_scoring_is_safe_in_worker_threads():
    results: list[float] = []
    errors: list[BaseException] = []

    def work():
        try:
            results.append(MATH.score(r"\boxed{\frac{\sqrt{8}}{4}}", math_problem(r"\frac{\sqrt{2}}{2}")))
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [1.0] * 4


def test_math_majority_clusters_equivalent_forms():
    p = math_problem("1")
    answers = ["0.5", None, r"\frac{1}{2}", "3", "1/2", " 3 ", "\\frac{1}{", "\\frac{1}{"]
    clusters = cluster_answers(MATH, answers, p)
    assert [c.members for c in clusters] == [[0, 2, 4], [3, 5], [6, 7]]
    assert majority_answer(MATH, answers, p).answer == "0.5"
    assert majority_answer(MATH, [None, None], p) is None
    assert MATH.equivalence_key(None, p) is None


# ----- multiple choice ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("completion", "letter"),
    [
        (r"\boxed{B}", "B"),
        (r"\boxed{\text{B}}", "B"),
        (r"\boxed{(B)}", "B"),
        (r"\boxed{B. Paris}", "B"),
        (r"\boxed{J}", "J"),
        ("The answer is (B).", "B"),
        ("Answer: B", "B"),
        ("nothing", None),
        (r"\boxed{K}", None),  # not an option
        (r"\boxed{Banana}", None),
    ],
)
def test_mcq_extraction(completion, letter):
    assert MCQ.extract(completion) == letter


def test_mcq_scores():
    p = Problem(id="q", task="mcq", question="?", answer="B")
    assert MCQ.score(r"\boxed{\text{B}}", p) == 1.0
    assert MCQ.score(r"\boxed{C}", p) == 0.0
    assert MCQ.score("no letter", p) == 0.0
    with pytest.raises(ValueError, match="answer"):
        MCQ.validate(Problem(id="q", task="mcq", question="?", answer="banana"), "row 3")


# ----- Reasoning Gym --------------------------------------------------------------------------------
# Left out of the sample: tasks whose `answer` field is one of many valid solutions or absent, so the stored
# answer is not guaranteed to score 1.0 (their scorers check validity instead): boxnet, graph_color,
# propositional_logic, rubiks_cube, rush_hour, composite.
RG_SAMPLE = [
    "basic_arithmetic", "chain_sum", "leg_counting", "number_sequence", "figlet_font", "arc_1d", "arc_agi",
    "needle_haystack", "futoshiki", "kakurasu", "maze", "knight_swap", "tsumego", "tower_of_hanoi",
    "mini_sudoku", "n_queens", "countdown", "word_sorting", "spell_backward", "gcd", "lcm", "prime_factorization",
    "base_conversion", "letter_counting", "color_cube_rotation", "rectangle_count", "modulo_grid", "sudoku",
]  # fmt: skip


@pytest.mark.parametrize("name", RG_SAMPLE)
def test_reasoning_gym_gold_answers_score_one_through_json(name):
    problems = generate_reasoning_gym([name], 6, seed=11)
    for problem in problems[:2]:
        # the entry travels as JSON text, as in verl parquet files
        stored = Problem(problem.id, "rg", problem.question, problem.answer, {**problem.meta})
        stored.meta["entry"] = json.dumps(problem.meta["entry"])
        assert RG.score(f"Thinking...\n<answer>{problem.answer}</answer>", stored) == 1.0, name
        # and the scorer discriminates: a well-formed answer to another problem of the same task scores below 1
        wrong = next(other.answer for other in problems if other.answer != problem.answer)
        assert RG.score(f"<answer>{wrong}</answer>", stored) < 1.0, (name, wrong)


def test_reasoning_gym_wrong_missing_partial_and_malformed():
    problem = generate_reasoning_gym(["basic_arithmetic"], 1, seed=5)[0]
    assert RG.score("no tags at all", problem) == 0.0
    assert RG.score("<answer>definitely not a number</answer>", problem) == 0.0
    assert RG.score(f"<answer>x</answer> <answer>{problem.answer}</answer>", problem) == 1.0  # last tag wins
    # partial credit is kept: the default scorer gives len(gold)/len(answer) when gold is contained
    partial = generate_reasoning_gym(["spell_backward"], 1, seed=5)[0]
    score = RG.score(f"<answer>{partial.answer} extra words</answer>", partial)
    assert 0.0 < score < 1.0
    broken = Problem("b", "rg", "?", "1", {"dataset_name": "basic_arithmetic", "entry": "{not json"})
    with pytest.raises(ValueError, match="entry"):
        RG.validate(broken, "data.jsonl: line 4")
    with pytest.raises(ValueError, match="dataset_name"):
        RG.validate(Problem("b", "rg", "?", "1", {"dataset_name": "no_such_task", "entry": {}}), "line 2")


# ----- prompts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["math", "rg", "mcq"])
def test_aggregation_prompt_holds_question_and_numbered_candidates(name):
    task = get_task(name)
    problem = Problem("p", name, "What is 6 times 7?", "42")
    (message,) = task.aggregation_prompt(problem, ["cand one", "cand two", "cand three"])
    text = message["content"]
    assert message["role"] == "user"
    assert "What is 6 times 7?" in text
    assert text.index("cand one") < text.index("cand two") < text.index("cand three")
    assert "Candidate solution 3" in text and "Candidate solution 4" not in text
    assert "some may be" in text.lower() or "may be incorrect" in text.lower()
    assert "different strategy" in text
    assert task.answer_format in text


def test_refinement_prompt_for_k1_differs_from_aggregation():
    problem = Problem("p", "math", "Q?", "1")
    (refine,) = MATH.aggregation_prompt(problem, ["only candidate"])
    (aggregate,) = MATH.aggregation_prompt(problem, ["a", "b"])
    assert "one candidate solution" in refine["content"]
    assert "only candidate" in refine["content"]
    assert refine["content"] != aggregate["content"]
    with pytest.raises(ValueError):
        MATH.aggregation_prompt(problem, [])


def test_registry_and_unknown_task():
    assert {"math", "rg", "mcq"} <= set(task_names())
    assert get_task("reasoning_gym") is RG
    with pytest.raises(ValueError, match="known tasks"):
        get_task("chess")


# Answers for the math-verify parity tests: plain numbers, constants, expressions and malformed text ...
MATH_PARITY_ANSWERS = [
    "12", "-12", "12.0", "12.000001", r"\frac{24}{2}", "36/3", r"\frac{1}{3}", "0.333333", "0.3333",
    "0.5", r"\frac{1}{2}", r"\sqrt{144}", r"\sqrt{2}", "1.414214", r"2\pi", r"\frac{\sqrt{3}}{2}",
    "x^2 + 1", "(x+1)^2 - 2x", r"\text{12}", "12 + 0", r"\frac{1}{", "??",
]  # fmt: skip
# ... and the decorations models write around answers (units, percent signs, degree marks, text wrappers, thin
# spaces, dollar signs, thousands separators, other scripts' digits), next to the bare values they decorate. The
# first line is the quick sample; the whole list runs in the slow test.
DECORATED_ANSWERS = [
    r"12\%", r"12^\circ", r"\text{12 cm}", r"\$12", "12.", "١٢", r"50\%", "50", r"\sin^2 x + \cos^2 x", "1",
    "12%", r"12^{\circ}", "12°", r"12\text{ cm}", r"12\,\text{cm}", "$12$", r"\mathrm{12}", r"12\mathrm{m}",
    "12 meters", r"\textbf{12}", r"12\text{%}", ".5", r"12\,000", "12,000", "12000", "1{,}000", "1,000", "1000",
    "0.12", r"\frac{12}{100}", r"\dfrac{1}{2}", r"\tfrac12", "1/2", "+12", "012", r"45^\circ", r"\frac{\pi}{4}",
    r"\frac{x^2-1}{x-1} - x", r"\text{five}", "five",
]  # fmt: skip
DECORATED_SAMPLE = DECORATED_ANSWERS[:10]


def _math_verify_parses(answers):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    return {answer: parse(f"${answer}$", extraction_config=config) for answer in answers}


def assert_math_verify_parity(answers) -> None:
    """Every shortcut in `answers_equivalent` gives math-verify's own verdict on every ordered pair of `answers`.

    Where math-verify cannot parse one side, the documented fallback applies instead: normalised text equality.
    """
    from math_verify import verify

    from rsa.tasks.math import _normalise, answers_equivalent

    parses = _math_verify_parses(answers)
    disagreements = []
    for gold in answers:
        for pred in answers:
            g, p = parses[gold], parses[pred]
            if g and p:
                expected = bool(verify(g, p))
            else:
                expected = _normalise(gold) == _normalise(pred) != ""
            if answers_equivalent(gold, pred) != expected:
                disagreements.append((gold, pred, expected))
    assert not disagreements


def test_math_fast_paths_agree_with_math_verify_pairwise():
    assert_math_verify_parity(MATH_PARITY_ANSWERS + DECORATED_SAMPLE)


@pytest.mark.slow
def test_math_fast_paths_agree_with_math_verify_on_decorated_answers():
    assert_math_verify_parity(MATH_PARITY_ANSWERS + DECORATED_ANSWERS)


def test_math_direct_number_parse_is_math_verifys():
    """The parses built without math-verify (plain numbers) are exactly math-verify's: value, type and string."""
    from rsa.tasks.math import _parse_simple_number

    spellings = [
        *MATH_PARITY_ANSWERS, *DECORATED_ANSWERS, "-0", "00.5", "1.50", "-.5", "+.5", "12/ 4", "3/-4", "-3/4", "+3/4", "03/4",
        r"\frac{-1}{2}", r"-\frac{1}{-2}", r"+\frac{1}{2}", r"\frac{4}{-2}", r"\frac { 1 } { 2 }", "1/0", "1e3",
    ]  # fmt: skip
    parses = _math_verify_parses(spellings)
    built = {text: _parse_simple_number(text) for text in spellings}
    assert sum(value is not None for value in built.values()) >= 20  # the shortcut is exercised
    for text, value in built.items():
        if value is not None:
            expected = parses[text]
            assert len(expected) == 2 and type(value[0]) is type(expected[0]), (text, value, expected)
            assert value == tuple(expected), (text, value, expected)


def test_reasoning_gym_scorer_parse_errors_on_model_answers_score_zero():
    """prime_factorization's own scorer calls int() on the answer; garbage must score 0, not crash a reward."""

    problem = generate_reasoning_gym(["prime_factorization"], 1, seed=0)[0]
    task = get_task("rg")
    assert task.score(f"<answer>{problem.answer}</answer>", problem) == 1.0
    assert task.score("<answer>zzz wrong 0</answer>", problem) == 0.0
