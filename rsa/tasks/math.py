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
from fractions import Fraction
from functools import lru_cache

from rsa.tasks.base import Problem, Task

MAX_PARSE_CHARS = 400
_TIMEOUT_S = 5
# We bound off-main-thread work ourselves (MAX_PARSE_CHARS); silence its "timeout disabled" notice.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_INT_OR_DEC = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_FRAC = re.compile(r"([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{([+-]?\d+)\}")
_SLASH = re.compile(r"([+-]?\d+)\s*/\s*([+-]?\d+)")


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


def exact_number(answer: str) -> Fraction | None:
    """The exact rational value of a plain integer, decimal, a/b or \\frac{a}{b} answer; else None."""
    s = _normalise(answer).replace(" ", "")
    if s.endswith("."):
        s = s[:-1]
    if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+", s):
        s = s.replace(",", "")
    try:
        if _INT_OR_DEC.fullmatch(s):
            return Fraction(s)
        m = _FRAC.fullmatch(s) or _SLASH.fullmatch(s)
        if m:
            groups = m.groups()
            sign = -1 if len(groups) == 3 and groups[0] == "-" else 1
            num, den = int(groups[-2]), int(groups[-1])
            if den != 0:
                return sign * Fraction(num, den)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=65536)
def parse_answer(answer: str) -> tuple:
    """math-verify's parse of one answer (cached: each distinct string is parsed once per process).

    Returns an empty tuple when the answer cannot be parsed or is too long to parse safely.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    if not answer or len(answer) > MAX_PARSE_CHARS:
        return ()
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


def answers_equivalent(gold: str, predicted: str) -> bool:
    """True when `predicted` is mathematically equivalent to `gold` (gold first, as math-verify wants).

    Exact rationals are compared directly; everything else goes through math-verify on cached parses;
    answers that cannot be parsed fall back to comparing normalised strings.
    """
    if gold is None or predicted is None:
        return False
    g_num, p_num = exact_number(gold), exact_number(predicted)
    if g_num is not None and p_num is not None:
        return g_num == p_num
    g, p = parse_answer(gold), parse_answer(predicted)
    if not g or not p:
        return _normalise(gold) == _normalise(predicted) and _normalise(gold) != ""
    return _verify(g, p)


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
        """Exact rationals key by value; other answers by normalised text (see `majority_clusters`)."""
        if extracted is None:
            return None
        value = exact_number(extracted)
        if value is not None:
            return ("num", value)
        norm = _normalise(extracted)
        return ("text", norm) if norm else None

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two extracted answers are equivalent (used to merge majority-vote clusters)."""
        return answers_equivalent(a, b)
