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

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rsa.tasks import get_task
from rsa.tasks.toy import check_derivation, difficulty_of, numbers_of

GATE_FILE = "toy_gate.json"


@dataclass(frozen=True)
class GateThresholds:
    """What a competent toy base must reach on in-distribution prompts (see `gate_failures`)."""

    plain_gap: float = 0.12  # plain accuracy >= targets' accuracy - plain_gap
    agg_margin: float = 0.0  # aggregation accuracy > random-copy accuracy + agg_margin
    min_exact_copy: float = 0.0  # the outputs reproduce a candidate exactly at least this often (0: report only)


def aggregation_record(numbers: Sequence[int], candidates: Sequence[str], output: str) -> dict:
    """How one aggregation output relates to its candidates (validity, exact copy, copy of a valid one)."""
    valid = [check_derivation(numbers, c).valid for c in candidates]
    text = (output or "").strip()
    copied = [i for i, c in enumerate(candidates) if c.strip() == text]
    return {
        "valid": check_derivation(numbers, text).valid,
        "exact_copy": bool(copied),
        "has_valid_candidate": any(valid),
        "copies_valid": any(valid[i] for i in copied),
        "candidates_correct": sum(valid) / len(valid) if valid else 0.0,
    }


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
    problems: int = 96,
    k: int = 3,
    seed: int = 4321,
    max_new_tokens: int = 64,
    batch_size: int = 48,
) -> dict:
    """Sample the toy model on `problems` fresh in-distribution plain and aggregation prompts (K=`k`).

    `config` is the `rsa.toyworld.PretrainConfig` the model was trained with. Returns accuracies of the model and of
    its training targets, random-copy accuracy, exact-copy and valid-copy rates, overall and per difficulty.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rsa.tasks.toy import generate_problems
    from rsa.toyworld.pretrain import aggregation_target

    task = get_task("toy")
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    items = generate_problems(problems, seed, config.spec, prefix="gate")
    plain_prompts, agg_prompts, rows = [], [], []
    for problem in items:
        numbers = numbers_of(problem)
        candidates = [config.solve(numbers, rng) for _ in range(k)]
        target = config.solve(numbers, rng)
        agg_target, _ = aggregation_target(numbers, candidates, rng, config.copy_valid_prob)
        plain_prompts.append(task.plain_prompt(problem))
        agg_prompts.append(task.aggregation_prompt(problem, candidates))
        rows.append((problem, numbers, candidates, target, agg_target))
    plain_out = _generate(model, tokenizer, plain_prompts, max_new_tokens, batch_size, seed)
    agg_out = _generate(model, tokenizer, agg_prompts, max_new_tokens, batch_size, seed + 1)
    records = []
    for (problem, numbers, candidates, target, agg_target), plain, agg in zip(rows, plain_out, agg_out):
        record = aggregation_record(numbers, candidates, agg)
        records.append(
            {
                "difficulty": difficulty_of(problem.question),
                "plain": task.score(plain, problem),
                "plain_target": task.score(target, problem),
                "agg": task.score(agg, problem),
                "agg_target": task.score(agg_target, problem),
                "random_copy": sum(task.score(c, problem) for c in candidates) / len(candidates),
                **{key: float(value) for key, value in record.items() if key != "candidates_correct"},
            }
        )
    keys = ["plain", "plain_target", "agg", "agg_target", "random_copy", "exact_copy", "valid"]

    def summary(subset: list[dict]) -> dict:
        out = {key: sum(r[key] for r in subset) / len(subset) for key in keys}
        with_valid = [r for r in subset if r["has_valid_candidate"]]
        out["copies_valid_when_possible"] = (
            sum(r["copies_valid"] for r in with_valid) / len(with_valid) if with_valid else None
        )
        out["problems"] = len(subset)
        return out

    result = summary(records)
    result["k"] = k
    result["by_difficulty"] = {
        d: summary([r for r in records if r["difficulty"] == d]) for d in sorted({r["difficulty"] for r in records})
    }
    return result


def gate_failures(result: dict, thresholds: GateThresholds | None = None) -> list[str]:
    """The gate checks `result` (from `measure_base`) fails, each as a sentence; empty when the base passes."""
    t = thresholds or GateThresholds()
    failures = []
    if result["plain"] < result["plain_target"] - t.plain_gap:
        failures.append(
            f"plain accuracy {result['plain']:.3f} is more than {t.plain_gap} below its targets' "
            f"{result['plain_target']:.3f}: pre-training has not converged"
        )
    if result["agg"] <= result["random_copy"] + t.agg_margin:
        failures.append(
            f"aggregation accuracy {result['agg']:.3f} does not beat a random copy of the same candidates "
            f"({result['random_copy']:.3f} + margin {t.agg_margin})"
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
        f"copies a valid candidate when one exists {result['copies_valid_when_possible'] or 0:.3f} -> {verdict}"
    )


def write_gate(out_dir: str | Path, result: dict, failures: Sequence[str], thresholds: GateThresholds) -> Path:
    """Write the gate result next to the model (`toy_gate.json`, atomically)."""
    from rsa.runs import write_json_atomic

    path = Path(out_dir) / GATE_FILE
    write_json_atomic(path, {"result": result, "failures": list(failures), "thresholds": asdict(thresholds)})
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_diagnostics(run_dir: str | Path) -> list[dict]:
    """Per RSA step of an `rsa eval` run on toy problems: validity, copy fidelity and valid-copy rate.

    Returns one dict per step: `step`, `valid` (share of members whose lines all check), and for steps >= 2
    `exact_copy` (share reproducing one of their parents exactly) and `copies_valid_when_possible`.
    """
    run = Path(run_dir)
    problems = {str(p["id"]): p for p in _read_jsonl(run / "problems.jsonl")}
    previous: dict[str, dict[int, str]] = {}
    out = []
    for path in sorted((run / "population").glob("step_*.jsonl")):
        members = _read_jsonl(path)
        step = int(path.stem.split("_")[1])
        current: dict[str, dict[int, str]] = {}
        valid = copies = with_valid = copies_valid = aggregated = 0
        for m in members:
            pid = str(m["problem_id"])
            numbers = numbers_of_question(problems[pid]["question"])
            text = m.get("text") or ""
            current.setdefault(pid, {})[int(m["slot"])] = text
            valid += check_derivation(numbers, text).valid
            parents = m.get("parents") or []
            if parents and pid in previous:
                candidates = [previous[pid][i] for i in parents if i in previous[pid]]
                record = aggregation_record(numbers, candidates, text)
                aggregated += 1
                copies += record["exact_copy"]
                if record["has_valid_candidate"]:
                    with_valid += 1
                    copies_valid += record["copies_valid"]
        row = {"step": step, "members": len(members), "valid": valid / max(1, len(members))}
        if aggregated:
            row["exact_copy"] = copies / aggregated
            row["copies_valid_when_possible"] = copies_valid / with_valid if with_valid else None
        out.append(row)
        previous = current
    return out


def numbers_of_question(question: str) -> list[int]:
    """The addends of a toy question text."""
    return [int(x) for x in question.split(":", 1)[1].strip().split("+")]
