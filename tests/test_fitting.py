"""Prompt fitting (`rsa.fitting`): equal-share caps, shortening with real tokenizer counts, and the templated
budget that dataset augmentation uses."""

from __future__ import annotations

import pytest

from rsa.fitting import TRUNCATION_MARKER, ContextBudgetError, PromptFitter, equal_share_caps
from rsa.loop import Member
from rsa.prompts import PromptBuilder
from rsa.tasks import Problem, get_task


def math_problems(n: int) -> list[Problem]:
    return [Problem(id=f"m{i}", task="math", question=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(n)]


def test_equal_share_caps_water_fill():
    assert equal_share_caps([10, 100, 100], 90) == [10, 40, 40]
    assert equal_share_caps([10, 20], 100) == [10, 20]
    assert equal_share_caps([50, 50, 50, 50], 40) == [10, 10, 10, 10]


def test_truncation_uses_real_tokenizer_counts(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    class TokenizerBudget:  # count_tokens from the real tokenizer; nothing is generated here
        max_model_len = 600

        def count_tokens(self, text):
            return len(tokenizer.encode(text, add_special_tokens=False))

    builder = PromptBuilder(TokenizerBudget(), max_new_tokens=100)
    task = get_task("math")
    problem = math_problems(1)[0]
    short = Member("short answer \\boxed{2}", 5, "2", 1.0)
    long = Member("compute the sum step by step " * 200 + "\\boxed{3}", 900, "3", 0.0)
    conversation, truncated = builder.aggregation(task, problem, [short, long, long])
    text = conversation[-1]["content"]
    assert truncated == 2
    assert "short answer \\boxed{2}" in text  # the short candidate is kept whole
    assert text.count(TRUNCATION_MARKER.strip()) == 2
    assert TokenizerBudget().count_tokens(text) <= builder.prompt_budget
    assert text.rstrip().endswith("\\boxed{}.")  # the closing instruction survives


def test_templated_budget_fits_exactly_and_checks_the_question(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def count(text):
        return len(tokenizer.encode(text, add_special_tokens=False))

    def templated(conversation):
        return count(tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True))

    overhead = templated([{"role": "user", "content": ""}])
    fitter = PromptFitter(count, 300, measure=templated, overhead=overhead)
    task, problem = get_task("math"), math_problems(1)[0]
    texts = ["first attempt " * 150 + "\\boxed{1}", "second attempt " * 150 + "\\boxed{2}"]
    fitted = fitter.fit(task, problem, texts)
    assert fitted.truncated == 2
    assert fitted.tokens == templated(fitted.conversation) <= 300
    assert fitted.conversation[-1]["content"].count(TRUNCATION_MARKER.strip()) == 2
    short = fitter.fit(task, problem, ["\\boxed{1}", "\\boxed{2}"])
    assert short.truncated == 0 and short.tokens == templated(short.conversation)
    fitter.check_question(task, problem, 2)
    huge = Problem(id="huge", task="math", question="word " * 400, answer="1")
    with pytest.raises(ContextBudgetError, match="problem 'huge': its plain prompt needs"):
        fitter.check_question(task, huge, None)
    with pytest.raises(ContextBudgetError, match="2 candidate\\(s\\) reduced to nothing"):
        fitter.check_question(task, huge, 2, filler="")
