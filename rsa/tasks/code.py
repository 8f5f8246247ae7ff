"""Code generation (LiveCodeBench style): the answer is the last fenced python block, graded by running tests.

Two problem formats, as in LiveCodeBench:

* stdin/stdout: the program reads the test input from stdin and must print the expected output;
* functional: the program defines `fn_name` (usually a method of a LeetCode-style `class Solution`, given as
  starter code); each test input is newline-separated JSON arguments and the output the JSON return value.

`Problem.meta["tests"]` = {"inputs": [...], "outputs": [...], "fn_name": name or None}; optional
`meta["starter_code"]`. `score` is 1.0 when every test passes (LiveCodeBench's pass criterion) and
`score_fraction` the fraction of tests passed (a denser reward). Programs run in `rsa.sandbox` (bubblewrap
when available); outputs are compared outside the sandbox.

`load_livecodebench` reads LiveCodeBench's public release format (`question_content`, `starter_code`,
`public_test_cases`, `private_test_cases`, `metadata`, ...) from a local jsonl/json/parquet file or directory,
or from the Hugging Face hub. Compressed private tests (base64 of zlib of a pickled JSON string) are decoded
with an unpickler that refuses every object except plain strings and bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import os
import pickle
import pickletools
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

from rsa.jsonl import read_jsonl
from rsa.sandbox import RunResult, Sandbox, TestSuite, default_sandbox
from rsa.tasks.base import Problem, Task

logger = logging.getLogger(__name__)

_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}

#: the plain-prompt preamble (our wording of LiveCodeBench's instruction)
PREAMBLE = (
    "You are an expert Python programmer. You will be given a programming problem and must write a correct, "
    "efficient Python 3 program that matches the specification and passes all tests."
)
STDIN_INSTRUCTION = (
    "Read the inputs from standard input, solve the problem and write the answer to standard output (do not "
    "directly test on the sample inputs). Enclose your code within delimiters as follows; when the program runs "
    "it must read the inputs, run the algorithm and write the output to STDOUT.\n```python\n# YOUR CODE HERE\n```"
)
STARTER_INSTRUCTION = (
    "You will use the following starter code to write the solution to the problem and enclose your code within "
    "delimiters.\n```python\n{starter}\n```"
)
FUNCTION_INSTRUCTION = (
    "Write the solution as a Python function `{fn_name}` (or as the method `{fn_name}` of `class Solution`) "
    "and enclose your code within delimiters.\n```python\n# YOUR CODE HERE\n```"
)
ANSWER_LINE = "### Answer: (use the provided format with backticks)"

# Decompressed private tests above this size are refused (a guard against zip bombs).
MAX_PRIVATE_TESTS_BYTES = 1 << 30
_CACHE_SIZE = 512


# ----- prompts -------------------------------------------------------------------------------------------------
def format_instruction(starter_code: str | None = None, fn_name: str | None = None) -> str:
    """The code-format instruction of a problem: starter code, a function name, or stdin/stdout."""
    if starter_code and starter_code.strip():
        return STARTER_INSTRUCTION.format(starter=starter_code.strip("\n"))
    if fn_name:
        return FUNCTION_INSTRUCTION.format(fn_name=fn_name)
    return STDIN_INSTRUCTION


def build_question(question_content: str, starter_code: str | None = None, fn_name: str | None = None) -> str:
    """The full user turn of the plain prompt: preamble, the problem statement, the format and answer lines."""
    return (
        f"{PREAMBLE}\n\n### Question:\n{question_content.strip()}\n\n"
        f"### Format: {format_instruction(starter_code, fn_name)}\n\n{ANSWER_LINE}\n"
    )


def extract_code(completion: str) -> str | None:
    """The body of the last fenced code block tagged python (or untagged) in `completion`, or None."""
    if not completion:
        return None
    blocks = [m.group(2) for m in _FENCE.finditer(completion) if m.group(1).lower() in _PYTHON_TAGS]
    if not blocks:
        return None
    code = blocks[-1].strip("\n")
    return code if code.strip() else None


# ----- the task ------------------------------------------------------------------------------------------------
class CodeTask(Task):
    """LiveCodeBench-style code generation: last python block, all tests must pass (score) or a fraction of them."""

    name = "code"
    problem_kind = "programming problem"
    answer_format = "as a complete Python program in a single ```python fenced code block"

    def __init__(self, sandbox: Sandbox | None = None) -> None:
        self._sandbox = sandbox
        self._cache: OrderedDict[str, RunResult] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox programs run in (the process-wide default unless one was given)."""
        if self._sandbox is None:
            self._sandbox = default_sandbox()
        return self._sandbox

    # ----- prompts -----------------------------------------------------------------------------------------------
    def code_instruction(self, problem: Problem) -> str:
        """The problem's original code-format instruction (repeated at the end of aggregation prompts)."""
        try:
            fn_name = TestSuite.from_dict(problem.meta.get("tests")).fn_name
        except ValueError:
            fn_name = None
        return format_instruction(problem.meta.get("starter_code"), fn_name)

    def _aggregation_text(self, problem: Problem, candidates: Sequence[str]) -> str:
        blocks = "\n\n".join(
            f"---- Candidate solution {i} ----\n{text.strip()}" for i, text in enumerate(candidates, 1)
        )
        return (
            f"You are given a {self.problem_kind} and {len(candidates)} candidate solutions. "
            "Some candidates may be incorrect, inefficient or contain bugs. Aggregate the useful ideas into a "
            "single, high-quality solution. Reason carefully: if the candidates disagree, work out which approach "
            "is correct, and fix any bugs or edge cases they miss.\n\n"
            f"Problem:\n{problem.question.strip()}\n\n"
            f"{blocks}\n\n"
            "Now write one improved, self-contained solution.\n"
            f"### Format: {self.code_instruction(problem)}\n\n{ANSWER_LINE}"
        )

    def _refinement_text(self, problem: Problem, candidate: str) -> str:
        return (
            f"You are given a {self.problem_kind} and one candidate solution, which may be incorrect, "
            "inefficient or contain bugs. Check it carefully against the problem statement, fix any mistakes, "
            "and write an improved solution.\n\n"
            f"Problem:\n{problem.question.strip()}\n\n"
            f"---- Candidate solution ----\n{candidate.strip()}\n\n"
            "Now write one improved, self-contained solution.\n"
            f"### Format: {self.code_instruction(problem)}\n\n{ANSWER_LINE}"
        )

    # ----- grading -----------------------------------------------------------------------------------------------
    def extract(self, completion: str) -> str | None:
        """The last fenced python (or untagged) code block, or None."""
        return extract_code(completion or "")

    def score_extracted(self, extracted: str | None, problem: Problem) -> float:
        """1.0 when the program passes every test, else 0.0 (stops at the first failure)."""
        if extracted is None:
            return 0.0
        return 1.0 if self.run_tests(extracted, problem, fail_fast=True).all_passed else 0.0

    def score_fraction(self, completion: str, problem: Problem) -> float:
        """Fraction of tests passed by the completion's program, in [0, 1] (0.0 without a code block)."""
        code = self.extract(completion)
        if code is None:
            return 0.0
        return self.run_tests(code, problem).fraction

    def score_many(
        self, completions: Sequence[str], problems: Sequence[Problem], fraction: bool = False
    ) -> list[float]:
        """Scores of many completions, their programs run in parallel over the sandbox's worker pool."""
        if len(completions) != len(problems):
            raise ValueError(f"score_many got {len(completions)} completions but {len(problems)} problems")
        fail_fast = not fraction
        results: dict[int, RunResult | None] = {}
        pending: list[tuple[int, str, TestSuite]] = []
        for i, (completion, problem) in enumerate(zip(completions, problems)):
            code = self.extract(completion)
            if code is None:
                continue
            suite = self.test_suite(problem)
            results[i] = self._cached(code, suite, fail_fast)
            if results[i] is None:
                pending.append((i, code, suite))
        if pending:
            ran = self.sandbox.run_many([(code, suite) for _, code, suite in pending], fail_fast=fail_fast)
            for (i, code, suite), result in zip(pending, ran):
                self._remember(code, suite, fail_fast, result)
                results[i] = result
        scores = [0.0] * len(completions)
        for i, result in results.items():
            scores[i] = result.fraction if fraction else float(result.all_passed)
        return scores

    def run_tests(self, code: str, problem: Problem, fail_fast: bool = False) -> RunResult:
        """Run `code` against the problem's tests in the sandbox (results cached per program and tests)."""
        suite = self.test_suite(problem)
        cached = self._cached(code, suite, fail_fast)
        if cached is not None:
            return cached
        result = self.sandbox.run(code, suite, fail_fast=fail_fast)
        self._remember(code, suite, fail_fast, result)
        return result

    def test_suite(self, problem: Problem) -> TestSuite:
        """The problem's tests as a `TestSuite`; ValueError naming the field when they are malformed."""
        if "tests" not in problem.meta:
            raise ValueError(f"problem {problem.id!r}: field 'tests' is missing; task 'code' needs tests")
        return TestSuite.from_dict(problem.meta["tests"], where=f"problem {problem.id!r}")

    def equivalence_key(self, extracted: str | None, problem: Problem) -> Hashable | None:
        """The program with whitespace runs collapsed (identical programs vote together)."""
        if extracted is None:
            return None
        key = " ".join(extracted.split())
        return key or None

    def validate(self, problem: Problem, where: str) -> None:
        """Require well-formed `tests` {inputs, outputs, fn_name}; a gold `answer` is not needed."""
        if "tests" not in problem.meta:
            raise ValueError(
                f"{where}: field 'tests' is missing; task 'code' needs tests = {{inputs, outputs, fn_name}}"
            )
        TestSuite.from_dict(problem.meta["tests"], where=where)
        starter = problem.meta.get("starter_code")
        if starter is not None and not isinstance(starter, str):
            raise ValueError(f"{where}: field 'starter_code' must be a string, got {type(starter).__name__}")

    # ----- result cache (a binary score and a fraction of the same program share one run) ---------------------
    @staticmethod
    def _key(code: str, suite: TestSuite) -> str:
        digest = hashlib.sha256(code.encode("utf-8", "surrogatepass"))
        digest.update(json.dumps([suite.inputs, suite.outputs, suite.fn_name]).encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

    def _cached(self, code: str, suite: TestSuite, fail_fast: bool) -> RunResult | None:
        key = self._key(code, suite)
        with self._cache_lock:
            full = self._cache.get(key + ":full")
            if full is not None:
                return full
            return self._cache.get(key + ":fast") if fail_fast else None

    def _remember(self, code: str, suite: TestSuite, fail_fast: bool, result: RunResult) -> None:
        key = self._key(code, suite) + (":fast" if fail_fast else ":full")
        with self._cache_lock:
            self._cache[key] = result
            self._cache.move_to_end(key)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)


