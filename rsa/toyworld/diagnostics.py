"""Toy-world diagnostics: the pre-training gate of the base model, and what RSA populations copy and derive.

- `measure_base` samples the model on fresh in-distribution prompts (the pre-training generator) and compares
  it with its own training targets: plain accuracy vs the targets' accuracy, aggregation accuracy vs a random
  copy of the same candidates, the exact-copy rate and how often it copies a valid candidate when one exists.
  `gate_failures` turns that into pass/fail against stated thresholds (`GateThresholds`).
- `run_diagnostics` reads an `rsa eval` run directory and reports, per RSA step, derivation validity, copy
  fidelity (the output reproduces one of its parents exactly) and the valid-copy rate (among outputs whose
  parents include a valid candidate, the share that copies a valid one).

Nothing here feeds training or evaluation: RL learns from the task reward alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rsa.jsonl import read_jsonl
from rsa.tasks import Problem, get_task
from rsa.toyworld.worlds import world_of_task

GATE_FILE = "toy_gate.json"


class GateError(RuntimeError):
    """The toy base failed its gate; the message names each figure that failed."""


@dataclass(frozen=True)
class GateThresholds:
    """What a competent toy base must reach on in-distribution prompts (see `gate_failures`)."""

    plain_gap: float = 0.12  # plain accuracy >= targets' accuracy - plain_gap
    agg_margin: float = 0.0  # aggregation accuracy > random-copy accuracy + agg_margin
    min_exact_copy: float = 0.0  # the outputs reproduce a candidate exactly at least this often (0: report only)
    # worlds that gate coverage (pick): plain answers are a search the base is not expected to match its targets
    # on, so instead of plain_gap it must solve clearly above zero, cover more with N samples than with one, and
    # aggregate clearly better than a random copy
    min_plain: float = 0.05  # plain accuracy at least this
    coverage_gain: float = 0.15  # plain Pass@N >= plain accuracy + coverage_gain
    coverage_agg_margin: float = 0.1  # aggregation accuracy > random-copy accuracy + this


def _generate(model, tokenizer, conversations, max_new_tokens: int, batch_size: int, seed: int) -> list[str]:
    import torch

    torch.manual_seed(seed)
    out = []
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start : start + batch_size]
        texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def measure_base(
    model_dir: str | Path,
    config,
    problems: int | None = None,
    k: int = 3,
    seed: int = 4321,
    max_new_tokens: int = 64,
    batch_size: int = 48,
    coverage_samples: int = 8,
) -> dict:
    """Sample the toy model on `problems` (default: the world's `gate_problems`) fresh in-distribution plain and
    aggregation prompts (K=`k`).

    `config` is the `rsa.toyworld.PretrainConfig` the model was trained with. Returns accuracies of the model and of
    its training targets, random-copy accuracy, exact-copy and valid-copy rates, overall and per difficulty; for
    worlds that gate coverage also plain Pass@`coverage_samples` (`pass_at_n`), the share of aggregation outputs
    whose answer is none of the candidates' (`resolves`) and of written check verdicts that are right (`verdicts_right`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    world = config.toy_world
    problems = problems or world.gate_problems
    task = get_task(world.task)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    items = world.generate(problems, seed, config.difficulties, prefix="gate")
    plain_prompts, agg_prompts, rows = [], [], []
    for problem in items:
        candidates = [world.plain_target(problem, rng, config) for _ in range(k)]
        target = world.plain_target(problem, rng, config)
        agg_target = world.aggregation_target(problem, candidates, rng, config)
        plain_prompts.append(task.plain_prompt(problem))
        agg_prompts.append(task.aggregation_prompt(problem, candidates))
        rows.append((problem, candidates, target, agg_target))
    plain_out = _generate(model, tokenizer, plain_prompts, max_new_tokens, batch_size, seed)
    agg_out = _generate(model, tokenizer, agg_prompts, max_new_tokens, batch_size, seed + 1)
    coverage = None
    if world.gate_coverage:
        repeated = [p for p in plain_prompts for _ in range(coverage_samples)]
        samples = _generate(model, tokenizer, repeated, max_new_tokens, batch_size, seed + 2)
        coverage = [
            max(task.score(s, problem) for s in samples[i * coverage_samples : (i + 1) * coverage_samples])
            for i, (problem, *_) in enumerate(rows)
        ]
    records = []
    for i, ((problem, candidates, target, agg_target), plain, agg) in enumerate(zip(rows, plain_out, agg_out)):
        record = world.aggregation_record(problem, candidates, agg)
        extra = {"pass_at_n": coverage[i]} if coverage is not None else {}
        if record["checks"] is not None:
            extra["checking"] = float(record["checks"] > 0)
            extra["verdicts_right"] = record["verdicts_right"] / record["checks"] if record["checks"] else None
        records.append(
            {
                "difficulty": world.difficulty_of(problem.question),
                "plain": task.score(plain, problem),
                "plain_target": task.score(target, problem),
                "agg": task.score(agg, problem),
                "agg_target": task.score(agg_target, problem),
                "random_copy": sum(task.score(c, problem) for c in candidates) / len(candidates),
                **{key: float(record[key]) for key in ("valid", "exact_copy", "has_valid_candidate", "copies_valid")},
                "resolves": float(record["resolves"]),
                **extra,
            }
        )
    keys = ["plain", "plain_target", "agg", "agg_target", "random_copy", "exact_copy", "valid"]
    keys += [key for key in ("resolves", "pass_at_n", "checking", "verdicts_right") if key in records[0]]

    def summary(subset: list[dict]) -> dict:
        out = {}
        for key in keys:  # a figure an output does not have (no check line written) is left out of its mean
            values = [r[key] for r in subset if r.get(key) is not None]
            out[key] = sum(values) / len(values) if values else None
        with_valid = [r for r in subset if r["has_valid_candidate"]]
        out["copies_valid_when_possible"] = (
            sum(r["copies_valid"] for r in with_valid) / len(with_valid) if with_valid else None
        )
        out["problems"] = len(subset)
        return out

    result = summary(records)
    result["k"] = k
    result["world"] = world.name
    if coverage is not None:
        result["coverage_samples"] = coverage_samples
    result["by_difficulty"] = {
        d: summary([r for r in records if r["difficulty"] == d]) for d in sorted({r["difficulty"] for r in records})
    }
    return result


def gate_failures(result: dict, thresholds: GateThresholds | None = None) -> list[str]:
    """The gate checks `result` (from `measure_base`) fails, each as a sentence; empty when the base passes."""
    t = thresholds or GateThresholds()
    failures = []
    coverage = "pass_at_n" in result  # a world whose plain answers are a search: coverage, not imitation, is gated
    if not coverage and result["plain"] < result["plain_target"] - t.plain_gap:
        failures.append(
            f"plain accuracy {result['plain']:.3f} is more than {t.plain_gap} below its targets' "
            f"{result['plain_target']:.3f}: pre-training has not converged"
        )
    margin = t.coverage_agg_margin if coverage else t.agg_margin
    if result["agg"] <= result["random_copy"] + margin:
        failures.append(
            f"aggregation accuracy {result['agg']:.3f} does not beat a random copy of the same candidates "
            f"({result['random_copy']:.3f} + margin {margin})"
        )
    if coverage:
        if result["plain"] < t.min_plain:
            failures.append(f"plain accuracy {result['plain']:.3f} is below {t.min_plain}: the base barely solves")
        if result["pass_at_n"] < result["plain"] + t.coverage_gain:
            failures.append(
                f"plain Pass@{result['coverage_samples']} {result['pass_at_n']:.3f} is not {t.coverage_gain} above "
                f"plain accuracy {result['plain']:.3f}: its samples leave aggregation little to combine"
            )
    if result["exact_copy"] < t.min_exact_copy:
        failures.append(f"exact-copy rate {result['exact_copy']:.3f} is below {t.min_exact_copy}")
    return failures


def gate_line(result: dict, failures: Sequence[str]) -> str:
    """One printed line summarising the gate."""
    verdict = "PASS" if not failures else "FAIL (" + "; ".join(failures) + ")"
    return (
        f"base gate (in distribution, {result['problems']} problems, K={result['k']}): "
        f"plain acc {result['plain']:.3f} vs targets {result['plain_target']:.3f}; "
        f"aggregation acc {result['agg']:.3f} vs random copy {result['random_copy']:.3f} "
        f"(targets {result['agg_target']:.3f}); exact copy {result['exact_copy']:.3f}; "
        f"copies a valid candidate when one exists {result['copies_valid_when_possible'] or 0:.3f}"
        + (
            f"; plain Pass@{result['coverage_samples']} {result['pass_at_n']:.3f}; checks candidates "
            f"{result.get('checking') or 0:.3f}, right verdicts {result.get('verdicts_right') or 0:.3f}; answers none "
            f"of its candidates {result['resolves']:.3f}"
            if "pass_at_n" in result
            else ""
        )
        + f" -> {verdict}"
    )


def write_gate(out_dir: str | Path, result: dict, failures: Sequence[str], thresholds: GateThresholds) -> Path:
    """Write the gate result next to the model (`toy_gate.json`, atomically)."""
    from rsa.jsonl import write_json_atomic

    path = Path(out_dir) / GATE_FILE
    write_json_atomic(path, {"result": result, "failures": list(failures), "thresholds": asdict(thresholds)})
    return path


def run_diagnostics(run_dir: str | Path) -> list[dict]:
    """Per RSA step of an `rsa eval` run on toy-world problems: validity, copies, checks and coverage.

    Returns one dict per step: `step`, `members`, `valid` (share of members whose output is fully right: every
    line checks), `distinct_correct` (mean number of distinct correct answers per problem), and for steps >= 2
    `exact_copy` (share reproducing one of their parents), `copies_valid_when_possible` (among members whose
    parents include a valid one, the share reproducing a valid one), `resolves` (share whose answer is none of
    their parents'), and for worlds that write checks `checking` (share of aggregations that check at least one
    candidate) and `verdicts_right` (share of the check lines written whose verdict is right).
    """
    run = Path(run_dir)
    problems = {str(p["id"]): p for p in read_jsonl(run / "problems.jsonl")}
    world = world_of_task(next(iter(problems.values())).get("task", "toy"))
    task = get_task(world.task)
    previous: dict[str, dict[int, str]] = {}
    out = []
    for path in sorted((run / "population").glob("step_*.jsonl")):
        members = read_jsonl(path)
        step = int(path.stem.split("_")[1])
        current: dict[str, dict[int, str]] = {}
        correct: dict[str, set] = {pid: set() for pid in problems}
        valid = copies = with_valid = copies_valid = aggregated = resolves = checks = verdicts = checking = 0
        for m in members:
            pid = str(m["problem_id"])
            row = problems[pid]
            problem = Problem(id=pid, task=world.task, question=row["question"], answer=row.get("answer"))
            text = m.get("text") or ""
            current.setdefault(pid, {})[int(m["slot"])] = text
            valid += world.valid(problem, text)
            if task.score(text, problem) == 1.0:
                correct[pid].add(task.equivalence_key(task.extract(text), problem))
            parents = m.get("parents") or []
            if parents and pid in previous:
                candidates = [previous[pid][i] for i in parents if i in previous[pid]]
                record = world.aggregation_record(problem, candidates, text)
                aggregated += 1
                copies += record["exact_copy"]
                resolves += record["resolves"]
                if record["checks"] is not None:
                    checks += record["checks"]
                    verdicts += record["verdicts_right"]
                    checking += record["checks"] > 0
                if record["has_valid_candidate"]:
                    with_valid += 1
                    copies_valid += record["copies_valid"]
        row = {
            "step": step,
            "members": len(members),
            "valid": valid / max(1, len(members)),
            "distinct_correct": sum(len(v) for v in correct.values()) / max(1, len(correct)),
        }
        if aggregated:
            row["exact_copy"] = copies / aggregated
            row["copies_valid_when_possible"] = copies_valid / with_valid if with_valid else None
            row["resolves"] = resolves / aggregated
            if record["checks"] is not None:
                row["checking"] = checking / aggregated
            if checks:
                row["verdicts_right"] = verdicts / checks
        out.append(row)
        previous = current
    return out
