"""rsa.toyworld.evidence and rsa.toyworld.diagnostics on hand-built run directories: the numbers come from the files."""

from __future__ import annotations

import json
import random
from pathlib import Path

from rsa.tasks.toy import solution
from rsa.toyworld.diagnostics import run_diagnostics
from rsa.toyworld.evidence import summarise_runs


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_run(root: Path, accuracy_by_step: list[float], seed: int, copy: bool = True) -> Path:
    """A run over 40 problems (two difficulties), population 4, K=2: members right with the given rates."""
    rng = random.Random(seed)
    problems = []
    for i in range(40):
        numbers = [rng.randint(1, 9) for _ in range(3 if i % 2 else 5)]
        problems.append({"id": f"p{i}", "question": "Add: " + "+".join(map(str, numbers)), "numbers": numbers})
    _write(root / "problems.jsonl", [{"id": p["id"], "question": p["question"]} for p in problems])
    previous = {}
    for step, accuracy in enumerate(accuracy_by_step, 1):
        members, per_problem = [], []
        for p in problems:
            texts, parents_of = [], []
            for _slot in range(4):
                parents = [] if step == 1 else rng.sample(range(4), 2)
                if parents and copy:
                    text = previous[p["id"]][parents[0]]
                else:
                    text = solution(p["numbers"], {} if rng.random() < accuracy else {0: 1})
                texts.append(text)
                parents_of.append(parents)
            previous[p["id"]] = texts
            scores = [float(t == solution(p["numbers"])) for t in texts]
            members += [{"problem_id": p["id"], "slot": s, "text": t, "parents": par}
                        for s, (t, par) in enumerate(zip(texts, parents_of))]  # fmt: skip
            per_problem.append({"problem_id": p["id"], "pass_at_1": sum(scores) / 4, "pass_at_n": max(scores),
                                "majority": float(sum(scores) > 2)})  # fmt: skip
        _write(root / "population" / f"step_{step:03d}.jsonl", members)
        _write(root / "per_problem" / f"step_{step:03d}.jsonl", per_problem)
    return root


def test_diagnostics_read_copies_and_validity(tmp_path):
    copying = run_diagnostics(fake_run(tmp_path / "copy", [0.5, 0.5], seed=1, copy=True))
    assert copying[0]["step"] == 1 and "exact_copy" not in copying[0]
    assert copying[1]["exact_copy"] == 1.0 and 0.3 < copying[1]["valid"] < 0.7
    assert copying[1]["copies_valid_when_possible"] < 1.0  # copies the first parent, valid or not
    fresh = run_diagnostics(fake_run(tmp_path / "fresh", [0.5, 1.0], seed=1, copy=False))
    assert fresh[1]["valid"] == 1.0 and fresh[1]["exact_copy"] < 1.0


def test_report_shows_a_rise_and_a_difference(tmp_path):
    runs = {}
    for s in (1, 2):
        runs[("base", None, s)] = fake_run(tmp_path / f"base-{s}", [0.3, 0.5, 0.7], seed=s, copy=False)
        runs[("standard", 0, s)] = fake_run(tmp_path / f"std-{s}", [0.6, 0.6, 0.6], seed=10 + s, copy=False)
        runs[("onpolicy", 0, s)] = fake_run(tmp_path / f"on-{s}", [0.6, 0.6, 0.6], seed=20 + s, copy=False)
        runs[("cotrained", 0, s)] = fake_run(tmp_path / f"co-{s}", [0.6, 0.6, 0.6], seed=30 + s, copy=False)
    text = summarise_runs(runs, ["extra line"], resamples=300)
    assert "| base | 2 |" in text and "| 3x1 | 5x1 |" in text
    assert "RSA raises a base model's Pass@1 over the steps: HELD" in text
    assert "agg-aware RL (on-policy) beats standard RL under RSA at step 3: NOT SHOWN" in text
    assert "agg-aware RL (co-trained) beats standard RL under RSA at step 3: NOT SHOWN" in text
    assert text.rstrip().endswith("extra line")
