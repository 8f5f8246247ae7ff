"""Test data and output comparison (host side): what a run is given and what it returns, and how outputs are judged.

It owns `TestSuite` (a problem's test cases; the expected outputs never leave the host), `TestOutcome` and
`RunResult` (the verdicts), LiveCodeBench's comparisons `stdout_matches` and `result_matches`, and `_judge`, which
turns one record of the in-sandbox harness into a `TestOutcome`. It runs nothing and imports nothing from `rsa`.
Names with a leading underscore are internal to `rsa.sandbox`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

OUTPUT_HEAD_CHARS = 500
STATUSES = ("ok", "timeout", "runtime_error", "memory_limit", "output_limit", "no_result", "killed", "lost")


@dataclass(frozen=True)
class TestSuite:
    """Test cases of one problem: `inputs[i]` must produce `outputs[i]`.

    `fn_name` None: stdin/stdout programs; input and output are the full stdin and expected stdout text.
    `fn_name` set: functional tests; each input is newline-separated JSON arguments of `fn_name` (a method of
    `class Solution` when the program defines it, else a top-level function), each output the JSON result.
    """

    __test__ = False  # not a pytest test class

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fn_name: str | None = None

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.outputs):
            raise ValueError(
                f"field 'tests.outputs' has {len(self.outputs)} entries but 'tests.inputs' has {len(self.inputs)}"
            )

    @property
    def mode(self) -> str:
        """Either "call" (functional tests) or "stdin" (stdin/stdout programs)."""
        return "call" if self.fn_name else "stdin"

    def __len__(self) -> int:
        return len(self.inputs)

    @classmethod
    def from_dict(cls, tests: Any, where: str = "tests") -> TestSuite:
        """Build from {"inputs": [...], "outputs": [...], "fn_name": name or None}; ValueError names the field.

        For functional tests an input may also be a list of arguments and an output any JSON value; they are
        converted to LiveCodeBench's text form. `tests` may also be that object serialised as a JSON string.
        """
        if isinstance(tests, str):
            try:
                tests = json.loads(tests)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: field 'tests' is a string but not valid JSON ({exc.msg})") from None
        if not isinstance(tests, Mapping):
            raise ValueError(
                f"{where}: field 'tests' must be an object {{inputs, outputs, fn_name}}, got {type(tests).__name__}"
            )
        fn_name = tests.get("fn_name")
        if fn_name is not None and (not isinstance(fn_name, str) or not fn_name.isidentifier()):
            raise ValueError(f"{where}: field 'tests.fn_name' must be a Python identifier or null, got {fn_name!r}")
        fn_name = fn_name or None
        columns = {}
        for key in ("inputs", "outputs"):
            values = tests.get(key)
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"{where}: field 'tests.{key}' must be a non-empty list")
            converted = []
            for i, value in enumerate(values):
                if isinstance(value, str):
                    converted.append(value)
                elif fn_name and key == "inputs" and isinstance(value, (list, tuple)):
                    converted.append("\n".join(json.dumps(arg) for arg in value))
                elif fn_name and key == "outputs":
                    converted.append(json.dumps(value))
                else:
                    raise ValueError(f"{where}: field 'tests.{key}[{i}]' must be a string, got {type(value).__name__}")
            columns[key] = tuple(converted)
        if len(columns["inputs"]) != len(columns["outputs"]):
            raise ValueError(
                f"{where}: field 'tests.outputs' has {len(columns['outputs'])} entries "
                f"but 'tests.inputs' has {len(columns['inputs'])}"
            )
        return cls(columns["inputs"], columns["outputs"], fn_name)


@dataclass(frozen=True)
class TestOutcome:
    """Verdict on one test case. `status` is one of STATUSES ("lost": the sandbox ended before reporting it)."""

    __test__ = False

    index: int
    status: str
    passed: bool
    time_s: float = 0.0
    exit_code: int | None = None
    signal: int | None = None
    stderr_tail: str = ""
    output_head: str = ""  # start of what the program printed (functional tests: of its JSON result)


@dataclass
class RunResult:
    """Everything one sandboxed run produced: the isolation mode that ran and one outcome per test."""

    mode: str
    outcomes: list[TestOutcome]
    total: int
    wall_s: float = 0.0
    error: str | None = None  # why the run ended early, when it did
    detail: str = ""  # isolation details, e.g. the uid
    uid: int | None = None  # host uid the program ran as

    @property
    def passed(self) -> int:
        """Number of tests passed."""
        return sum(o.passed for o in self.outcomes)

    @property
    def all_passed(self) -> bool:
        """True when every test passed (LiveCodeBench's pass criterion)."""
        return self.total > 0 and self.passed == self.total

    @property
    def fraction(self) -> float:
        """Fraction of tests passed, in [0, 1]."""
        return self.passed / self.total if self.total else 0.0

    def statuses(self) -> list[str]:
        """Status of each test in order ("lost" where none was reported)."""
        by_index = {o.index: o.status for o in self.outcomes}
        return [by_index.get(i, "lost") for i in range(self.total)]


# ----- output comparison (parent side) ------------------------------------------------------------------------
def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _as_decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except (InvalidOperation, ValueError):
        return None


def stdout_matches(actual: str, expected: str) -> bool:
    """LiveCodeBench's stdout check: equal after stripping the text and every line; a differing line still
    matches when all its whitespace-separated tokens are numbers with equal values (e.g. "1.0" == "1")."""
    got, want = _stripped_lines(actual), _stripped_lines(expected)
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        if a == b:
            continue
        da, db = _as_decimals(a), _as_decimals(b)
        if da is None or db is None or len(da) != len(db) or da != db:
            return False
    return True


def result_matches(actual_json: str, expected: str) -> bool:
    """LiveCodeBench's functional check: the returned value (as JSON; tuples become lists) equals the
    expected JSON value exactly; an expected output that is not JSON is compared as a stripped string."""
    try:
        actual = json.loads(actual_json)
    except (json.JSONDecodeError, TypeError):
        return False
    try:
        want = json.loads(expected)
    except json.JSONDecodeError:
        return isinstance(actual, str) and actual.strip() == expected.strip()
    return actual == want


def _judge(header: Mapping[str, Any], out: bytes, err: bytes, tests: TestSuite) -> TestOutcome | None:
    """The outcome of one harness record, comparing its output with the expected one; None if malformed."""
    index, status = header.get("i"), header.get("status")
    if not isinstance(index, int) or not 0 <= index < len(tests) or status not in STATUSES:
        return None
    text = out.decode("utf-8", "replace")
    passed = False
    if status == "ok":
        expected = tests.outputs[index]
        passed = result_matches(text, expected) if tests.fn_name else stdout_matches(text, expected)
    return TestOutcome(
        index=index,
        status=status,
        passed=passed,
        time_s=float(header.get("time_s") or 0.0),
        exit_code=header.get("exit"),
        signal=header.get("signal"),
        stderr_tail=err.decode("utf-8", "replace"),
        output_head=text[:OUTPUT_HEAD_CHARS],
    )
