"""The offline tiny model: Auto classes load it, shapes follow the spec, the chat template is ChatML."""

from __future__ import annotations

import pytest

from rsa.cli import main
from rsa.tiny import TinyModelSpec, build_tiny_model


def test_tiny_model_loads_with_auto_classes(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert config.model_type == "qwen3"
    assert config.head_dim >= 32
    assert config.vocab_size == len(tok)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi \\boxed{3}"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi \\boxed{3}<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok("any text: é 中 \\frac{1}{2}")["input_ids"]) == "any text: é 中 \\frac{1}{2}"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    ids = tok(text, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=True)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_head_dim_below_32_is_refused(tmp_path):
    with pytest.raises(ValueError, match="head_dim"):
        build_tiny_model(tmp_path, TinyModelSpec(head_dim=16))


def test_cli_builds_a_model(tmp_path, capsys):
    import json

    from transformers import AutoTokenizer

    assert main(["tiny-model", "--out", str(tmp_path / "m"), "--vocab-size", "600"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    # --vocab-size took effect: the tokenizer has at most 600 entries and the embedding matches it exactly
    assert 256 < len(tokenizer) <= 600 and config["vocab_size"] == len(tokenizer)
    assert main(["tiny-model", "--out", str(tmp_path / "big"), "--vocab-size", "1000"]) == 0
    assert json.loads((tmp_path / "big" / "config.json").read_text())["vocab_size"] > config["vocab_size"]
