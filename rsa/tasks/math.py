"""Math task: the final answer is the last `\\boxed{...}`; equivalence is decided by math-verify.

Thread safety: math-verify bounds its work with `signal.alarm`, which only works in the main thread.
Off the main thread we call it with timeouts disabled and bound the work ourselves by refusing to
parse answers longer than `MAX_PARSE_CHARS` (those are compared as normalised strings).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Hashable
from functools import lru_cache
from typing import Any

from rsa.tasks.base import Problem, Task

MAX_PARSE_CHARS = 400
_TIMEOUT_S = 5
# We bound off-main-thread work ourselves (MAX_PARSE_CHARS); silence its "timeout disabled" notice.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: math-verify does not read other scripts' digits


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, nested braces balanced.

    Returns None when there is no boxed answer or its braces never close.
    """
    if not text:
        return None
    matches = list(_BOXED.finditer(text))
    for match in reversed(matches):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
        # unbalanced: try an earlier box
    return None


def _normalise(answer: str) -> str:
    s = answer.strip().strip("$").strip()
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", "").replace("\\left", "").replace("\\right", "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    return " ".join(s.split())


# Only the spellings whose math-verify parse is known exactly (tests/test_tasks.py checks each against it):
# no spaces, no leading "." (math-verify adds a 0), digits on both sides of the point ("12." is the integer 12).
_DECIMAL = re.compile(r"[+-]?[0-9]+\.[0-9]+")
_SIMPLE_FRAC = re.compile(r"([+-]?)\\[dt]?frac\{([+-]?[0-9]+)\}\{([+-]?[0-9]+)\}")
_SIMPLE_SLASH = re.compile(r"([+-]?[0-9]+)/([+-]?[0-9]+)")


def _parse_simple_number(text: str) -> tuple | None:
    """math-verify's parse of a plain integer, decimal or integer fraction, built directly; else None.

    The same (value, extracted string) pair math-verify returns: integers and fractions become sympy
    Integer/Rational, decimals a 15-digit Float; "0.5", which math-verify rewrites as 1/2, and every
    spelling whose parse is not known exactly are left to math-verify. The LaTeX parser costs ~10 ms an
    answer; this costs microseconds.
    """
    import sympy

    if len(text) > 40:
        return None
    if _INTEGER.fullmatch(text):
        return (sympy.Integer(int(text)), text)
    if _DECIMAL.fullmatch(text) and text != "0.5":
        return (sympy.Float(text, 15), text)
    m = _SIMPLE_FRAC.fullmatch(text)
    if m:
        sign, num, den = m.groups()
        if int(den) == 0:
            return None
        value = sympy.Rational(int(num), int(den)) * (-1 if sign == "-" else 1)
        return (value, text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac"))
    m = _SIMPLE_SLASH.fullmatch(text)
    if m:
        num, den = m.groups()
        if int(den) == 0:
            return None
        # math-verify rewrites a canonical "a/b" (no "+", no leading zeros) as \frac{a}{b}
        canonical = text == f"{int(num)}/{int(den)}"
        return (sympy.Rational(int(num), int(den)), f"\\frac{{{num}}}{{{den}}}" if canonical else text)
    return None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=1 << 16)