# ----- LiveCodeBench loader --------------------------------------------------------------------------------------
class _StringOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves no global at all except `builtins.str`: only plain data can come out."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "str"):
            return str
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only strings are allowed")


# Opcodes a pickled str/bytes can contain; anything else (calls, object builds, globals) is refused up front.
_ALLOWED_OPCODES = {
    "PROTO", "FRAME", "STOP", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT",
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "STRING", "BINSTRING", "SHORT_BINSTRING",
}  # fmt: skip


def _unpickle_string(data: bytes, where: str) -> str:
    try:
        for opcode, _, _ in pickletools.genops(data):
            if opcode.name not in _ALLOWED_OPCODES:
                raise ValueError(
                    f"{where}: compressed tests contain pickle opcode {opcode.name}; only strings are accepted"
                )
        value = _StringOnlyUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        if str(exc).startswith(where):
            raise
        raise ValueError(f"{where}: cannot decode the pickled tests ({exc})") from None
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(f"{where}: compressed tests decode to {type(value).__name__}, expected a JSON string")
    return value


def _decode_compressed(text: str, where: str) -> Any:
    try:
        compressed = base64.b64decode(text, validate=False)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(compressed, MAX_PRIVATE_TESTS_BYTES + 1)
    except (binascii.Error, zlib.error) as exc:
        raise ValueError(f"{where}: neither JSON nor base64+zlib data ({exc})") from None
    if len(raw) > MAX_PRIVATE_TESTS_BYTES or inflater.unconsumed_tail:
        raise ValueError(f"{where}: decompressed tests exceed {MAX_PRIVATE_TESTS_BYTES} bytes")
    try:
        return json.loads(_unpickle_string(raw, where))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: decoded tests are not JSON ({exc.msg})") from None


