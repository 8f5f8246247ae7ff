"""Scoring and majority voting of 16-answer populations: ours vs the naive pairwise math-verify method.

Naive reference (as in public RSA evaluation code): for every answer, call math-verify against every
cluster representative, parsing both strings again on each call; score each answer against the gold
answer with a fresh parse too. Ours: `rsa.voting.cluster_answers` (equivalence keys, cached parses)
and `MathTask.score_extracted`. Both run in this process on the same populations (which include decorated
answers: units, percent and dollar signs, degree marks, text wrappers); the clusterings and scores are asserted
identical and the speed ratio is printed.

    python benchmarks/bench_voting.py [--problems 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from rsa.tasks import Problem, get_task
from rsa.tasks.math import _normalise, parse_answer
from rsa.voting import cluster_answers


def naive_parse(text: str):
    return parse(f"${text}$", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()])


def naive_equivalent(gold: str, predicted: str) -> bool:
    """math-verify on fresh parses; unparseable answers compare as normalised strings (same rule as ours)."""
    g, p = naive_parse(gold), naive_parse(predicted)
    if not g or not p:
        return _normalise(gold) == _normalise(predicted) and _normalise(gold) != ""
    return bool(verify(g, p))


def naive_clusters(answers):
    clusters: list[list[int]] = []
    reps: list[str] = []
    for i, answer in enumerate(answers):
        if answer is None or not _normalise(answer):
            continue
        for c, rep in enumerate(reps):
            if naive_equivalent(rep, answer):
                clusters[c].append(i)
                break
        else:
            reps.append(answer)
            clusters.append([i])
    return clusters


def make_population(rng: random.Random, gold: int, size: int = 16) -> list[str | None]:
    """A realistic population for an integer-answer problem (AIME-like): mostly integers, the right value
    more often than any single wrong one, some fractions, decimals, expressions, decorated (units, %, $,
    degrees, text wrappers), malformed and empty."""
    wrong = [gold + rng.choice([-7, -2, -1, 1, 3, 10, 100]) for _ in range(3)]
    out: list[str | None] = []
    for _ in range(size):
        value = gold if rng.random() < 0.5 else rng.choice(wrong)
        r = rng.random()
        if r < 0.55:
            out.append(str(value))
        elif r < 0.63:
            out.append(rng.choice([f"\\frac{{{2 * value}}}{{2}}", f"{3 * value}/3"]))
        elif r < 0.70:
            out.append(rng.choice([f"{value}.0", f"{value}.00"]))
        elif r < 0.80:
            out.append(
                rng.choice(
                    ["\\sqrt{2}", "2\\pi", "\\frac{\\sqrt{3}}{2}", "x^2 + 1", f"{value}\\sqrt{{3}}", "\\frac{1}{3}"]
                )
            )
        elif r < 0.85:
            # decorated: text wrappers, degree marks, percent and dollar signs, units
            out.append(
                rng.choice(
                    [
                        f"\\text{{{value}}}",
                        f"{value}^\\circ",
                        f"{value}\\%",
                        f"\\${value}",
                        f"{value}\\text{{ cm}}",
                        f"{value}\\,\\mathrm{{m}}",
                    ]
                )
            )
        elif r < 0.92:
            out.append(rng.choice(["\\frac{1}{", "}{", "??", "\\sqrt{"]))  # malformed
        else:
            out.append(None)  # no boxed answer at all
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    task = get_task("math")
    data = []
    for i in range(args.problems):
        gold = rng.randint(-50, 999)
        data.append((Problem(f"p{i}", "math", "", str(gold)), make_population(rng, gold)))

    # warm-up both paths once (imports, sympy caches) on a separate population
    warm = make_population(random.Random(99), 5)
    naive_clusters(warm)
    cluster_answers(task, warm, Problem("w", "math", "", "5"))

    t0 = time.perf_counter()
    naive = []
    for problem, answers in data:
        scores = [0.0 if a is None else float(naive_equivalent(problem.answer, a)) for a in answers]
        naive.append((naive_clusters(answers), scores))
    t_naive = time.perf_counter() - t0

    parse_answer.cache_clear()  # ours starts cold too: no parse carried over from the warm-up
    t0 = time.perf_counter()
    ours = []
    for problem, answers in data:
        scores = [task.score_extracted(a, problem) for a in answers]
        ours.append(([c.members for c in cluster_answers(task, answers, problem)], scores))
    t_ours = time.perf_counter() - t0

    mismatches = [i for i, (a, b) in enumerate(zip(naive, ours)) if a != b]
    if mismatches:
        i = mismatches[0]
        print(f"MISMATCH on problem {i}: naive={naive[i]} ours={ours[i]} answers={data[i][1]}", file=sys.stderr)
        return 1
    n = args.problems * 16
    print(f"populations: {args.problems} x 16 answers ({n} answers), identical clusters and scores")
    print(f"naive pairwise math-verify: {t_naive:8.3f} s  ({1e3 * t_naive / args.problems:7.2f} ms/problem)")
    print(f"rsa.voting + cached scorer: {t_ours:8.3f} s  ({1e3 * t_ours / args.problems:7.2f} ms/problem)")
    print(f"speed-up: {t_naive / t_ours:.1f}x (target >= 20x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