def parse_answer(answer: str) -> tuple:
    """math-verify's parse of one answer (cached: each distinct string is parsed once per process).

    Returns an empty tuple when the answer cannot be parsed or is too long to parse safely.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    if not answer or len(answer) > MAX_PARSE_CHARS:
        return ()
    simple = _parse_simple_number(answer.strip())
    if simple is not None:
        return simple
    timeout = _TIMEOUT_S if _in_main_thread() else None
    try:
        parsed = parse(
            f"${answer}$",
            extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
            parsing_timeout=timeout,
        )
    except Exception:  # math-verify raises on pathological input; such an answer has no parse
        return ()
    return tuple(parsed)


@lru_cache(maxsize=1 << 16)
def answers_equivalent(gold: str, predicted: str) -> bool:
    """True when `predicted` is mathematically equivalent to `gold` (gold first, as math-verify wants).

    Two plain integers are compared directly; everything else goes through math-verify on cached
    parses; answers that cannot be parsed fall back to comparing normalised strings.
    """
    if gold is None or predicted is None:
        return False
    g_text, p_text = gold.strip(), predicted.strip()
    if _INTEGER.fullmatch(g_text) and _INTEGER.fullmatch(p_text):
        return int(g_text) == int(p_text)
    g, p = parse_answer(gold), parse_answer(predicted)
    if not g or not p:
        return _normalise(gold) == _normalise(predicted) and _normalise(gold) != ""
    fast = _fast_verdict(gold, predicted)
    if fast is not None:
        return fast
    return _verify(g, p)


@lru_cache(maxsize=1 << 16)
def _classify(answer: str) -> tuple[str, object, complex | None]:
    """Classify an answer's parse for the fast equivalence paths: (kind, exact value, numeric value).

    kind is "num" (a plain sympy number), "const" (a closed-form constant such as sqrt(2) or 2*pi),
    "symbolic" (an expression with free symbols that is not a bare symbol; its numeric value is the
    expression's at fixed generic points, None where it is undefined there) or "other" (symbols from
    `\\text{}`, percentages, sets, relations, matrices, unparseable text: left to math-verify).
    """
    from sympy import Basic, Number, Symbol, UnevaluatedExpr

    parsed = parse_answer(answer)
    if len(parsed) != 2 or not isinstance(parsed[1], str) or not isinstance(parsed[0], Basic):
        return ("other", None, None)
    expr = parsed[0]
    if expr.has(UnevaluatedExpr):
        # a percentage ("12\\%" is 12 * UnevaluatedExpr(1/100)): math-verify also accepts its bare number
        return ("other", None, None)
    if isinstance(expr, Number):
        return ("num", expr, None)
    if not (expr.is_Add or expr.is_Mul or expr.is_Pow):
        return ("other", None, None)
    if expr.free_symbols:
        return ("other", None, None) if isinstance(expr, Symbol) else ("symbolic", None, _probe(expr))
    try:
        value = expr.doit()
        if isinstance(value, Number):
            return ("num", value, None)
        approx = complex(value.evalf(30))
    except Exception:  # an expression sympy cannot evaluate is left to math-verify
        return ("other", None, None)
    return ("const", value, approx)


# Generic points (far from the small integers and simple fractions where expressions tend to vanish or blow up).
_PROBE_POINTS = ((0.6180339887, 1.3247179572, 2.7182818285), (1.4142135624, 0.5772156649, 3.3598856662))


def _probe(expr: Any) -> tuple[complex, ...] | None:
    """Values of `expr` with its free symbols set to each of `_PROBE_POINTS`; None if one is not finite."""
    import cmath

    symbols = sorted(expr.free_symbols, key=str)
    values = []
    try:
        for point in _PROBE_POINTS:
            substitution = {symbol: point[i % len(point)] + i // len(point) for i, symbol in enumerate(symbols)}
            value = complex(expr.subs(substitution).evalf(30))
            if not cmath.isfinite(value):
                return None
            values.append(value)
    except Exception:  # an expression sympy cannot evaluate there: no probe, math-verify decides
        return None
    return tuple(values)


def _fast_verdict(gold: str, predicted: str) -> bool | None:
    """math-verify's verdict for `gold` vs `predicted` when it follows from their values; else None.

    Mirrors math-verify: two plain numbers are equal exactly (rationals) or after rounding to 6
    decimals or with a zero difference (a float involved); two closed-form constants that differ
    numerically (beyond float rounding) are not; a constant is not equal to an expression in free symbols
    that differs from it clearly at a generic point (so the difference is not identically zero, which
    math-verify's simplification would need). Equal extracted strings are always equal. Everything else
    (near-equal values, percentages, symbols, sets...) returns None.
    """
    from sympy import Float, Rational

    (g_kind, g, g_approx), (p_kind, p, p_approx) = _classify(gold), _classify(predicted)
    if "other" in (g_kind, p_kind):
        return None
    if parse_answer(gold)[1].strip() == parse_answer(predicted)[1].strip():
        return True
    kinds = {g_kind, p_kind}
    if "symbolic" in kinds:
        if kinds == {"symbolic"}:
            return None
        # e.g. sin(x)^2 + cos(x)^2 equals 1 for math-verify: only a clear gap at a generic point decides "different"
        if g_kind == "symbolic":
            probe, kind, value, approx = g_approx, p_kind, p, p_approx
        else:
            probe, kind, value, approx = p_approx, g_kind, g, g_approx
        constant = complex(value) if kind == "num" else approx
        if probe is None or constant is None:
            return None
        if all(abs(at_point - constant) > 1e-3 * (1 + abs(constant)) for at_point in probe):
            return False
        return None
    if kinds == {"num"}:
        if isinstance(g, Rational) and isinstance(p, Rational):
            return bool(g == p)
        if isinstance(g, Float) or isinstance(p, Float):
            # math-verify: rounded equality, else its symbolic check, which for numbers is g - p == 0
            return bool(g.round(6) == p.round(6)) or bool(g - p == 0)
        return None
    if kinds <= {"num", "const"}:
        g_value = g_approx if g_approx is not None else complex(g)
        p_value = p_approx if p_approx is not None else complex(p)
        involves_float = isinstance(g, Float) or isinstance(p, Float)
        # with a float, math-verify accepts equality after rounding to 6 decimals: only a gap wider
        # than that rounding can decide "different" here; without one, any numeric gap does
        tolerance = 1e-5 if involves_float else 1e-9 * (1 + abs(g_value))
        if abs(g_value - p_value) > tolerance:
            return False
    return None


def _verify(gold: tuple, predicted: tuple) -> bool:
    from math_verify import verify

    timeout = _TIMEOUT_S if _in_main_thread() else None
    try:
        return bool(verify(list(gold), list(predicted), timeout_seconds=timeout))
    except Exception:  # a comparison that errors or times out is not a match
        return False


class MathTask(Task):
    """Competition math (AIME, HMMT, DeepScaleR): answer in the last `\\boxed{}`, math-verify equivalence."""

    name = "math"
    problem_kind = "math problem"
    answer_format = "in \\boxed{}"

    def extract(self, completion: str) -> str | None:
        """The content of the last `\\boxed{}`, or None."""
        boxed = last_boxed(completion or "")
        return boxed if boxed else None

    def score_extracted(self, extracted: str | None, problem: Problem) -> float:
        """1.0 when the answer is equivalent to the gold answer, else 0.0."""
        if extracted is None or problem.answer is None:
            return 0.0
        gold = last_boxed(problem.answer) or str(problem.answer)
        return 1.0 if answers_equivalent(gold, extracted) else 0.0

    def equivalence_key(self, extracted: str | None, problem: Problem) -> Hashable | None:
        """Whitespace-normalised text: identical answers share a key; `same_answer` merges the rest."""
        if extracted is None:
            return None
        key = " ".join(extracted.split())
        return key if _normalise(key) else None

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two extracted answers are equivalent (used to merge majority-vote clusters)."""
        return answers_equivalent(a, b)