def decode_test_cases(value: Any, where: str = "test cases") -> list[dict]:
    """LiveCodeBench test cases from a list, a JSON string, or base64(zlib(pickle(JSON string)))."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, list):
        cases = value
    elif isinstance(value, (str, bytes)):
        text = value.decode("utf-8") if isinstance(value, bytes) else value
        try:
            cases = json.loads(text)
        except json.JSONDecodeError:
            cases = _decode_compressed(text, where)
    else:
        raise ValueError(f"{where}: expected a list or a string, got {type(value).__name__}")
    if not isinstance(cases, list):
        raise ValueError(f"{where}: expected a list of test cases, got {type(cases).__name__}")
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or "input" not in case or "output" not in case:
            raise ValueError(f"{where}[{i}]: each test case needs 'input' and 'output'")
    return cases


def problem_from_livecodebench(record: dict, include_private: bool = True, where: str | None = None) -> Problem:
    """One LiveCodeBench record as a `Problem` (task "code") with meta["tests"] from public + private cases."""
    if not isinstance(record, dict):
        raise ValueError(f"{where or 'LiveCodeBench record'}: expected an object, got {type(record).__name__}")
    qid = str(record.get("question_id") or record.get("id") or "")
    where = where or f"LiveCodeBench record {qid or '?'}"
    if not qid:
        raise ValueError(f"{where}: field 'question_id' is missing")
    content = record.get("question_content")
    if not isinstance(content, str) or not content.strip():
        raise ValueError(f"{where}: field 'question_content' is missing or empty")
    starter = record.get("starter_code") or ""
    if not isinstance(starter, str):
        raise ValueError(f"{where}: field 'starter_code' must be a string")
    metadata = record.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata) if metadata.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: field 'metadata' is not valid JSON ({exc.msg})") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: field 'metadata' must be a JSON object")
    public = decode_test_cases(record.get("public_test_cases"), f"{where}: field 'public_test_cases'")
    private = (
        decode_test_cases(record.get("private_test_cases"), f"{where}: field 'private_test_cases'")
        if include_private
        else []
    )
    cases = public + private
    if not cases:
        raise ValueError(f"{where}: no test cases in 'public_test_cases' or 'private_test_cases'")
    kinds = {str(case.get("testtype", "stdin")) for case in cases}
    if not kinds <= {"stdin", "functional"} or len(kinds) != 1:
        raise ValueError(f"{where}: field 'testtype' must be all 'stdin' or all 'functional', got {sorted(kinds)}")
    fn_name = None
    if kinds == {"functional"}:
        fn_name = metadata.get("func_name")
        if not isinstance(fn_name, str) or not fn_name.isidentifier():
            raise ValueError(f"{where}: field 'metadata.func_name' is required for functional tests, got {fn_name!r}")
    tests = {"inputs": [c["input"] for c in cases], "outputs": [c["output"] for c in cases], "fn_name": fn_name}
    TestSuite.from_dict(tests, where=where)
    meta = {
        "tests": tests,
        "starter_code": starter,
        "n_public_tests": len(public),
        "source": "livecodebench",
    }
    for key in ("question_title", "platform", "contest_id", "contest_date", "difficulty"):
        if record.get(key) is not None:
            meta[key] = str(record[key])
    return Problem(id=qid, task="code", question=build_question(content, starter, fn_name), answer=None, meta=meta)


def _read_records(path: Path) -> list[dict]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in {".jsonl", ".json", ".parquet"})
        if not files:
            raise ValueError(f"{path}: directory holds no .jsonl, .json or .parquet files")
        return [record for file in files for record in _read_records(file)]
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = data.get("data", data.get("problems"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records (or {{'data': [...]}})")
        return data
    return read_jsonl(path)  # split on "\n" only, errors name the line


# code_generation_lite: each release adds one file; release_vN = files 1..N, vN = file N only.
_RELEASE_FILES = ["test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl"]


def _hub_records(name: str, split: str, release_version: str | None) -> Iterable[dict]:
    import datasets

    if release_version:
        match = re.fullmatch(r"(release_)?v(\d+)", release_version)
        if not match or not 1 <= int(match.group(2)) <= len(_RELEASE_FILES):
            raise ValueError(
                f"release_version must be release_v1..v{len(_RELEASE_FILES)} or v1..v{len(_RELEASE_FILES)}"
            )
        n = int(match.group(2))
        files = _RELEASE_FILES[:n] if match.group(1) else [_RELEASE_FILES[n - 1]]
        urls = [f"hf://datasets/{name}/{file}" for file in files]
        return datasets.load_dataset("json", data_files=urls, split="train")
    return datasets.load_dataset(name, split=split)


def load_livecodebench(
    path_or_name: str | os.PathLike,
    *,
    split: str = "test",
    release_version: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    include_private: bool = True,
    limit: int | None = None,
) -> list[Problem]:
    """LiveCodeBench problems from a local jsonl/json/parquet file or directory, or a hub dataset name.

    `release_version` (hub only, e.g. "release_v6" or "v6") picks code_generation_lite's files; `start_date` and
    `end_date` (ISO dates, inclusive) filter on `contest_date`; `include_private` adds the private tests.
    """
    path = Path(path_or_name)
    if path.exists():
        records: Iterable[dict] = _read_records(path)
        source = str(path)
    else:
        name = str(path_or_name)
        looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1
        if looks_like_path or name.endswith((".jsonl", ".json", ".parquet")):
            raise FileNotFoundError(f"LiveCodeBench file {name} does not exist")
        records = _hub_records(name, split, release_version)
        source = name
    problems = []
    for i, record in enumerate(records):
        date = str(record.get("contest_date") or "")[:10]
        if start_date and date and date < start_date[:10]:
            continue
        if end_date and date and date > end_date[:10]:
            continue
        problems.append(problem_from_livecodebench(dict(record), include_private, where=f"{source}: record {i}"))
        if limit is not None and len(problems) >= limit:
            break
    logger.info("loaded %d LiveCodeBench problems from %s", len(problems), source)
    return problems


__all__ = [
    "CodeTask",
    "build_question",
    "decode_test_cases",
    "extract_code",
    "format_instruction",
    "load_livecodebench",
    "problem_from_livecodebench",
]
